"""The server as each editor starts it, initialized with what that editor really sends.

pytest-lsp's test client (it checks the server's requests and notifications against the
client's declared capabilities) with these `initialize` params:
- neovim-0.11: captured from headless Neovim 0.11 with the infill plugin
  (tests/fixtures/initialize/capture.py): positionEncodings utf-8, utf-16, utf-32, no
  inlineCompletion capability (the plugin asks anyway), workDoneProgress, and
  initializationOptions `[]` (the plugin's empty settings table, as vim.json encodes it);
- vscode-languageclient-10: captured from the VS Code extension's vscode-languageclient 10.1.2:
  positionEncodings utf-16 only, textDocument.inlineCompletion (dynamic registration), the
  extension's settings as initializationOptions; started with `--stdio` appended, as it does;
- visual-studio-code-1.65: pytest-lsp's own VS Code profile, a client older than LSP inline
  completion: no positionEncodings (so UTF-16), no inlineCompletion capability.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

import pytest
from lsprotocol import types
from pygls.protocol import default_converter

pytest_lsp = pytest.importorskip("pytest_lsp", reason="pytest-lsp is in the test extra (scripts/setup)")

from conftest import ROOT, TINY_MODEL  # noqa: E402
from lsp_harness import _plain  # noqa: E402

CAPTURED = Path(__file__).resolve().parent / "fixtures" / "initialize"
SERVER = shutil.which("infill-lsp", path=str(Path(sys.executable).parent))
COMMAND = [SERVER] if SERVER else [sys.executable, "-m", "infill_lsp"]

pytestmark = pytest.mark.filterwarnings("error::pytest_lsp.LspSpecificationWarning")


def captured(name: str) -> types.InitializeParams:
    return default_converter().structure(json.loads((CAPTURED / name).read_text()), types.InitializeParams)


def pytest_lsp_profile(spec: str) -> types.InitializeParams:
    capabilities = pytest_lsp.client_capabilities(spec)
    return types.InitializeParams(capabilities=capabilities,
                                  client_info=types.ClientInfo(name=spec, version="pytest-lsp"))


# name -> (initialize params, the arguments the editor adds after `serve --model ...`, encoding expected)
PROFILES = {
    "neovim-0.11": (lambda: captured("neovim-0.11.json"), [], types.PositionEncodingKind.Utf8),
    "vscode-languageclient-10": (lambda: captured("vscode-languageclient-10.json"), ["--stdio"],
                                 types.PositionEncodingKind.Utf16),
    "visual-studio-code-1.65": (lambda: pytest_lsp_profile("visual-studio-code@v1.65"), ["--stdio"],
                                types.PositionEncodingKind.Utf16),
}


def column(text: str, encoding: str) -> int:
    """The LSP column of the end of `text` (a line's start up to a point) in `encoding`."""
    if encoding == types.PositionEncodingKind.Utf8:
        return len(text.encode("utf-8"))
    if encoding == types.PositionEncodingKind.Utf16:
        return len(text.encode("utf-16-le")) // 2
    return len(text)


def index(line: str, character: int, encoding: str) -> int:
    """The code point index of LSP column `character` on `line`."""
    for i in range(len(line) + 1):
        if column(line[:i], encoding) == character:
            return i
    raise AssertionError(f"column {character} is inside a character of {line!r} ({encoding})")


class Editor:
    """pytest-lsp's client plus what the editors keep: infill/status notifications."""

    def __init__(self, client, params: types.InitializeParams) -> None:
        self.client, self.params, self.statuses = client, params, []
        self.result: types.InitializeResult | None = None


@pytest.fixture(params=list(PROFILES))
async def editor(request, tmp_path):
    make_params, extra, _ = PROFILES[request.param]
    params = make_params()
    if params.root_uri:  # the captured workspace folder -> this test's
        params.root_uri, params.root_path = tmp_path.as_uri(), str(tmp_path)
        params.workspace_folders = [types.WorkspaceFolder(uri=tmp_path.as_uri(), name=tmp_path.name)]
    client = pytest_lsp.make_test_lsp_client()
    ed = Editor(client, params)

    @client.feature("infill/status")
    def on_status(params):
        ed.statuses.append(_plain(params))

    await client.start_io(*COMMAND, "--log-level", "WARNING", "serve", "--model", str(TINY_MODEL), *extra)
    try:
        ed.result = await asyncio.wait_for(client.initialize_session(params), 60)
        yield ed
        await asyncio.wait_for(client.shutdown_session(), 30)
    finally:
        await client.stop()


async def ready(ed: Editor, timeout: float = 120) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        states = [s.get("state") for s in ed.statuses]
        if "error" in states:
            raise AssertionError(f"the engine failed to load: {ed.statuses}")
        if "loading" in states and states[-1] == "idle":
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"never ready: {ed.statuses}")


