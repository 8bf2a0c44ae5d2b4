"""The VS Code extension in a real VS Code, as a user runs it: packaged with the README's command,
installed with `--install-extension`, the server found through `infill.serverPath`; then a
browser types into a Python file and uses the keys the README documents. (code-server 4.139.1 is
VS Code 1.139 served to a browser; see vscode_real.py.)

Screenshots of the ghost text and of the accepted suggestion are saved to $INFILL_SCREENSHOTS
(docs/images/ holds the README's copies) or the test's temporary directory.
"""

from __future__ import annotations

import json
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from vscode_real import CHROMIUM, CHROMIUM_ARGS, ROOT, CodeServer, missing, package_extension

pytestmark = pytest.mark.skipif(missing() is not None, reason=f"real-VS-Code test: {missing()}")

TINY = ROOT / "fixtures" / "tiny-diffusiongemma"
SERVER = ROOT / ".venv" / "bin" / "infill-lsp"

# A Python file; the test types on its line 11, inside count_words.
MAIN_PY = '''import os


def read_lines(path):
    with open(path) as handle:
        return handle.read().splitlines()


def count_words(path):
    lines = read_lines(path)
    
'''

CHECKSUM_PY = "def verify_checksum(payload, expected):\n    return payload == expected\n"

# Settings of the user profile: the server path as the README says; a seed so the suggestions are
# the same on every run; no start page, and the chat panel hidden (it takes the focus at start).
BASE_SETTINGS = {
    "infill.serverPath": str(SERVER),
    "workbench.startupEditor": "none",
    "chat.disableAIFeatures": True,
    "workbench.secondarySideBar.defaultVisibility": "hidden",
}
STATUS_ITEM = "#infill-lsp\\.infill-lsp"  # the extension's status bar item: `<publisher>.<name>`
STATE_ICONS = {"idle": "sparkle", "busy": "sync", "loading": "loading", "error": "error", "off": "circle-slash"}


@pytest.fixture(scope="module")
def vsix() -> Path:
    return package_extension()


