"""Runs first in the sandbox's child interpreter (`python -I sandbox_guard.py PROGRAM WORKDIR`),
then runs the program under an audit hook (PEP 578) that refuses what a completion under
evaluation has no business doing:

- writing, creating, renaming or removing anything outside its temporary working directory;
- starting processes (fork, exec, spawn, subprocess, os.system): a fork bomb ends at the first fork;
- opening sockets (no network) and loading native code through ctypes.

Audit hooks cannot be removed from Python code, and the ways around one from Python (ctypes,
replacing the hook's code) are refused too. This guards against model output that does damage
by accident; it is not a boundary against a determined attacker (that needs a container or a
separate user). The parent adds CPU, memory, file size and process limits, a wall-clock timeout
and a process-group kill (sandbox.py). No imports from infill_lsp: this file runs alone.
"""

import os
import runpy
import sys

PROGRAM, WORKDIR = sys.argv[1], os.path.realpath(sys.argv[2])

REFUSED_IMPORTS = frozenset({"_posixsubprocess", "_ctypes", "ctypes", "_socket", "socket", "_ssl", "ssl",
                             "_multiprocessing", "multiprocessing", "_posixshmem", "mmap"})
REFUSED_EVENTS = frozenset({"os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec", "os.system",
                            "os.kill", "os.killpg", "subprocess.Popen", "pty.spawn", "os.startfile",
                            "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "ctypes.call_function",
                            "socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo",
                            "socket.sendto", "sys.setprofile", "sys.settrace", "signal.pthread_kill"})
# events whose first arguments are paths the program changes
PATH_EVENTS = {"os.remove": 1, "os.rmdir": 1, "os.mkdir": 1, "os.chmod": 1, "os.chown": 1, "os.truncate": 1,
               "os.utime": 1, "os.chflags": 1, "os.lchflags": 1, "os.lchown": 1, "os.setxattr": 1,
               "os.removexattr": 1, "shutil.rmtree": 1, "os.chdir": 1, "os.rename": 2, "os.link": 2,
               "os.symlink": 2, "shutil.copyfile": 2, "shutil.copytree": 2, "shutil.move": 2}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _inside(path) -> bool:
    if isinstance(path, int):  # an open file descriptor: checked when it was opened
        return True
    try:
        path = os.fsdecode(path)
    except TypeError:
        return False
    real = os.path.realpath(path)
    return real == WORKDIR or real.startswith(WORKDIR + os.sep)


def _hook(event: str, args: tuple) -> None:
    if event == "open":
        path, mode, flags = args
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags > 0 and flags & WRITE_FLAGS)
        if writes and not _inside(path):
            raise PermissionError(f"sandbox: no writing outside the working directory ({path!r})")
    elif event == "import":
        if args[0] in REFUSED_IMPORTS:
            raise ImportError(f"sandbox: {args[0]} is not available")
    elif event in REFUSED_EVENTS:
        raise PermissionError(f"sandbox: {event} is not allowed")
    elif event in PATH_EVENTS:
        if not all(_inside(p) for p in args[:PATH_EVENTS[event]]):
            raise PermissionError(f"sandbox: {event} outside the working directory")
    elif event == "object.__setattr__" and args[1] in ("__code__", "__globals__", "__defaults__"):
        raise PermissionError("sandbox: the guard cannot be changed")


sys.argv = [PROGRAM]
sys.addaudithook(_hook)
runpy.run_path(PROGRAM, run_name="__main__")
