"""Drive `infill-lsp serve` as an editor does: a subprocess spoken to over stdio JSON-RPC."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from lsprotocol import types
from pygls.lsp.client import LanguageClient

ROOT = Path(__file__).resolve().parent.parent
TINY_MODEL = ROOT / "fixtures" / "tiny-diffusiongemma"
STUB_SERVER = Path(__file__).resolve().parent / "stub_server.py"


class Editor:
    """A pygls client plus what an editor would remember: status notifications, open documents."""

    def __init__(self) -> None:
        self.client = LanguageClient("infill-tests", "1")
        self.statuses: list[dict] = []
        self.logs: list[str] = []
        self.progress: list = []
        self.events: list[tuple[str, str]] = []  # ("status", state) and ("progress", kind), as they arrived
        self.registrations: list[dict] = []  # client/registerCapability and unregisterCapability, in order

        @self.client.feature(types.CLIENT_REGISTER_CAPABILITY)
        def on_register(params: types.RegistrationParams):
            self.registrations += [{"register": r.method, "id": r.id, "options": _plain(r.register_options)}
                                   for r in params.registrations]

        @self.client.feature(types.CLIENT_UNREGISTER_CAPABILITY)
        def on_unregister(params: types.UnregistrationParams):
            self.registrations += [{"unregister": u.method, "id": u.id} for u in params.unregisterations]

        @self.client.feature("infill/status")
        def on_status(params):
            self.statuses.append(_plain(params))
            self.events.append(("status", self.statuses[-1]["state"]))

        @self.client.feature(types.WINDOW_LOG_MESSAGE)
        def on_log(params: types.LogMessageParams):
            self.logs.append(params.message)

        @self.client.feature(types.WINDOW_SHOW_MESSAGE)
        def on_show(params: types.ShowMessageParams):
            self.logs.append(params.message)

        @self.client.feature(types.WINDOW_WORK_DONE_PROGRESS_CREATE)
        def on_progress_create(params):
            return None

        @self.client.feature(types.PROGRESS)
        def on_progress(params):
            self.progress.append(params)
            self.events.append(("progress", _plain(params.value)["kind"] if params.value else ""))

    async def start(self, *args: str, init_options: dict | None = None, encodings=None, progress=True,
                    stub: list[str] | None = None, watch_files: bool | None = None, stub_delay: float = 0.0):
        """Start `infill-lsp serve` and initialize it. `stub`: the model replaced by an engine that
        answers every request with these candidates, best first (tests/stub_server.py).
        `watch_files`: the client says whether it registers workspace/didChangeWatchedFiles
        dynamically (None: it says nothing about it)."""
        command = [sys.executable, "-m", "infill_lsp", "--log-level", "INFO", "serve", *args]
        if stub is not None:
            command[1:3] = [str(STUB_SERVER), json.dumps({"candidates": stub, "delay": stub_delay})]
        if not any(a in ("--model", "--engine") for a in args):
            command += ["--model", str(TINY_MODEL)]
        await self.client.start_io(*command)
        general = types.GeneralClientCapabilities(position_encodings=encodings) if encodings else None
        caps = types.ClientCapabilities(
            general=general,
            window=types.WindowClientCapabilities(work_done_progress=progress),
            workspace=None if watch_files is None else types.WorkspaceClientCapabilities(
                did_change_watched_files=types.DidChangeWatchedFilesClientCapabilities(
                    dynamic_registration=watch_files)),
        )
        result = await self.client.initialize_async(
            types.InitializeParams(capabilities=caps, initialization_options=init_options or {}, process_id=None)
        )
        self.client.initialized(types.InitializedParams())
        return result

    def send_raw(self, payload: bytes) -> None:
        """Bytes straight onto the server's stdin, framed: for messages no well-behaved client would send."""
        self.client.protocol.writer.write(b"Content-Length: %d\r\n\r\n" % len(payload) + payload)

    async def raw_request(self, method: str, params, msg_id: str):
        """A request with hand-written (possibly malformed) params; resolves to the server's answer."""
        import concurrent.futures
        import json

        future = concurrent.futures.Future()
        self.client.protocol._request_futures[msg_id] = future
        self.send_raw(json.dumps({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params}).encode())
        return await asyncio.wait_for(asyncio.wrap_future(future), 10)

    async def stats(self) -> dict:
        return _plain(await self.client.protocol.send_request_async("infill/stats", {}))

    async def wait_ready(self, timeout: float = 60) -> dict:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            stats = await self.stats()
            if stats["engineReady"] or stats["engineError"]:
                return stats
            await asyncio.sleep(0.05)
        raise TimeoutError("engine never became ready")

    def open(self, uri: str, text: str, language_id: str = "python", version: int = 1) -> None:
        self.client.text_document_did_open(types.DidOpenTextDocumentParams(
            types.TextDocumentItem(uri=uri, language_id=language_id, version=version, text=text)))

    def change(self, uri: str, version: int, start: tuple[int, int], end: tuple[int, int], text: str) -> None:
        self.client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
            content_changes=[types.TextDocumentContentChangePartial(
                range=types.Range(types.Position(*start), types.Position(*end)), text=text)],
        ))

    def replace_all(self, uri: str, version: int, text: str) -> None:
        self.client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
            content_changes=[types.TextDocumentContentChangeWholeDocument(text=text)],
        ))

    def inline_params(self, uri: str, line: int, character: int, invoked: bool = True) -> types.InlineCompletionParams:
        kind = types.InlineCompletionTriggerKind.Invoked if invoked else types.InlineCompletionTriggerKind.Automatic
        return types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri), position=types.Position(line, character),
            context=types.InlineCompletionContext(trigger_kind=kind))

    async def complete(self, uri: str, line: int, character: int, invoked: bool = True):
        return await self.client.text_document_inline_completion_async(self.inline_params(uri, line, character, invoked))

    async def close(self) -> int | None:
        try:
            await asyncio.wait_for(self.client.shutdown_async(None), 10)
            self.client.exit(None)
            server = self.client._server
            return await asyncio.wait_for(server.wait(), 10) if server else None
        finally:
            await self.client.stop()


def _plain(value):
    """pygls hands back custom-method payloads as objects; tests want dicts."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return [_plain(v) for v in value]
    if hasattr(value, "_asdict"):
        return {k: _plain(v) for k, v in value._asdict().items()}
    if hasattr(value, "__dict__") and not isinstance(value, type):
        return {k: _plain(v) for k, v in vars(value).items()}
    return value


def apply(text: str, line: int, item) -> str:
    """Apply an InlineCompletionItem's edit the way an editor accepts it."""
    lines = text.split("\n")
    start, end = item.range.start, item.range.end
    assert start.line == end.line == line
    row = lines[line]
    lines[line] = row[: start.character] + item.insert_text + row[end.character:]
    return "\n".join(lines)
