"""The language server: documents in, ghost text out.

Handlers stay on the event loop and never touch the model: the whole pipeline (window ->
engine -> validate -> rank) runs on one worker thread. Each request carries a CancelToken;
`$/cancelRequest`, a newer request for the same document, or a settings change that swaps
the engine cancels it, and the engine stops between denoising steps.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import sys
import time
from collections import Counter, OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote

import msgspec
from lsprotocol import types
from pygls.exceptions import FeatureNotificationError
from pygls.lsp.server import LanguageServer
from pygls.uris import to_fs_path

from .. import __version__, context, definitions, doctor, names, pipeline, repo_context
from ..config import Settings, merge
from ..engine import Cancelled, CancelToken, Engine, EngineUnavailable, load_engine
from ..rank import Ranked
from . import transport
from .documents import LspWorkspace
from .protocol import (DID_PARTIALLY_ACCEPT, DID_SHOW, HEALTH, STATS, STATUS, InfillProtocol, ItemId, PartialAccept,
                       strict_converter)
from .typing_cache import TypingCache

log = logging.getLogger(__name__)

ACCEPT_COMMAND = "infill.accept"
_KEEP_SHOWN = 512  # item ids remembered for acceptance telemetry
# A failed engine (daemon not up yet, weights not there yet) is tried again after this many seconds.
RETRY_AFTER_S = float(os.environ.get("INFILL_LSP_RETRY_S", "10"))
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
EXIT_GRACE_S = 2.0  # after exit, how long a running pipeline step may take to notice its cancellation


class ItemTelemetry:
    """What the editor reported of one shown item."""

    __slots__ = ("shown", "accepted", "accepted_units")

    def __init__(self) -> None:
        self.shown = self.accepted = False
        self.accepted_units = 0


class EngineHolder:
    """The current engine, or why there is none; swapped when model settings change."""

    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.error: str | None = None
        self.loading: asyncio.Task | None = None
        self.config = None
        self.failed_at = 0.0


class InfillServer(LanguageServer):
    def __init__(self, settings: Settings | None = None, engine: Engine | None = None):
        super().__init__("infill-lsp", __version__, protocol_cls=InfillProtocol, converter_factory=strict_converter,
                         text_document_sync_kind=types.TextDocumentSyncKind.Incremental)
        self.exit_code = 0
        self.settings = settings or Settings()
        self.holder = EngineHolder()
        if engine is not None:
            self.holder.engine = engine
            self.holder.config = self.settings.engine_config()
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="infill-pipeline")
        self.inflight: dict[str, CancelToken] = {}
        self.typing = TypingCache()
        self.shown: OrderedDict[str, str] = OrderedDict()  # item id -> its text, for telemetry
        self.telemetry: dict[str, ItemTelemetry] = {}  # item id -> what the editor reported of it
        self.stats: Counter[str] = Counter()
        self.request_ids = itertools.count(1)
        self.state = "idle"
        self.last_timings: dict[str, Any] | None = None  # stage timings of the last completion
        # repository context: gathered on events (definitions indexed on a thread of their own), ranked on idle
        self.repo = repo_context.RepoContext(definitions=definitions.DefinitionIndex())
        self.last_context: list[dict[str, Any]] | None = None  # the chunks the last prompt held
        self._repo_timer: asyncio.TimerHandle | None = None
        self.initialized = False  # `initialized` came: the server may send requests (registrations)
        self.can_watch_files = False  # the client registers workspace/didChangeWatchedFiles dynamically
        self.watching_files = False  # the file watcher is registered with the client

    def report_server_error(self, error: Exception, source) -> None:
        """Bad messages are logged (stderr and window/logMessage), never shown as a popup. Bad input
        is rejected before any handler runs (protocol.py), so a notification handler that raised is
        a bug: its traceback is logged (pygls already logs those of request handlers)."""
        trace = getattr(error, "data", None)
        if source is FeatureNotificationError and isinstance(trace, dict) and trace.get("traceback"):
            log.error("a notification handler failed: %s\nTraceback (most recent call last):\n%s%s", error,
                      "".join(trace["traceback"]), error)
            return
        log.warning("ignored a message the server could not handle: %s", error)

    # -- transport: pygls' loops with a reader that survives malformed framing (transport.py) ---
    def _start_io_async(self, stdin=None, stdout=None) -> None:
        from threading import Event

        from pygls.io_ import StdoutWriter

        self._stop_event = Event()
        reader = transport.FrameReader(transport.StdinChunks(stdin or sys.stdin.buffer))
        self.protocol.set_writer(StdoutWriter(stdout or sys.stdout.buffer))
        try:
            asyncio.run(transport.serve(self._stop_event, reader, self.protocol))
        except BrokenPipeError:
            log.error("the connection to the client is lost; shutting down")
        except SystemExit as exc:  # the exit notification: 0 after shutdown, 1 without (LSP)
            self.exit_code = exc.code if isinstance(exc.code, int) else 0
        except KeyboardInterrupt:
            pass
        finally:
            self.shutdown()
            self.stop_worker()
        if self.exit_code:
            raise SystemExit(self.exit_code)

    def stop_worker(self) -> None:
        """After exit (or the client hanging up) the process ends promptly: running completions are
        cancelled, and one that does not stop within EXIT_GRACE_S (a long denoising step, a model
        still loading) is left behind rather than waited for."""
        for token in list(self.inflight.values()):
            token.cancel()
        self.worker.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + EXIT_GRACE_S
        for thread in list(getattr(self.worker, "_threads", ())):
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("leaving a pipeline step that did not stop within %.0f s", EXIT_GRACE_S)
                logging.shutdown()
                for stream in (sys.stdout, sys.stderr):
                    try:
                        stream.flush()
                    except Exception:
                        pass
                os._exit(self.exit_code)

    def start_tcp(self, host: str, port: int) -> None:
        from threading import Event

        log.info("serving on %s:%s", host, port)
        self._stop_event = stop_event = Event()

        async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.protocol.set_writer(writer)  # type: ignore[arg-type]
            await transport.serve(stop_event, transport.FrameReader(lambda: reader.read(transport.CHUNK)),
                                  self.protocol)
            self.shutdown()

        async def main() -> None:
            self._server = await asyncio.start_server(connection, host, port)
            async with self._server:
                await self._server.serve_forever()

        try:
            asyncio.run(main())
        except (asyncio.CancelledError, KeyboardInterrupt):
            pass

    # -- status ------------------------------------------------------------------------------
    def set_status(self, state: str, message: str | None = None, percent: int | None = None) -> None:
        self.state = state
        payload: dict[str, Any] = {"state": state}
        if message:
            payload["message"] = message
        if percent is not None:
            payload["percent"] = percent
        try:
            self.protocol.notify(STATUS, payload)
        except Exception:  # no client attached (unit tests) or the transport is gone
            log.debug("could not send status", exc_info=True)

    # -- engine lifecycle --------------------------------------------------------------------
    def ensure_engine(self) -> None:
        """Start loading the engine the settings ask for, unless it is already there or loading."""
        wanted = self.settings.engine_config()
        holder = self.holder
        recently_failed = holder.error is not None and time.monotonic() - holder.failed_at < RETRY_AFTER_S
        if holder.config == wanted and (holder.engine is not None or holder.loading is not None or recently_failed):
            return
        if holder.loading is not None:
            holder.loading.cancel()
        old, holder.engine, holder.error, holder.config = holder.engine, None, None, wanted
        for token in self.inflight.values():
            token.cancel()
        if old is not None:
            self.worker.submit(old.close)
        holder.loading = asyncio.get_running_loop().create_task(self._load(wanted))

    async def _load(self, wanted) -> None:
        holder = self.holder
        what = wanted.address or wanted.model or "default model"
        self.set_status("loading", f"loading {what}")
        progress_token = f"infill-load-{id(wanted)}"
        reporter = await self._begin_progress(progress_token, f"infill-lsp: loading {what}")
        loop = asyncio.get_running_loop()

        def progress(message: str, percent: int | None) -> None:  # percent: the weights' bytes read, or None
            loop.call_soon_threadsafe(self.set_status, "loading", message, percent)  # for status bars
            if reporter:
                loop.call_soon_threadsafe(reporter, message, percent)

        final_status: tuple[str, str | None] | None = None  # sent after the progress end, never before
        try:
            engine = await loop.run_in_executor(self.worker, load_engine, wanted, progress)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if holder.config == wanted:  # a superseded load's failure is not the server's state
                holder.error = f"{type(exc).__name__}: {exc}"
                holder.failed_at = time.monotonic()
                log.error("engine failed to load: %s", holder.error)
                final_status = ("error", holder.error)
            else:
                log.info("a superseded engine load failed: %s: %s", type(exc).__name__, exc)
        else:
            if holder.config == wanted:
                holder.engine = engine
                log.info("engine ready: %s", engine.info)
                final_status = ("idle", None)
            else:
                self.worker.submit(engine.close)
        finally:
            if holder.config == wanted:
                holder.loading = None
            if reporter:
                self._safe(self.work_done_progress.end, progress_token, types.WorkDoneProgressEnd())
        # After the progress end: a client that sees "idle" or "error" has seen the load's progress close.
        if final_status is not None:
            self.set_status(*final_status)
            if final_status[0] == "error":
                self._safe(self.window_show_message, types.ShowMessageParams(
                    type=types.MessageType.Error, message=f"infill-lsp: {holder.error}"))

    async def _begin_progress(self, token: str, title: str):
        capabilities = getattr(self, "client_capabilities", None)
        if not (capabilities and capabilities.window and capabilities.window.work_done_progress):
            return None
        try:
            await asyncio.wait_for(self.work_done_progress.create_async(token), 5)
            self.work_done_progress.begin(token, types.WorkDoneProgressBegin(title=title, percentage=0))
        except Exception:
            log.debug("client refused a progress token", exc_info=True)
            return None

        def report(message: str, percent: int | None) -> None:
            self._safe(self.work_done_progress.report, token,
                       types.WorkDoneProgressReport(message=message, percentage=percent))

        return report

    @staticmethod
    def _safe(fn, *args) -> None:
        try:
            fn(*args)
        except Exception:
            log.debug("notification failed", exc_info=True)

    # -- settings ----------------------------------------------------------------------------
    def apply_settings(self, changes: Any) -> None:
        # msgspec cannot even report a value holding a lone surrogate (UnicodeEncodeError instead of a
        # ValidationError): U+FFFD in their place, and merge drops the bad value with a warning.
        try:
            changes = _scrub_surrogates(changes)
        except RecursionError:
            log.warning("ignored settings nested too deeply")
            return
        before, self.settings = self.settings, merge(self.settings, changes)
        if self.settings != before:
            self.typing.clear()
        if self.settings.repo_context == "off":  # forget what was gathered, not only stop sending it
            if self.repo.definitions is not None:
                self.repo.definitions.close()
            self.repo = repo_context.RepoContext(definitions=definitions.DefinitionIndex())
            self.last_context = None
            self.sync_file_watcher(False)
        elif before.repo_context == "off" and self.initialized:  # on again: what is open is gathered again
            self.repo_reread()

    # -- repository context (repo_context.py) ------------------------------------------------
    def _repo_gathering(self) -> bool:
        """Whether to gather: unless it is off (under "auto" the engine may not be loaded yet to say)."""
        gathering = self._configure_repo()
        self.sync_file_watcher(gathering)
        return gathering

    def _configure_repo(self) -> bool:
        if self._repo_use() == "off":  # also a checkpoint without the layout with no names to finish
            return False
        engine = self.holder.engine
        cap = getattr(engine.info, "repo_context_tokens", 0) if engine is not None else 0
        tokens, files = self.settings.repo_context_limits(cap)
        folders = [to_fs_path(f.uri) for f in self.workspace.folders.values()]
        if not folders and self.workspace.root_path:
            folders = [self.workspace.root_path]
        # definitions are indexed once it is known they will be used ("on", or the engine loaded: prompt or names)
        self.repo.configure(budget_tokens=tokens, max_files=files, folders=[f for f in folders if f],
                            index=self.settings.repo_context == "on" or engine is not None)
        return True

    def sync_file_watcher(self, gathering: bool) -> None:
        """Files created, changed or deleted outside the editor (a git checkout, a formatter) reach
        the definition index as they happen: while the index is kept, a client that registers
        `workspace/didChangeWatchedFiles` dynamically is asked to watch the files it covers, and
        asked to stop when it is not. Without that capability they are seen at the next walk."""
        index = self.repo.definitions
        wanted = (self.can_watch_files and self.initialized and gathering and index is not None
                  and index.active)
        if wanted == self.watching_files:
            return
        self.watching_files = wanted
        try:
            if wanted:
                watchers = [types.FileSystemWatcher(glob_pattern=glob) for glob in definitions.watched_globs()]
                future = self.client_register_capability(types.RegistrationParams(registrations=[types.Registration(
                    id=WATCH_REGISTRATION, method=types.WORKSPACE_DID_CHANGE_WATCHED_FILES,
                    register_options=types.DidChangeWatchedFilesRegistrationOptions(watchers=watchers))]))
            else:
                future = self.client_unregister_capability(types.UnregistrationParams(unregisterations=[
                    types.Unregistration(id=WATCH_REGISTRATION, method=types.WORKSPACE_DID_CHANGE_WATCHED_FILES)]))
        except Exception:  # the transport is gone
            log.debug("could not (un)register the file watcher", exc_info=True)
            return
        future.add_done_callback(_log_refused)

    def watched_files(self, params: types.DidChangeWatchedFilesParams) -> None:
        """workspace/didChangeWatchedFiles: queued for the index's thread, whatever the batch's size
        (read from the disk there: created or changed files are parsed, deleted ones dropped, under
        the same admission rules as a walk); a `.gitignore` among them: walked again."""
        index = self.repo.definitions
        if not params.changes or index is None or not self._repo_gathering() or not index.active:
            return
        uris = [change.uri for change in params.changes]
        if any(os.path.basename(unquote(uri)) == ".gitignore" for uri in uris):
            self.repo.admission.forget()
            index.rewalk()  # reads every file again that changed, and drops what is ignored now
        else:
            index.update_many(uris)
        self._arm_repo_refresh()

    def _doc_text(self, uri: str) -> str | None:
        document = self.workspace.text_documents.get(unquote(uri))
        if document is None:
            return None
        text = document.source
        if not text.isascii() and _LONE_SURROGATE.search(text):
            text = _LONE_SURROGATE.sub("\ufffd", text)
        return text

    def repo_document(self, uri: str) -> None:
        """didOpen, didSave: the document's chunks join the pool."""
        if self._repo_gathering() and (text := self._doc_text(uri)) is not None:
            self.repo.document(uri, text)
            self._arm_repo_refresh()

    def repo_reread(self) -> None:
        """The workspace folders changed, or gathering was turned on again: every open document is
        read again, so one opened before its folder was added is context now (one now outside is
        dropped by the folders' change itself)."""
        if not self._repo_gathering():  # once for all of them (repo_document would ask per document)
            return
        for document in list(self.workspace.text_documents.values()):
            if (text := self._doc_text(document.uri)) is not None:
                self.repo.document(document.uri, text)
        self._arm_repo_refresh()

    def repo_changed(self, params: types.DidChangeTextDocumentParams) -> None:
        """didChange: remember where the edits were; a whole-document change re-chunks it."""
        if not self._repo_gathering():
            return
        uri = params.text_document.uri
        lines = [c.range.start.line for c in params.content_changes
                 if isinstance(c, types.TextDocumentContentChangePartial)]
        if len(lines) < len(params.content_changes):
            self.repo_document(uri)
        self.repo.edited(uri, lines)
        self._arm_repo_refresh()

    def _arm_repo_refresh(self) -> None:
        """Rank the ring again once events pause for IDLE_S, never per keystroke."""
        if self._repo_timer is not None:
            self._repo_timer.cancel()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._repo_timer = loop.call_later(repo_context.IDLE_S, self._repo_idle)

    def _repo_idle(self) -> None:
        self._repo_timer = None
        settings = self.settings
        try:
            self.repo.idle_refresh(self._doc_text, lambda text, line: repo_context.window_lines(
                text, line, settings.prefix_chars, settings.suffix_chars))
        except Exception:
            log.exception("ranking repository context failed")

    def _repo_use(self) -> str:
        """What the gathered context is for: "prompt" (the model reads it), "names" (only the name being
        typed is finished from it), "off", or "" while the engine that decides is still loading."""
        settings, engine = self.settings, self.holder.engine
        if settings.repo_context == "off":
            return "off"
        if settings.repo_context == "on":
            return "prompt"
        if engine is None:
            return ""
        if settings.repo_context_enabled(getattr(engine.info, "repo_context", "")):
            return "prompt"
        return "names" if settings.complete_names else "off"

    def _repo_for(self, engine: Engine, uri: str, text: str, cursor: context.Cursor
                  ) -> tuple[tuple[Any, ...], str, str]:
        """(context chunks, the document's header path, what they are for: `_repo_use`) for a
        completion; no chunks when off. Under "auto" a checkpoint that declares no layout (infill-small)
        does not get them in its prompt, but the name being typed is still finished from them (names.py)."""
        settings = self.settings
        use = self._repo_use()
        if use not in ("prompt", "names") or not self._repo_gathering():
            return (), "", use
        try:
            window = repo_context.window_lines(text, cursor.line, settings.prefix_chars, settings.suffix_chars,
                                               cursor.line_start)
            chunks = self.repo.for_request(uri, text, cursor.line, window, self._doc_text, cursor.line_start,
                                           cursor.offset)
        except Exception:
            log.exception("repository context failed; completing without it")
            return (), "", use
        if not chunks:
            return (), "", use
        path = self.repo.admission.relative_path(uri) or os.path.basename(repo_context.uri_to_path(uri) or "") or ""
        return chunks, path, use

    # -- completion --------------------------------------------------------------------------
    async def inline_completion(self, params: types.InlineCompletionParams) -> types.InlineCompletionList:
        started = time.perf_counter()
        empty = types.InlineCompletionList(items=[])
        uri = params.text_document.uri
        document = self.workspace.text_documents.get(unquote(uri))
        if document is None:
            log.warning("inlineCompletion for a document that is not open: %.200s", uri)
            return empty
        language_id = document.language_id or ""
        if not self.settings.enabled_for(language_id):
            return empty
        text = source = document.source
        version = document.version
        encoding = context.encoding_name(self.workspace.position_encoding)
        cursor = context.cursor_at(text, params.position.line, params.position.character, encoding)
        if cursor is None:
            log.warning("position %s:%s is past the end of %.200s", params.position.line,
                        params.position.character, uri)
            return empty
        self.stats["requests"] += 1
        invoked = params.context.trigger_kind == types.InlineCompletionTriggerKind.Invoked
        # With the completion menu open, complete the document as it will be once its selected item is
        # accepted; the items then start with that item's text, over its range (`Selection`).
        selection = self._selection(params.context.selected_completion_info, text, cursor, encoding)
        if selection is not None:
            text, cursor = selection.document(text)
        if not text.isascii() and _LONE_SURROGATE.search(text):
            # JSON's \ud800 escapes put lone surrogates in a document (or a selected item); no tokenizer
            # takes them. U+FFFD is one code point and as many UTF-8/16 units: every position stays where it was.
            text = _LONE_SURROGATE.sub("\ufffd", text)

        # A newer request makes every older one stale: an editor shows ghost text at one cursor
        # only, so a request for another document (the user switched tabs) is stale too.
        for previous in self.inflight.values():
            previous.cancel()
            self.stats["cancelled"] += 1
        self.inflight.clear()

        if not invoked and (cached := self.typing.lookup(uri, text, cursor.offset)) is not None:
            self.stats["typing_through"] += 1
            return self._to_lsp(cached, source, cursor, encoding, remember=False, selection=selection)

        engine = self.holder.engine
        if engine is None:
            if self.holder.loading is None:
                self.ensure_engine()  # first use, or a retry once RETRY_AFTER_S has passed
            if self.holder.error:
                self.set_status("error", self.holder.error)
            return empty

        repo, repo_path, use = self._repo_for(engine, uri, text, cursor)
        hints = ()
        if use != "prompt":
            repo, repo_path, hints = (), "", repo
        known = ()
        if self.settings.complete_names and use in ("prompt", "names"):
            try:
                known = names.workspace_names(self.repo.definitions, text, cursor.offset)
            except Exception:
                log.exception("looking up the names being typed failed; completing without them")
        token = CancelToken()
        self.inflight[uri] = token
        self.set_status("busy")
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(
                self.worker, self._complete_in_worker, engine, text, cursor.offset, language_id, uri, invoked, token,
                repo, repo_path, hints, known,
            )
        except asyncio.CancelledError:  # $/cancelRequest: stop the engine too, not only the reply
            token.cancel()
            self.stats["cancelled"] += 1
            raise
        except Cancelled:
            return empty
        except EngineUnavailable as exc:
            log.error("engine unavailable: %s", exc)
            self.set_status("error", str(exc))
            return empty
        except Exception:
            log.exception("completion failed for %s", uri)
            self.set_status("error", "completion failed; see the log")
            return empty
        finally:
            if self.inflight.get(uri) is token:
                del self.inflight[uri]
                if self.state == "busy":
                    self.set_status("idle")
        now = self.workspace.text_documents.get(unquote(uri))
        if token.cancelled or now is None or (now.version != version and now.source != source):
            # Superseded after the engine's last look at the token, edited while it ran (a client that
            # sends didChange without cancelling), or closed: its ranges are for a text that is gone.
            self.stats["stale"] += 1
            return empty
        self.typing.remember(uri, text, cursor.offset, result.items)
        response = self._to_lsp(result.items, source, cursor, encoding, selection=selection)  # the rest of the line as it was
        self.last_timings = {**msgspec.to_builtins(result.timings), "handler_ms": (time.perf_counter() - started) * 1e3}
        kept = result.timings.context_chunks
        self.last_context = [{"path": c.path, "startLine": c.start_line, "endLine": c.end_line}
                             for c in (repo[len(repo) - kept:] if kept else ())]
        log.info("completed %s in %.1f ms (%d shown)", uri, self.last_timings["handler_ms"], len(result.items))
        return response

    def _complete_in_worker(self, engine, text, offset, language_id, uri, invoked, token, repo=(), repo_path="",
                            hints=(), known=()):
        try:
            return pipeline.complete(
                engine, text, offset, language_id=language_id, path=unquote(uri),
                settings=self.settings, budget=self.settings.budget(invoked), cancel=token, seed=self.settings.seed,
                repo=repo, repo_path=repo_path, hints=hints, workspace_names=known,
            )
        except Cancelled:
            self.stats["engine_cancelled"] += 1  # the model stopped early, not just the reply
            raise

    @staticmethod
    def _selection(info: types.SelectedCompletionInfo | None, text: str, cursor: context.Cursor,
                   encoding: str) -> context.Selection | None:
        """The completion menu's selected item, when the request carries one whose range holds the cursor."""
        if info is None:
            return None
        start = context.cursor_at(text, info.range.start.line, info.range.start.character, encoding)
        end = context.cursor_at(text, info.range.end.line, info.range.end.character, encoding)
        if start is None or end is None or not start.offset <= cursor.offset <= end.offset:
            log.debug("ignoring a selected completion whose range does not hold the cursor: %s", info.range)
            return None
        return context.Selection(start=start, end=end, text=info.text)

    def _to_lsp(self, items: list[Ranked], text: str, cursor: context.Cursor, encoding: str,
                remember: bool = True, selection: context.Selection | None = None) -> types.InlineCompletionList:
        """Each item replaces [cursor, end of line] with middle + rest of line: the same edit as
        inserting the middle, in the shape editors render as ghost text mid-line. With a `selection`
        (`cursor` is then in the document as the selected item leaves it), each replaces [the item's
        start, end of its line] with the item's text + middle + the rest of that line: LSP 3.18 has
        an editor show an inline completion beside its completion menu only when it extends the
        selected item's text over the same range."""
        head = added = ""  # the selected item's text; what of it the document does not hold yet
        first = cursor
        if selection is not None:
            head, first, cursor = selection.text, selection.start, selection.end
            added = head[len(os.path.commonprefix([head, text[first.offset:cursor.offset]])):]
        line_text = text[cursor.line_start:cursor.line_end]
        rest = text[cursor.offset:cursor.line_end]
        start = types.Position(first.line, context.index_to_column(
            text[first.line_start:first.line_end], first.offset - first.line_start, encoding))
        end = types.Position(cursor.line, context.index_to_column(line_text, len(line_text), encoding))
        request_id = next(self.request_ids)
        out = []
        for index, item in enumerate(items):
            item_id = f"{request_id}.{index}"
            self.shown[item_id] = added + item.text  # what accepting it puts into the document
            out.append(types.InlineCompletionItem(
                insert_text=head + item.text + rest,
                range=types.Range(start, end),
                command=types.Command(title="accept", command=ACCEPT_COMMAND, arguments=[{"id": item_id}]),
            ))
        while len(self.shown) > _KEEP_SHOWN:
            forgotten, _ = self.shown.popitem(last=False)
            self.telemetry.pop(forgotten, None)
        return types.InlineCompletionList(items=out)

    # -- telemetry (local only) --------------------------------------------------------------
    def record(self, event: str, item_id: str, accepted_length: int = 0) -> None:
        """Local telemetry. An item counts as shown once and accepted once, however often an editor
        reports it (redraws, a repeated command). `acceptedChars` counts what went into the
        document, in UTF-16 code units (what both editors measure, LSP's default unit): each
        partial acceptance adds its length; a full acceptance adds what was not accepted yet."""
        text = self.shown.get(item_id)
        if text is None:
            log.debug("%s for an unknown item %r", event, item_id[:80])
            return
        seen = self.telemetry.setdefault(item_id, ItemTelemetry())
        if event == "shown":
            if not seen.shown:
                seen.shown = True
                self.stats["shown"] += 1
        elif event == "partiallyAccepted":
            self.stats["partiallyAccepted"] += 1
            step = max(0, accepted_length)
            seen.accepted_units += step
            self.stats["acceptedChars"] += step
        elif event == "accepted" and not seen.accepted:
            seen.accepted = True
            self.stats["accepted"] += 1
            self.stats["acceptedChars"] += max(0, len(text.encode("utf-16-le")) // 2 - seen.accepted_units)

    def stats_report(self) -> dict[str, Any]:
        keys = {"requests": "requests", "shown": "shown", "accepted": "accepted",
                "partiallyAccepted": "partiallyAccepted", "acceptedChars": "acceptedChars", "cancelled": "cancelled",
                "typingThrough": "typing_through", "engineCancelled": "engine_cancelled",
                "stale": "stale"}
        report: dict[str, Any] = {name: self.stats[key] for name, key in keys.items()}
        report["engineReady"] = self.holder.engine is not None
        report["engineError"] = self.holder.error
        report["lastTimings"] = self.last_timings
        report["model"] = self.holder.engine.info.model if self.holder.engine is not None else None
        # torch CPU threads the in-process engine chose at start (0: not on a CPU or not in process)
        report["threads"] = self.holder.engine.info.threads if self.holder.engine is not None else None
        report["openDocuments"] = len(self.workspace.text_documents)
        report["cachedSuggestions"] = len(self.typing)
        report["lastContext"] = self.last_context  # [{path, startLine, endLine}] the last prompt held, or None
        report["repoContext"] = {"setting": self.settings.repo_context, "use": self._repo_use(),
                                 "ring": len(self.repo.ring),
                                 "files": len(self.repo.pool), "edits": len(self.repo.edits), **self.repo.stats}
        if self.repo.definitions is not None:
            report["repoContext"]["definitions"] = self.repo.definitions.summary()
        return report


def _scrub_surrogates(value: Any) -> Any:
    """The same JSON value with every lone surrogate (a \\ud800 escape) replaced by U+FFFD."""
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value) if not value.isascii() else value
    if isinstance(value, dict):
        return {_scrub_surrogates(k): _scrub_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub_surrogates(v) for v in value]
    return value


