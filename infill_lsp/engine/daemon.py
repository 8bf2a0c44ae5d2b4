"""`infill-lsp engine`: one resident model shared by every `infill-lsp serve` on the machine.

Listens on an owner-only Unix socket (directory 0700, socket 0600). Requests from all
clients queue for the single model worker thread; a Cancel message, or the client going
away, stops that request between denoising steps.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec

from . import Cancelled, CancelToken, Engine
from .protocol import (
    HEADER_SIZE,
    CancelCall,
    ErrorReply,
    InfillCall,
    InfoCall,
    InfoReply,
    ResultReply,
    body_length,
    call_decoder,
    frame,
)

log = logging.getLogger(__name__)


def default_socket_path() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) if runtime else Path("/tmp") / f"infill-lsp-{os.getuid()}"
    return base / "infill-lsp" / "engine.sock" if runtime else base / "engine.sock"


def prepare_socket_path(path: Path) -> None:
    """Make the parent owner-only and clear a stale socket; refuse if a live daemon owns it."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    parent = path.parent.stat()
    if parent.st_uid != os.getuid():
        raise PermissionError(f"{path.parent} belongs to another user")
    os.chmod(path.parent, 0o700)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise FileExistsError(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # stale: nobody listens
        else:
            raise FileExistsError(f"an engine is already listening on {path}")
        finally:
            probe.close()


class EngineDaemon:
    def __init__(self, engine: Engine, path: Path):
        self.engine = engine
        self.path = path
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="infill-model")

    async def serve(self, ready: asyncio.Event | None = None) -> None:
        prepare_socket_path(self.path)
        old_umask = os.umask(0o177)
        try:
            server = await asyncio.start_unix_server(self._client, path=str(self.path))
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        log.info("engine listening on %s (%s)", self.path, self.engine.info.model)
        if ready is not None:
            ready.set()
        try:
            async with server:
                await server.serve_forever()
        finally:
            self.path.unlink(missing_ok=True)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tokens: dict[int, CancelToken] = {}
        tasks: set[asyncio.Task] = set()
        write_lock = asyncio.Lock()

        async def send(message) -> None:
            async with write_lock:
                writer.write(frame(message))
                await writer.drain()

        async def run(call: InfillCall, token: CancelToken) -> None:
            loop = asyncio.get_running_loop()
            try:
                result = await loop.run_in_executor(self.worker, self.engine.infill, call.request, token)
                await send(ResultReply(id=call.id, result=result))
            except Cancelled:
                await send(ErrorReply(id=call.id, message="cancelled", cancelled=True))
            except (ConnectionError, RuntimeError):
                pass  # the client went away while we answered
            except Exception as exc:  # the model failed on this input: report, keep serving
                log.exception("infill failed")
                await send(ErrorReply(id=call.id, message=f"{type(exc).__name__}: {exc}"))
            finally:
                tokens.pop(call.id, None)

        try:
            while True:
                header = await reader.readexactly(HEADER_SIZE)
                body = await reader.readexactly(body_length(header))
                try:
                    call = call_decoder.decode(body)
                except msgspec.DecodeError as exc:
                    log.warning("bad message from client: %s", exc)
                    break
                if isinstance(call, InfillCall):
                    tokens[call.id] = token = CancelToken()
                    task = asyncio.create_task(run(call, token))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                elif isinstance(call, CancelCall):
                    if (token := tokens.get(call.id)) is not None:
                        token.cancel()
                elif isinstance(call, InfoCall):
                    await send(InfoReply(id=call.id, info=self.engine.info))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except Exception as exc:
            log.warning("dropping client: %s", exc)
        finally:
            for token in tokens.values():
                token.cancel()
            writer.close()