class Workbench:
    """The browser page of a VS Code window, through what a user sees and types."""

    def __init__(self, page, code_server: CodeServer):
        self.page = page
        self.code_server = code_server

    def status(self) -> str | None:
        """The status bar item's state, from its icon."""
        for state, icon in STATE_ICONS.items():
            if self.page.query_selector(f"{STATUS_ITEM} .codicon-{icon}, {STATUS_ITEM} .codicon-{icon}\\~spin"):
                return state
        return None

    def wait_status(self, state: str, timeout: float = 120) -> None:
        wait_for(lambda: self.status() == state, timeout, f"status bar {state!r} (it is {self.status()!r})")

    def open(self, name: str) -> None:
        """Quick Open (Ctrl+P), the file's name, Enter."""
        self.page.wait_for_selector(".explorer-folders-view .monaco-list-row", timeout=60_000)
        self.page.keyboard.press("Control+P")
        self.page.wait_for_selector(".quick-input-widget input", timeout=20_000)
        self.page.keyboard.type(name)
        self.page.wait_for_selector(".quick-input-list .monaco-list-row", timeout=20_000)
        self.page.keyboard.press("Enter")
        self.page.wait_for_selector(".monaco-editor.focused", timeout=20_000)

    def go_to(self, line: int, column: int) -> None:
        """Go to Line/Column (Ctrl+G)."""
        self.page.keyboard.press("Control+G")
        self.page.wait_for_selector(".quick-input-widget input", timeout=20_000)
        self.page.keyboard.type(f"{line}:{column}")
        self.page.keyboard.press("Enter")
        self.page.wait_for_selector(".monaco-editor.focused", timeout=20_000)

    def type(self, text: str) -> None:
        self.page.keyboard.type(text, delay=60)

    def press(self, key: str) -> None:
        self.page.keyboard.press(key)

    def ghost_text(self) -> str:
        """The ghost text on screen: the inline part at the cursor, then the lines below it."""
        return self.page.evaluate("""() => {
            const editor = document.querySelector('.monaco-editor.focused') || document.querySelector('.monaco-editor');
            if (!editor) return '';
            // the middle that continues the completion menu's selected item is a `-preview` part
            const parts = '.view-lines .ghost-text-decoration, .view-lines .ghost-text-decoration-preview';
            const inline = [...editor.querySelectorAll(parts)].map(e => e.textContent).join('');
            const below = [...editor.querySelectorAll('.ghost-text .view-line')].map(e => e.textContent);
            return [inline, ...below].join('\\n').replace(/\\u00a0/g, ' ');
        }""")

    def selected_completion(self) -> str:
        """The aria label (`return, Text`) of the completion menu's selected item; "" when it is closed."""
        return self.page.evaluate("""() => [...document.querySelectorAll(
            '.suggest-widget.visible .monaco-list-row.focused')].map(e => e.getAttribute('aria-label')).join('')""")

    def wait_ghost_text(self, timeout: float = 90, other_than: str | None = None) -> str:
        def shown():
            text = self.ghost_text()
            return text if text.strip() and text != other_than else None
        return wait_for(shown, timeout, "ghost text" + (f" other than {other_than!r}" if other_than else ""))

    def buffer(self) -> str:
        """The editor's lines on screen (the end of these short files), ghost text left out. The
        document's own text that a suggestion re-renders after itself (the rest of the line, class
        `ghost-text-hidden`: transparent, zero-sized) stays: it is in the file."""
        return self.page.evaluate("""() => {
            const editor = document.querySelector('.monaco-editor.focused') || document.querySelector('.monaco-editor');
            const lines = [...editor.querySelectorAll('.view-lines .view-line')]
                .sort((a, b) => parseFloat(a.style.top) - parseFloat(b.style.top));
            return lines.map((line) => {
                const copy = line.cloneNode(true);
                copy.querySelectorAll('[class*="ghost-text"]:not(.ghost-text-hidden)').forEach((ghost) => ghost.remove());
                return copy.textContent.replace(/\u00a0/g, ' ');
            }).join('\\n');
        }""")

    def wait_lines(self, expected: str, what: str, timeout: float = 10) -> None:
        """Until whole lines on screen (ghost text left out) read `expected`. After Tab this is how a
        test knows the suggestion went in: the ghost text going away is no sign, as the next
        suggestion (for the text just accepted) can be on screen within 100 ms."""
        try:
            wait_for(lambda: f"\n{expected}\n" in f"\n{self.buffer()}\n", timeout, what)
        except AssertionError as timeout_error:
            raise AssertionError(f"{timeout_error}: on screen {self.buffer()!r}") from None

    def save(self) -> str:
        """Ctrl+S; the file once what is on disk ends with what the editor shows."""
        path = self.code_server.workspace / "main.py"
        self.press("Control+S")
        try:
            return wait_for(lambda: (text := path.read_text()).endswith(self.buffer()) and text, 20, "the file saved")
        except AssertionError as timeout:
            raise AssertionError(f"{timeout}: on disk {path.read_text()!r}, on screen {self.buffer()!r}") from None

    def run_command(self, title: str) -> None:
        """The command palette (F1), a command's title, Enter."""
        self.press("F1")
        self.page.wait_for_selector(".quick-input-widget input", timeout=20_000)
        self.page.keyboard.type(title)
        self.page.wait_for_selector(".quick-input-list .monaco-list-row", timeout=20_000)
        self.press("Enter")

    def server_stats(self) -> dict:
        """`infill: Show server statistics`, read back from the extension's log."""
        before = len(self.stats_lines())
        self.run_command("infill: Show server statistics")
        wait_for(lambda: len(self.stats_lines()) > before, 30, "the statistics in the extension's log")
        return json.loads(self.stats_lines()[-1])

    def stats_lines(self) -> list[str]:
        logs = self.code_server.user_data.glob("logs/*/exthost*/infill-lsp.infill-lsp/*.log")
        return [match for log in logs for match in re.findall(r"\] stats: (\{.*\})$", log.read_text(), re.M)]

    def screenshot(self, name: str) -> Path:
        folder = Path(os.environ.get("INFILL_SCREENSHOTS") or self.code_server.home)
        folder.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(folder / name))
        return folder / name


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


