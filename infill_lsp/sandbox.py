"""Run untrusted Python (model output under evaluation) in a subprocess with limits.

Never in the evaluator's own process: a fresh interpreter in isolated mode, in a temporary
directory that is removed afterwards, with no stdin, a minimal environment, CPU/memory/file
size/process limits, bounded output, and a wall-clock timeout that kills its whole process group.
Inside, sandbox_guard.py's audit hook refuses writes outside that directory, new processes,
sockets and ctypes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile

import msgspec

OUTPUT_LIMIT = 64 * 1024
GUARD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_guard.py")  # audit hook: no writes
# outside the working directory, no processes, no sockets, no ctypes


class SandboxResult(msgspec.Struct, frozen=True):
    passed: bool
    timed_out: bool
    returncode: int | None
    stderr_tail: str


def _limits(timeout: float):
    def apply() -> None:
        import resource

        cpu = max(1, int(timeout) + 1)
        for limit, value in ((resource.RLIMIT_CPU, cpu), (resource.RLIMIT_AS, 1 << 30),
                             (resource.RLIMIT_FSIZE, 16 << 20), (resource.RLIMIT_CORE, 0),
                             (resource.RLIMIT_NPROC, 64)):
            try:
                resource.setrlimit(limit, (value, value))
            except (ValueError, OSError):
                pass

    return apply


def run_python(source: str, timeout: float = 3.0) -> SandboxResult:
    with tempfile.TemporaryDirectory(prefix="infill-sandbox-") as workdir:
        path = os.path.join(workdir, "program.py")
        with open(path, "w", encoding="utf-8", errors="surrogatepass") as fh:
            fh.write(source)
        env = {"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "HOME": workdir}
        # stderr goes to a file, which RLIMIT_FSIZE bounds (a pipe would buffer whatever it prints)
        with open(os.path.join(workdir, "stderr.txt"), "w+b") as errors:
            proc = subprocess.Popen(
                [sys.executable, "-I", GUARD, path, workdir], cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=errors, start_new_session=True,
                preexec_fn=_limits(timeout) if os.name == "posix" else None,
            )
            timed_out = False
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                try:  # the program and anything it started in its group
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                proc.wait()
            errors.seek(max(0, os.fstat(errors.fileno()).st_size - OUTPUT_LIMIT))
            stderr = errors.read()
        tail = stderr.decode("utf-8", errors="replace")[-2000:]
        return SandboxResult(passed=not timed_out and proc.returncode == 0, timed_out=timed_out,
                             returncode=proc.returncode, stderr_tail=tail)
