"""Client side of the engine daemon: the same `Engine` interface, answered over a socket."""

from __future__ import annotations

import itertools
import logging
import socket
import threading

from ..types import EngineInfo, InfillRequest, InfillResult
from . import Cancelled, CancelToken, EngineUnavailable
from .cancel import NEVER
from .protocol import (
    HEADER_SIZE,
    CancelCall,
    ErrorReply,
    InfillCall,
    InfoCall,
    InfoReply,
    ResultReply,
    body_length,
    frame,
    reply_decoder,
)

log = logging.getLogger(__name__)
CANCEL_GRACE = 5.0  # seconds a cancelled request may take to be confirmed


class _Pending:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.reply = None


class RemoteEngine:
    """Talks to `infill-lsp engine` on a Unix socket; reconnects on the next call after a failure."""

    def __init__(self, address: str, timeout: float = 10.0):
        self.address = address
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._pending: dict[int, _Pending] = {}
        reply = self._call(InfoCall(id=next(self._ids)), NEVER, timeout)
        assert isinstance(reply, InfoReply)
        self.info = EngineInfo(model=reply.info.model, backend=f"remote:{reply.info.backend}",
                               device=reply.info.device, dtype=reply.info.dtype)

    def _connect(self) -> socket.socket:
        with self._lock:
            if self._sock is not None:
                return self._sock
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.address)
            except OSError as exc:
                sock.close()
                raise EngineUnavailable(f"engine at {self.address} is unreachable: {exc}") from exc
            self._sock = sock
            threading.Thread(target=self._read_loop, args=(sock,), daemon=True,
                             name="infill-engine-reader").start()
            return sock

    def _read_loop(self, sock: socket.socket) -> None:
        try:
            with sock.makefile("rb") as stream:
                while True:
                    header = stream.read(HEADER_SIZE)
                    if len(header) < HEADER_SIZE:
                        break
                    body = stream.read(body_length(header))
                    reply = reply_decoder.decode(body)
                    pending = self._pending.pop(reply.id, None)
                    if pending is not None:
                        pending.reply = reply
                        pending.done.set()
        except Exception as exc:
            log.warning("engine connection lost: %s", exc)
        finally:
            self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        with self._lock:
            if self._sock is sock:
                self._sock = None
            pending, self._pending = self._pending, {}
        sock.close()
        for waiter in pending.values():
            waiter.done.set()  # reply stays None: unavailable

    def _send(self, sock: socket.socket, message) -> None:
        try:
            with self._lock:
                sock.sendall(frame(message))
        except OSError as exc:
            self._drop(sock)
            raise EngineUnavailable(f"engine at {self.address} went away: {exc}") from exc

    def _call(self, message, cancel: CancelToken, timeout: float | None):
        sock = self._connect()
        waiter = _Pending()
        self._pending[message.id] = waiter
        self._send(sock, message)
        cancel.on_cancel(lambda: self._send_quietly(sock, CancelCall(id=message.id)))
        waited, cancel_deadline = 0.0, None
        while not waiter.done.wait(0.25):
            waited += 0.25
            if cancel.cancelled and cancel_deadline is None:
                cancel_deadline = waited + CANCEL_GRACE  # a live daemon confirms within one step
            if cancel_deadline is not None and waited >= cancel_deadline:
                self._pending.pop(message.id, None)
                raise Cancelled()
            if timeout is not None and waited >= timeout:
                self._pending.pop(message.id, None)
                raise EngineUnavailable(f"engine at {self.address} did not answer in {timeout:.0f} s")
        if waiter.reply is None:
            raise EngineUnavailable(f"engine at {self.address} closed the connection")
        return waiter.reply

    def _send_quietly(self, sock: socket.socket, message) -> None:
        try:
            self._send(sock, message)
        except EngineUnavailable:
            pass

    def infill(self, request: InfillRequest, cancel: CancelToken = NEVER) -> InfillResult:
        reply = self._call(InfillCall(id=next(self._ids), request=request), cancel, None)
        if isinstance(reply, ErrorReply):
            if reply.cancelled:
                raise Cancelled()
            raise EngineUnavailable(f"engine error: {reply.message}")
        assert isinstance(reply, ResultReply)
        return reply.result

    def close(self) -> None:
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