@contextmanager
def vscode(tmp_path: Path, vsix: Path, settings: dict, ready: bool = True, files: dict[str, str] | None = None):
    """A fresh VS Code profile with the extension installed and main.py open (and the server ready);
    `files`: more files in the workspace folder, not opened."""
    from playwright.sync_api import sync_playwright

    code_server = CodeServer(tmp_path, {**BASE_SETTINGS, **settings})
    (code_server.workspace / "main.py").write_text(MAIN_PY)
    for name, text in (files or {}).items():
        (code_server.workspace / name).write_text(text)
    assert "successfully installed" in code_server.install_extension(vsix)
    url = code_server.start()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1100, "height": 560})
                page.goto(url)
                page.wait_for_selector(".monaco-workbench", timeout=60_000)
                bench = Workbench(page, code_server)
                bench.open("main.py")
                # Typing before the extension is up would reach no server: wait for it, as a user
                # waits for the status bar to say it is ready.
                if ready:
                    bench.wait_status("idle")
                yield bench
            finally:
                browser.close()
    finally:
        code_server.stop()


def test_default_model_ghost_text_accepted_with_tab(tmp_path, vsix):
    """The shipped default model (no `infill.model`): ghost text while typing, Tab puts exactly it
    into the file, and the server counts one shown, one accepted."""
    with vscode(tmp_path, vsix, {"infill.seed": 1}) as bench:
        bench.go_to(11, 5)
        bench.type("return len(")  # VS Code closes the bracket: the cursor is in "len(|)"
        ghost = bench.wait_ghost_text()
        assert "\n" not in ghost and ghost.strip()
        bench.screenshot("vscode-ghost-text.png")
        bench.press("Tab")
        bench.wait_lines(f"    return len({ghost})", "the suggestion in the file after Tab")
        saved = bench.save()
        assert saved == MAIN_PY.replace("    \n", f"    return len({ghost})\n")
        bench.screenshot("vscode-accepted.png")
        bench.wait_status("idle")
        stats = bench.server_stats()
        assert stats["accepted"] == 1 and stats["shown"] >= 1
        assert stats["acceptedChars"] == len(ghost.encode("utf-16-le")) // 2


def test_a_name_another_workspace_file_defines_is_finished_as_it_is_typed(tmp_path, vsix):
    """The default model and no setting: checksum.py (never opened) defines `verify_checksum`; typing
    `verify_ch` in main.py shows the rest of that name first (names.py, from the server's definition
    index of the workspace) and Tab writes it."""
    with vscode(tmp_path, vsix, {"infill.seed": 1}, files={"checksum.py": CHECKSUM_PY}) as bench:
        bench.go_to(11, 5)
        bench.type("ok = verify_c")
        wait_for(lambda: bench.server_stats().get("repoContext", {}).get("definitions", {}).get("files", 0) >= 2,
                 60, "the workspace's definitions indexed")
        bench.type("h")
        ghost = bench.wait_ghost_text()
        assert ghost.startswith("ecksum"), ghost
        bench.press("Tab")
        bench.wait_lines(f"    ok = verify_ch{ghost}", "the name in the file after Tab")
        assert bench.save().splitlines()[10].startswith("    ok = verify_checksum")
        assert bench.server_stats()["repoContext"]["use"] == "prompt"  # the default model was trained with context