# Files deleted or renamed in the editor: the definition index forgets them (definitions.py).
_FILE_OPERATIONS = types.FileOperationRegistrationOptions(filters=[
    types.FileOperationFilter(pattern=types.FileOperationPattern(glob="**/*"), scheme="file")])


WATCH_REGISTRATION = "infill-lsp-watched-files"


def _log_refused(future) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("the client refused to (un)register the file watcher: %s", future.exception())


def build_server(settings: Settings | None = None, engine: Engine | None = None) -> InfillServer:
    server = InfillServer(settings, engine)

    @server.feature(types.INITIALIZE)
    def initialize(ls: InfillServer, params: types.InitializeParams) -> None:
        ls.workspace.__class__ = LspWorkspace  # documents keep LSP's line breaks (documents.py); none is open yet
        watched = params.capabilities.workspace.did_change_watched_files if params.capabilities.workspace else None
        ls.can_watch_files = bool(watched and watched.dynamic_registration)
        ls.apply_settings(params.initialization_options)

    @server.feature(types.INITIALIZED)
    def initialized(ls: InfillServer, params: types.InitializedParams) -> None:
        package_log = logging.getLogger("infill_lsp")
        if not any(isinstance(h, LspLogHandler) for h in package_log.handlers):
            package_log.addHandler(LspLogHandler(ls, asyncio.get_running_loop()))
        ls.initialized = True
        ls.ensure_engine()

    @server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    def did_change_configuration(ls: InfillServer, params: types.DidChangeConfigurationParams) -> None:
        ls.apply_settings(params.settings)
        ls.ensure_engine()

    @server.feature(types.WORKSPACE_DID_CHANGE_WORKSPACE_FOLDERS)
    def did_change_workspace_folders(ls: InfillServer, params: types.DidChangeWorkspaceFoldersParams) -> None:
        ls.repo_reread()  # pygls has updated ls.workspace.folders

    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: InfillServer, params: types.DidOpenTextDocumentParams) -> None:
        ls.repo_document(params.text_document.uri)

    @server.feature(types.TEXT_DOCUMENT_DID_SAVE)
    def did_save(ls: InfillServer, params: types.DidSaveTextDocumentParams) -> None:
        ls.repo_document(params.text_document.uri)

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: InfillServer, params: types.DidChangeTextDocumentParams) -> None:
        ls.repo_changed(params)

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: InfillServer, params: types.DidCloseTextDocumentParams) -> None:
        ls.typing.forget(params.text_document.uri)
        ls.repo.closed(params.text_document.uri)
        if (token := ls.inflight.pop(params.text_document.uri, None)) is not None:
            token.cancel()

    @server.feature(types.WORKSPACE_DID_DELETE_FILES, _FILE_OPERATIONS)
    def did_delete_files(ls: InfillServer, params: types.DeleteFilesParams) -> None:
        for gone in params.files:  # read again from the disk: dropped from the definition index
            if ls.repo.definitions is not None:
                ls.repo.definitions.update(gone.uri)

    @server.feature(types.WORKSPACE_DID_RENAME_FILES, _FILE_OPERATIONS)
    def did_rename_files(ls: InfillServer, params: types.RenameFilesParams) -> None:
        for moved in params.files:
            if ls.repo.definitions is not None:
                ls.repo.definitions.update(moved.old_uri)
                ls.repo.definitions.update(moved.new_uri)

    @server.feature(types.WORKSPACE_DID_CHANGE_WATCHED_FILES)
    def did_change_watched_files(ls: InfillServer, params: types.DidChangeWatchedFilesParams) -> None:
        ls.watched_files(params)

    @server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    async def inline_completion(ls: InfillServer, params: types.InlineCompletionParams):
        return await ls.inline_completion(params)

    @server.command(ACCEPT_COMMAND)
    def accept(ls: InfillServer, item: ItemId) -> None:  # pygls structures the argument: InvalidParams if not
        ls.record("accepted", item.id)

    @server.feature(DID_SHOW)
    def did_show(ls: InfillServer, params: ItemId) -> None:  # typed by protocol.CUSTOM_MESSAGE_TYPES
        ls.record("shown", params.id)

    @server.feature(DID_PARTIALLY_ACCEPT)
    def did_partially_accept(ls: InfillServer, params: PartialAccept) -> None:
        ls.record("partiallyAccepted", params.id, params.accepted_length)

    @server.feature(STATS)
    def stats(ls: InfillServer, params: Any) -> dict[str, int]:
        return ls.stats_report()

    @server.feature(HEALTH)
    async def health(ls: InfillServer, params: Any) -> list[dict]:
        return await doctor.server_health(ls)  # off the event loop; failures are failed checks

    return server


class LspLogHandler(logging.Handler):
    """Mirror warnings and errors to the client's log (`window/logMessage`), from any thread."""

    LEVELS = {logging.ERROR: types.MessageType.Error, logging.WARNING: types.MessageType.Warning,
              logging.INFO: types.MessageType.Info}

    def __init__(self, server: InfillServer, loop: asyncio.AbstractEventLoop, level=logging.INFO):
        super().__init__(level)
        self.server, self.loop = server, loop

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("pygls"):
            return  # pygls logs every message it handles; that belongs on stderr only
        kind = self.LEVELS.get(record.levelno if record.levelno <= logging.ERROR else logging.ERROR,
                               types.MessageType.Log)
        params = types.LogMessageParams(type=kind, message=self.format(record))
        try:
            self.loop.call_soon_threadsafe(self.server._safe, self.server.window_log_message, params)
        except RuntimeError:
            pass  # loop closed during shutdown

