"""`infill-lsp engine`: one resident model shared by every `infill-lsp serve` on the machine.

It speaks HTTP: the subset of vLLM's OpenAI-compatible API that `HttpEngine` sends (see
`http_server`), so one client backend serves both this daemon and a vLLM server. It listens on
an owner-only Unix socket (directory 0700, socket 0600) and, with `--http HOST:PORT`, on TCP
too (127.0.0.1 unless told otherwise), where clients show the bearer token `--api-key` sets (any
user of the machine can reach a TCP port, so `--http` needs one). Each listener has its own
connection limit, so connections to the TCP port (which close when their next request's head has
not arrived within HEADER_SECONDS) cannot crowd out the owner's socket.
Requests from all clients queue for the single model worker thread; a client going away stops
its request between denoising steps.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import stat
from pathlib import Path

from . import Engine

log = logging.getLogger(__name__)


def default_socket_path() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) if runtime else Path("/tmp") / f"infill-lsp-{os.getuid()}"
    return base / "infill-lsp" / "engine.sock" if runtime else base / "engine.sock"


def prepare_socket_path(path: Path) -> None:
    """Make sure the socket's directory is ours and only ours, and clear a stale socket; refuse if a
    live daemon owns it.

    The directory must be a real directory (not a link another user could point elsewhere later),
    ours, and writable by nobody else (or they could swap the socket). One we create, or the
    default one, is made 0700; an existing one of the user's own (`--socket ~/engine.sock`) keeps
    its mode."""
    parent = path.parent
    created = False
    if not parent.is_symlink():
        try:
            parent.mkdir(parents=True, mode=0o700)
            created = True
        except FileExistsError:
            pass
    info = parent.lstat()
    if stat.S_ISLNK(info.st_mode):
        raise PermissionError(f"{parent} is a symbolic link: the engine's socket goes in a real directory")
    if not stat.S_ISDIR(info.st_mode):
        raise FileExistsError(f"{parent} is not a directory")
    if info.st_uid != os.getuid():
        raise PermissionError(f"{parent} belongs to another user")
    if created or parent == default_socket_path().parent:
        os.chmod(parent, 0o700)
    elif info.st_mode & 0o022:
        raise PermissionError(f"{parent} is writable by other users: they could replace the socket "
                              f"(chmod go-w {parent}, or another --socket)")
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


def bind_unix(path: Path) -> socket.socket:
    prepare_socket_path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the socket is born 0600: no window where others could connect
    try:
        sock.bind(str(path))
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.listen(128)
    sock.setblocking(False)
    return sock


def parse_http(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep:
        host, port = "", address
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"--http wants HOST:PORT or PORT, got {address!r}") from None
    return host.strip("[]") or "127.0.0.1", number


def bind_tcp(address: str) -> socket.socket:
    host, port = parse_http(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(0)


HEADER_SECONDS = 10.0  # a TCP connection must send each request's head within this of connecting or of its last answer


def _deadline_protocol():
    """uvicorn's h11 protocol, closing a connection whose next request head has not arrived within
    HEADER_SECONDS of connecting or of the last response (uvicorn's keep-alive timer stops at the
    first byte, so a partial head held a connection forever): otherwise connections that never
    finish a request hold the listener's slots."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadDeadline(H11Protocol):
        _head_deadline = None

        def _arm(self) -> None:
            if self._head_deadline is not None:
                self._head_deadline.cancel()
            # uvicorn makes a new cycle for each request head it reads: the same one at the deadline
            # means no head arrived since
            self._head_deadline = self.loop.call_later(HEADER_SECONDS, self._head_overdue, self.cycle)

        def _head_overdue(self, armed_with) -> None:
            idle = armed_with is None or armed_with.response_complete  # not a (pipelined) request still running
            if self.cycle is armed_with and idle and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc) -> None:
            if self._head_deadline is not None:
                self._head_deadline.cancel()
            super().connection_lost(exc)

    return HeadDeadline


def serve(engine: Engine, path: Path, http: str | None = None, api_key: str | None = None,
          max_steps: int | None = None) -> None:
    """Run until SIGINT/SIGTERM: the HTTP API on the socket (and on TCP with `http`, which needs
    `api_key`), one uvicorn server per listener over one app and one model queue."""
    import asyncio

    import uvicorn

    from .http_server import EngineService, build_app

    if http and not api_key:
        raise ValueError("--http needs --api-key (or INFILL_ENGINE_API_KEY): any user of this machine, and "
                         "anyone the port is reachable from, could use the model; the Unix socket needs none")
    service = EngineService(engine, **({"served_steps": max_steps} if max_steps else {}))
    app = build_app(service, api_key)
    # SIGTERM (systemd, kill) exits through the finally blocks below, from the moment the socket exists.
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        sockets = [bind_unix(path)]
        try:
            if http:
                sockets.append(bind_tcp(http))

            def config(**extra) -> uvicorn.Config:
                return uvicorn.Config(app, lifespan="off", access_log=False, log_level="warning",
                                      timeout_graceful_shutdown=3, limit_concurrency=256, timeout_keep_alive=30,
                                      h11_max_incomplete_event_size=64 * 1024, **extra)
            servers = [(uvicorn.Server(config(http="h11")), sockets[0])]
            if http:
                servers.append((uvicorn.Server(config(http=_deadline_protocol())), sockets[1]))
            tcp = f" and http://{sockets[1].getsockname()[0]}:{sockets[1].getsockname()[1]}" if http else ""
            log.info("engine listening on %s%s (%s)", path, tcp, engine.info.model)

            async def run_all() -> None:
                # Each server takes SIGINT/SIGTERM over and hands it back to the one before it on its
                # way out (uvicorn re-raises the signal it stopped on), so one signal stops them all;
                # the last re-raise reaches _exit_on_sigterm (SIGTERM) or Python's handler (SIGINT).
                await asyncio.gather(*(server.serve(sockets=[sock]) for server, sock in servers))

            asyncio.run(run_all())
        finally:
            for sock in sockets:
                sock.close()
            path.unlink(missing_ok=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
        service.close()
