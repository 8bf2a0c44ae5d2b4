"""The resident engine: an owner-only Unix socket speaking HTTP, shared by clients, cancellable across it."""

import signal
import socket
import stat
import subprocess
import sys
import threading
import time

import httpx
import msgspec
import pytest

from infill_lsp.engine import CancelToken, Cancelled, EngineConfig, EngineUnavailable, load_engine
from infill_lsp.engine.daemon import prepare_socket_path
from infill_lsp.engine.http_backend import HttpEngine
from infill_lsp.engine.http_server import MAX_BODY
from infill_lsp.types import Budget, ContextChunk, InfillRequest

from conftest import TINY_MODEL, with_layout


def start_daemon(path, *extra, model=TINY_MODEL):
    proc = subprocess.Popen(
        [sys.executable, "-m", "infill_lsp", "engine", "--model", str(model), "--socket", str(path),
         "--max-steps", "1000000", *extra],  # requests of 100,000 steps hold the model thread until cancelled
        stderr=subprocess.PIPE, text=True,
    )
    for _ in range(1200):
        if path.exists():
            return proc
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read())
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the engine did not start")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    path = tmp_path_factory.mktemp("engine") / "sub" / "engine.sock"
    proc = start_daemon(path)
    yield path, proc
    proc.send_signal(signal.SIGINT)
    proc.wait(10)
    assert not path.exists()  # removed on the way out


def test_socket_and_directory_are_owner_only(daemon):
    path, _ = daemon
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_ISSOCK(path.stat().st_mode)


