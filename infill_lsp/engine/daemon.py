"""`infill-lsp engine`: one resident model shared by every `infill-lsp serve` on the machine.

It speaks HTTP: the subset of vLLM's OpenAI-compatible API that `HttpEngine` sends (see
`http_server`), so one client backend serves both this daemon and a vLLM server. It listens on
an owner-only Unix socket (directory 0700, socket 0600) and, with `--http HOST:PORT`, on TCP
too (127.0.0.1 unless told otherwise; `--api-key` makes TCP clients show a bearer token).
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


def serve(engine: Engine, path: Path, http: str | None = None, api_key: str | None = None) -> None:
    """Run until SIGINT/SIGTERM: the HTTP API on the socket (and on TCP with `http`)."""
    import uvicorn

    from .http_server import EngineService, build_app

    if http and not api_key and parse_http(http)[0] not in ("127.0.0.1", "localhost", "::1"):
        log.warning("--http %s without --api-key: anyone who can reach it can use the model", http)
    service = EngineService(engine)
    sockets = [bind_unix(path)]
    try:
        if http:
            sockets.append(bind_tcp(http))
        config = uvicorn.Config(build_app(service, api_key), lifespan="off", access_log=False, log_level="warning",
                                timeout_graceful_shutdown=3, limit_concurrency=256, timeout_keep_alive=30,
                                h11_max_incomplete_event_size=64 * 1024)
        where = f"{path}" + (f" and http://{sockets[1].getsockname()[0]}:{sockets[1].getsockname()[1]}" if http else "")
        log.info("engine listening on %s (%s)", where, engine.info.model)
        # uvicorn re-raises the signal it stopped on once it is done: SIGTERM then exits through here too.
        previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        try:
            uvicorn.Server(config).run(sockets=sockets)
        finally:
            signal.signal(signal.SIGTERM, previous)
    finally:
        for sock in sockets:
            sock.close()
        path.unlink(missing_ok=True)
        service.close()
