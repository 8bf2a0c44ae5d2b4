"""The resident engine: an owner-only Unix socket, shared by clients, cancellable across the socket."""

import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest

from infill_lsp.engine import CancelToken, Cancelled, EngineUnavailable
from infill_lsp.engine.daemon import prepare_socket_path
from infill_lsp.engine.protocol import FrameTooLarge, InfillCall, body_length, call_decoder, frame
from infill_lsp.engine.remote import RemoteEngine
from infill_lsp.types import Budget, InfillRequest

from conftest import TINY_MODEL


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    path = tmp_path_factory.mktemp("engine") / "sub" / "engine.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "infill_lsp", "engine", "--model", str(TINY_MODEL), "--socket", str(path)],
        stderr=subprocess.PIPE, text=True,
    )
    for _ in range(600):
        if path.exists():
            break
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read())
        time.sleep(0.05)
    yield path, proc
    proc.send_signal(signal.SIGINT)
    proc.wait(10)


def test_socket_and_directory_are_owner_only(daemon):
    path, _ = daemon
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_ISSOCK(path.stat().st_mode)


def test_two_clients_share_one_engine(daemon):
    path, _ = daemon
    a, b = RemoteEngine(str(path)), RemoteEngine(str(path))
    assert a.info.backend == "remote:transformers" and a.info.model == str(TINY_MODEL)
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


def test_cancel_crosses_the_socket(daemon):
    path, _ = daemon
    engine = RemoteEngine(str(path))
    token = CancelToken()
    threading.Timer(0.3, token.cancel).start()
    started = time.perf_counter()
    with pytest.raises(Cancelled):
        engine.infill(InfillRequest(prefix="y = ", suffix="", budget=Budget(candidates=8, max_middle_tokens=64, steps=100_000)), token)
    assert time.perf_counter() - started < 30  # stopped by the daemon, not run to the end of 100k steps
    # the connection stays usable
    assert engine.infill(InfillRequest(prefix="z", suffix="", budget=Budget(candidates=1, max_middle_tokens=2, steps=1))).candidates
    engine.close()


def test_refuses_to_start_over_a_live_daemon(daemon):
    path, _ = daemon
    with pytest.raises(FileExistsError):
        prepare_socket_path(path)


def test_stale_socket_is_replaced(tmp_path):
    path = tmp_path / "d" / "stale.sock"
    path.parent.mkdir()
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()  # bound, nobody listening
    prepare_socket_path(path)
    assert not path.exists()


def test_unreachable_engine_is_reported():
    with pytest.raises(EngineUnavailable):
        RemoteEngine("/nonexistent/engine.sock")


def test_frames_round_trip_and_oversized_frames_are_refused():
    message = InfillCall(id=7, request=InfillRequest(prefix="a", suffix="b"))
    data = frame(message)
    assert body_length(data[:4]) == len(data) - 4
    assert call_decoder.decode(data[4:]) == message
    with pytest.raises(FrameTooLarge):
        body_length((2**31).to_bytes(4, "big"))


def test_a_crashed_daemon_is_reported_and_the_client_recovers(tmp_path):
    path = tmp_path / "e" / "engine.sock"
    cmd = [sys.executable, "-m", "infill_lsp", "engine", "--model", str(TINY_MODEL), "--socket", str(path)]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    try:
        while not path.exists():
            assert proc.poll() is None
            time.sleep(0.05)
        engine = RemoteEngine(str(path))
        proc.kill()
        proc.wait(10)
        with pytest.raises(EngineUnavailable):
            engine.infill(InfillRequest(prefix="a", suffix="", budget=Budget(candidates=1, max_middle_tokens=2, steps=1)))
        proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)  # the stale socket is cleared on restart
        while True:
            try:
                result = engine.infill(InfillRequest(prefix="a", suffix="", budget=Budget(candidates=1, max_middle_tokens=2, steps=1)))
                break
            except EngineUnavailable:
                assert proc.poll() is None
                time.sleep(0.1)
        assert len(result.candidates) == 1
    finally:
        proc.kill()
        proc.wait(10)