def test_two_clients_share_one_engine(daemon):
    path, _ = daemon
    a = load_engine(EngineConfig(address=str(path)))
    b = HttpEngine(f"unix:{path}")
    assert a.info.backend == "http:infill-lsp" and a.info.model == str(TINY_MODEL)
    request = InfillRequest(prefix="x = ", suffix="\n", budget=Budget(candidates=3, max_middle_tokens=6, steps=2), seed=4)
    results = {}
    threads = [threading.Thread(target=lambda name, e: results.__setitem__(name, e.infill(request)), args=(n, e))
               for n, e in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results["a"].candidates == results["b"].candidates and len(results["a"].candidates) == 3
    a.close(), b.close()


def test_the_engine_builds_its_checkpoints_own_prompt_across_the_socket(tmp_path):
    """A checkpoint declaring repository context and a suffix window answers over the socket as in
    process: the card says its layout (so "auto" turns context on, sized to its budget), and the
    engine gets the context chunk by chunk and the whole suffix window, not a decoded prompt."""
    model = with_layout(tmp_path / "model", {"name": "declared", "prefix_tokens": 1024, "suffix_head": 16,
                                             "suffix_window": 48, "repo_context": "path-comment",
                                             "repo_context_tokens": 96})
    path = tmp_path / "sock" / "engine.sock"
    proc = start_daemon(path, model=model)
    remote = HttpEngine(f"unix:{path}")
    try:
        local = load_engine(EngineConfig(model=str(model), device="cpu"))
        assert (remote.info.repo_context, remote.info.repo_context_tokens, remote.info.suffix_window) == \
            (local.info.repo_context, local.info.repo_context_tokens, local.info.suffix_window) == ("path-comment", 96, 48)
        context = (ContextChunk(path="pkg/util.py", text="def checksum(data):\n    return sum(data) % 256\n"),
                   ContextChunk(path="pkg/names.py", text="NAMES = ['a', 'b']\n"))
        suffix = "\n".join(f"line_{i} = checksum([{i}])" for i in range(40)) + "\n"
        request = InfillRequest(prefix="from pkg import util\n\ndef total(xs):\n    return ", suffix="\n" + suffix,
                                path="pkg/main.py", context=context, seed=7,
                                budget=Budget(candidates=3, max_middle_tokens=8, steps=3))
        here, there = local.infill(request), remote.infill(request)
        assert [(c.text, c.score) for c in there.candidates] == [(c.text, c.score) for c in here.candidates]
        assert len(here.candidates) == 3
        assert there.timings.context_chunks == here.timings.context_chunks == 2
        assert there.timings.context_tokens == here.timings.context_tokens > 0
        assert there.timings.prompt_tokens == here.timings.prompt_tokens
        # without the suffix window (only the canvas' 16-token head) the prompt would be shorter
        head_only = msgspec.structs.replace(request, suffix="\n" + suffix[:20])
        assert local.infill(head_only).timings.prompt_tokens < here.timings.prompt_tokens
    finally:
        remote.close()
        proc.send_signal(signal.SIGINT)
        proc.wait(10)


def metrics(path) -> dict[str, float]:
    """The daemon's /metrics counters, by name."""
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://engine") as client:
        lines = client.get("/metrics").text.splitlines()
    return {name: float(value) for name, _, value in (line.partition(" ") for line in lines)}


def test_cancel_crosses_the_socket(daemon):
    """The daemon itself stops the work, and says so in /metrics within a second of the cancel:
    well under the client's own time limits (a 5 s connect timeout, a 60 s read timeout), and
    something a client that merely stopped waiting could not produce."""
    path, _ = daemon
    engine = HttpEngine(str(path))
    before = metrics(path)
    token = CancelToken()
    threading.Timer(0.3, token.cancel).start()
    steps = 100_000  # the random model's rows never settle: only a cancel ends this before tomorrow
    with pytest.raises(Cancelled):
        engine.infill(InfillRequest(prefix="y = ", suffix="", budget=Budget(candidates=8, max_middle_tokens=64,
                                                                             steps=steps)), token)
    cancelled = time.monotonic()
    while True:
        after = metrics(path)
        if after.get("infill_engine_cancelled", 0) > before.get("infill_engine_cancelled", 0):
            break
        assert time.monotonic() - cancelled < 1.0, f"the daemon did not report the stop: {after}"
        time.sleep(0.02)
    reported = time.monotonic() - cancelled

    def grew(name):
        return after.get(name, 0) - before.get(name, 0)

    assert grew("infill_engine_cancelled") == 1 and grew("infill_engine_completed") == 0, after
    # it stopped between denoising steps, with almost the whole budget left
    run, skipped = grew("infill_cancelled_steps_run"), grew("infill_cancelled_steps_skipped")
    assert run >= 1 and skipped >= steps - 10_000 and run + skipped == steps, after
    assert 0 <= after["infill_cancel_stop_ms_last"] < 1000, after  # cancel noticed -> model thread free
    print(f"stop reported {reported * 1e3:.0f} ms after the cancel; daemon: {after['infill_cancel_stop_ms_last']:.1f} ms "
          f"from noticing to stopping, {run:.0f} steps run, {skipped:.0f} skipped")
    # and the model thread is free: the next request is answered at once
    started = time.perf_counter()
    assert engine.infill(InfillRequest(prefix="z", suffix="", budget=Budget(candidates=1, max_middle_tokens=2, steps=1))).candidates
    assert time.perf_counter() - started < 10
    engine.close()


def test_refuses_to_start_over_a_live_daemon(daemon):
    path, _ = daemon
    with pytest.raises(FileExistsError):
        prepare_socket_path(path)


def test_oversized_and_malformed_bodies_are_refused(daemon):
    path, _ = daemon
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://engine") as client:
        big = client.post("/v1/completions", content=b"x" * (MAX_BODY + 1), headers={"Content-Type": "application/json"})
        assert big.status_code == 413
        bad = client.post("/v1/completions", content=b"{not json", headers={"Content-Type": "application/json"})
        assert bad.status_code == 400 and "error" in bad.json()
        assert client.get("/health").status_code == 200


def test_stale_socket_is_replaced(tmp_path):
    path = tmp_path / "d" / "stale.sock"
    path.parent.mkdir()
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()  # bound, nobody listening
    prepare_socket_path(path)
    assert not path.exists()


def test_unreachable_engine_is_reported():
    with pytest.raises(EngineUnavailable, match="unreachable"):
        HttpEngine("/nonexistent/engine.sock")


def test_http_needs_an_api_key(tmp_path, monkeypatch):
    """Any user of the machine can reach a TCP port: `--http` without a key is refused before the
    model loads, and no socket is left behind."""
    monkeypatch.delenv("INFILL_ENGINE_API_KEY", raising=False)
    path = tmp_path / "e" / "engine.sock"
    run = subprocess.run([sys.executable, "-m", "infill_lsp", "engine", "--model", str(TINY_MODEL), "--socket",
                          str(path), "--http", "127.0.0.1:0"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "--http needs --api-key" in run.stderr, run.stderr
    assert not path.exists()


def test_connections_to_the_tcp_port_cannot_crowd_out_the_socket(tmp_path):
    """Without a key an outsider can still open connections to the TCP port: 300 that never send a
    request leave the owner's socket answering (each listener has its own limit), and the port
    closes them once their request head is overdue."""
    from infill_lsp.engine.daemon import HEADER_SECONDS

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path = tmp_path / "e" / "engine.sock"
    proc = start_daemon(path, "--http", f"127.0.0.1:{port}", "--api-key", "k" * 32)
    idle = []
    try:
        # One that answered a request and then sends half of the next head is closed too (uvicorn's own
        # keep-alive timer stops at the first byte).
        slow = socket.create_connection(("127.0.0.1", port), timeout=10)
        idle.append(slow)
        slow.sendall(b"GET /health HTTP/1.1\r\nHost: engine\r\n\r\n")
        assert slow.recv(4096).startswith(b"HTTP/1.1 200")
        slow.sendall(b"GET /v1/models HTTP/1.1\r\nHo")
        for _ in range(300):
            conn = socket.create_connection(("127.0.0.1", port), timeout=10)
            idle.append(conn)
        time.sleep(0.5)  # let the server accept them all
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://engine", timeout=10) as client:
            assert client.get("/v1/models").status_code == 200
        for conn in (slow, idle[1]):
            conn.settimeout(HEADER_SECONDS + 20)
            assert conn.recv(1) == b""  # closed by the server, not by our timeout (that would raise)
    finally:
        for conn in idle:
            conn.close()
        proc.send_signal(signal.SIGINT)
        proc.wait(10)


def test_the_socket_directory_must_be_a_private_real_directory(tmp_path):
    """A symbolic link as the socket's directory (another user's, in /tmp, could later point it at
    their own listener) and a directory others can write to (they could swap the socket) are
    refused; an existing private directory of the user's own keeps its mode (no chmod of $HOME)."""
    target = tmp_path / "target"
    target.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(PermissionError, match="symbolic link"):
        prepare_socket_path(link / "engine.sock")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(PermissionError, match="writable by other users"):
        prepare_socket_path(shared / "engine.sock")
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o755)
    prepare_socket_path(home / "engine.sock")
    assert stat.S_IMODE(home.stat().st_mode) == 0o755
    fresh = tmp_path / "new" / "dir"
    prepare_socket_path(fresh / "engine.sock")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700


def test_sigterm_stops_both_listeners_and_removes_the_socket(tmp_path):
    """systemd and `kill` stop it with SIGTERM: with the socket and the TCP port each served by its
    own server, one signal still stops both, exit status 0, and the socket goes."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path = tmp_path / "e" / "engine.sock"
    proc = start_daemon(path, "--http", f"127.0.0.1:{port}", "--api-key", "k" * 32)
    for _ in range(200):  # both servers up (the socket file exists before either serves)
        try:
            with httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://engine") as client:
                if client.get("/health").status_code == 200 and httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    assert not path.exists()