def test_cycle_accept_word_dismiss_and_status(tmp_path, vsix):
    """The README's keys on several candidates (the tiny model's noise, shown with `showInvalid`):
    Alt+] / Alt+[ cycle, Ctrl+Right accepts a word and leaves the rest on screen, Tab the rest,
    Escape dismisses; what the server counts as accepted is what went into the file."""
    settings = {"infill.model": str(TINY), "infill.showInvalid": True, "infill.seed": 1}
    with vscode(tmp_path, vsix, settings) as bench:
        bench.go_to(11, 5)
        bench.type("return len(")
        first = bench.wait_ghost_text()
        bench.press("Alt+BracketRight")
        second = bench.wait_ghost_text(10, other_than=first)
        bench.press("Alt+BracketLeft")
        assert bench.wait_ghost_text(10, other_than=second) == first
        assert len(first) > 1, f"precondition: a suggestion of more than one character, not {first!r}"

        # Accept word: part of the suggestion goes in, the rest stays on screen.
        bench.press("Control+ArrowRight")
        rest = wait_for(lambda: (g := bench.ghost_text()) != first and g, 10, "the rest of the suggestion")
        line = bench.save().splitlines()[10]
        assert line.startswith("    return len(") and line.endswith(")")
        inserted = line[len("    return len("):-1]
        assert inserted and inserted + rest == first, (inserted, rest, first)
        bench.screenshot("vscode-accept-word.png")

        # Tab: the rest goes in; the server counts one accepted suggestion, all of it.
        bench.press("Tab")
        bench.wait_lines(f"    return len({first})", "the rest in the file after Tab")
        saved = bench.save()
        assert saved.splitlines()[10] == f"    return len({first})"
        stats = bench.server_stats()
        assert stats["accepted"] == 1
        assert stats["acceptedChars"] == len(first.encode("utf-16-le")) // 2
        # The extension sees a partial acceptance in a multi-character insertion only (one
        # character is typing).
        assert stats["partiallyAccepted"] == (1 if len(inserted) > 1 else 0)

        # Escape: the suggestion goes, the file stays as it was.
        bench.go_to(11, 5)
        bench.type("x = ")
        bench.wait_ghost_text()
        bench.press("Escape")
        wait_for(lambda: not bench.ghost_text(), 10, "the ghost text gone after Escape")
        assert bench.save() == saved.replace("    return len(", "    x = return len(")
        bench.wait_status("idle")

        # Toggling suggestions off takes the one on screen away too: Tab then indents, as without us.
        bench.type("y")
        bench.wait_ghost_text()
        bench.run_command("infill: Toggle inline suggestions")
        bench.wait_status("off", 20)
        wait_for(lambda: not bench.ghost_text(), 10, "the ghost text gone when turned off")
        bench.press("Tab")
        assert bench.save().splitlines()[10].startswith("    x = y") and "x = y" + first not in bench.buffer()
        bench.run_command("infill: Toggle inline suggestions")
        bench.wait_status("idle", 20)


def test_a_server_that_cannot_start_turns_the_status_bar_to_an_error_with_the_reason(tmp_path, vsix):
    """A server that exits at once (here: one that says why on stderr) is never a permanent
    "loading": the status bar turns to an error whose tooltip carries the server's last error line."""
    broken = tmp_path / "broken-infill-lsp"
    broken.write_text("#!/bin/sh\necho 'infill-lsp: error: no model could be loaded (test)' >&2\nexit 2\n")
    broken.chmod(0o755)
    with vscode(tmp_path / "vscode", vsix, {"infill.serverPath": str(broken)}, ready=False) as bench:
        bench.wait_status("error", timeout=60)
        label = bench.page.get_attribute(STATUS_ITEM, "aria-label") or ""
        reason = label.replace("\\", "")  # the tooltip is Markdown: its punctuation comes escaped
        assert "infill-lsp: error: no model could be loaded (test)" in reason and "error: infill-lsp" not in reason, label


def test_with_the_completion_menu_open_the_ghost_text_continues_its_selected_item(tmp_path, vsix):
    """VS Code shows an inline suggestion beside its completion menu only when it extends the menu's
    selected item (LSP 3.18 `selectedCompletionInfo`): with `return` selected after `r`, the ghost text
    is the rest of `return`, then the model's middle for the document as that item leaves it. Tab takes
    the menu's item and the middle stays on screen; Tab again writes it. (The tiny model's noise: `r`
    is too short a word to finish with a name, so only the server's handling of the selection puts
    `eturn` first.)"""
    settings = {"infill.model": str(TINY), "infill.showInvalid": True, "infill.seed": 1}
    with vscode(tmp_path, vsix, settings) as bench:
        bench.go_to(11, 5)
        bench.type("n = r")
        bench.press("Control+Space")  # the completion menu: the document's words that start with r
        for _ in range(6):
            label = wait_for(bench.selected_completion, 20, "the completion menu")
            if label.startswith("return,"):
                break
            bench.press("ArrowDown")
        assert label.startswith("return,"), label
        ghost = wait_for(lambda: (g := bench.ghost_text()).startswith("eturn") and len(g) > 5 and g, 60,
                         "ghost text that continues `return`")
        middle = ghost[len("eturn"):]
        bench.screenshot("vscode-completion-menu.png")
        bench.press("Tab")  # the menu's item
        wait_for(lambda: bench.buffer().splitlines()[10] == "    n = return", 10, "the menu's item in the file")
        assert wait_for(bench.ghost_text, 30, "the ghost text after the menu's item") == middle
        bench.press("Tab")
        bench.wait_lines(f"    n = return{middle}", "the middle in the file after Tab")
        assert bench.save() == MAIN_PY.replace("    \n", f"    n = return{middle}\n")