async def test_initialize_completion_and_status_as_each_editor(editor, request):
    profile = request.node.callspec.params["editor"]
    expected_encoding = PROFILES[profile][2]
    capabilities = editor.result.capabilities

    # the position encoding: the first of the client's that the server speaks, UTF-16 when none is offered
    offered = editor.params.capabilities.general and editor.params.capabilities.general.position_encodings
    assert capabilities.position_encoding == expected_encoding, (profile, offered)
    # inline completion is advertised whether or not the client declared the capability
    assert capabilities.inline_completion_provider
    assert editor.result.server_info.name == "infill-lsp"

    # status notifications (the editors' status items) and, where the client declares
    # window.workDoneProgress, the model load as $/progress begin ... end
    await ready(editor)
    percents = [s["percent"] for s in editor.statuses if s.get("percent") is not None]
    assert percents and percents == sorted(percents), editor.statuses
    reports = editor.client.progress_reports
    if editor.params.capabilities.window and editor.params.capabilities.window.work_done_progress:
        assert len(reports) == 1, reports
        (token, values), = reports.items()
        assert isinstance(values[0], types.WorkDoneProgressBegin) and "loading" in values[0].title
        assert isinstance(values[-1], types.WorkDoneProgressEnd)
        assert all(isinstance(v, types.WorkDoneProgressReport) for v in values[1:-1])
    else:
        assert reports == {}

    # a completion with non-ASCII text before and after the cursor: é (2 UTF-8 bytes, 1 UTF-16
    # unit), 𝄞 (4 bytes, 2 units); the columns are counted in the negotiated encoding
    encoding = capabilities.position_encoding
    prefix, rest = 'label = "é𝄞" + (', ")  # 𝄞"
    line = prefix + rest
    text = f"# ünïcode\n{line}\n"
    uri = (Path(editor.params.root_path or "/tmp") / "notes.txt").as_uri()
    editor.client.text_document_did_open(types.DidOpenTextDocumentParams(
        types.TextDocumentItem(uri=uri, language_id="plaintext", version=1, text=text)))
    result = await asyncio.wait_for(editor.client.text_document_inline_completion_async(types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri), position=types.Position(1, column(prefix, encoding)),
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked))), 60)
    items = result.items if isinstance(result, types.InlineCompletionList) else result
    assert items, "plain text: every candidate is shown"
    for item in items:
        # from the cursor to the end of the line, in the client's encoding
        assert item.range.start == types.Position(1, column(prefix, encoding)), (encoding, item.range)
        assert item.range.end == types.Position(1, column(line, encoding)), (encoding, item.range)
        start, end = index(line, item.range.start.character, encoding), index(line, item.range.end.character, encoding)
        accepted = line[:start] + item.insert_text + line[end:]
        assert accepted.startswith(prefix) and accepted.endswith(rest), accepted


def test_pytest_lsp_neovim_profile_declares_what_neovim_sends():
    """pytest-lsp's Neovim 0.11 profile and the capture agree where the server looks."""
    bundled = pytest_lsp.client_capabilities("neovim@v0.11")
    real = captured("neovim-0.11.json").capabilities
    assert bundled.general.position_encodings == real.general.position_encodings
    assert bundled.window == real.window
    assert bundled.text_document.inline_completion is None and real.text_document.inline_completion is None
    assert bundled.text_document.synchronization == real.text_document.synchronization


def test_the_captures_are_what_the_clients_declare():
    nvim, vscode = captured("neovim-0.11.json"), captured("vscode-languageclient-10.json")
    assert nvim.client_info.name == "Neovim" and nvim.client_info.version.startswith("0.11.")
    assert nvim.initialization_options == []  # the plugin's empty settings table
    assert list(vscode.capabilities.general.position_encodings) == [types.PositionEncodingKind.Utf16]
    assert vscode.capabilities.text_document.inline_completion.dynamic_registration is True
    assert set(vscode.initialization_options) >= {"candidates", "maxTokens", "steps"}
    assert ROOT.joinpath("editors", "vscode", "package.json").read_text().count('"vscode-languageclient": "10.')
