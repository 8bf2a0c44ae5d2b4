"""`infill-lsp bench --clients`: simulated editors typing against a real `infill-lsp engine` (tiny
model, temporary socket), and the engine's queue: first in, first out across connections, a
request cancelled while it queues never runs."""

import json
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from infill_lsp.engine.http_backend import HttpEngine
from infill_lsp.types import Budget, InfillRequest

from conftest import TINY_MODEL

ENDLESS = Budget(candidates=8, max_middle_tokens=64, steps=100_000)  # runs until cancelled
QUICK = Budget(candidates=1, max_middle_tokens=2, steps=1)


@pytest.fixture(scope="module")
def engine_socket(tmp_path_factory):
    path = tmp_path_factory.mktemp("load") / "run" / "engine.sock"
    proc = subprocess.Popen([sys.executable, "-m", "infill_lsp", "engine", "--model", str(TINY_MODEL),
                             "--socket", str(path), "--max-steps", "1000000"], stderr=subprocess.DEVNULL)
    for _ in range(1200):
        if path.exists():
            break
        assert proc.poll() is None, "the engine exited"
        time.sleep(0.05)
    else:
        proc.kill()
        raise RuntimeError("the engine did not start")
    yield path
    proc.send_signal(signal.SIGINT)
    proc.wait(10)


def counters(path) -> dict[str, int]:
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://engine") as client:
        text = client.get("/metrics").text
    return {name.removeprefix("infill_"): int(value) for name, value in (line.split() for line in text.splitlines())}


def wait_for(predicate, seconds=10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_the_load_bench_table(engine_socket, tmp_path):
    out = tmp_path / "load.json"
    run = subprocess.run([sys.executable, "-m", "infill_lsp", "bench", "--engine", str(engine_socket),
                          "--clients", "1,2", "--seconds", "6", "--keystroke-ms", "400", "--json", str(out)],
                         capture_output=True, text=True, timeout=120)  # slow typing: a loaded CI still completes
    assert run.returncode == 0, run.stdout + run.stderr
    assert "| N | sent | completed | cancelled | errors | p50 ms | p95 ms | req/s | worst client |" in run.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [row["clients"] for row in rows] == [1, 2]
    for row in rows:
        assert row["errors"] == 0, row["error_samples"]
        assert len(row["per_client_completed"]) == row["clients"]
        assert row["worst_client_completed"] >= 1  # no editor starved
        assert row["worst_client_completed"] == min(row["per_client_completed"])
        assert row["completed"] == sum(row["per_client_completed"])
        assert row["sent"] == row["completed"] + row["cancelled"] + row["errors"] + row["abandoned"]
        assert 0 < row["p50_ms"] <= row["p95_ms"]
        assert row["throughput"] == pytest.approx(row["completed"] / 6)
        assert f"| {row['clients']} | {row['sent']} | {row['completed']} | {row['cancelled']} | 0 |" in run.stdout


def test_load_mode_needs_an_engine():
    run = subprocess.run([sys.executable, "-m", "infill_lsp", "bench", "--clients", "1"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "--clients needs --engine" in run.stderr


def _occupy(path):
    """A request that runs until cancelled, holding the model thread; returns its cancel()."""
    from infill_lsp.engine import Cancelled, CancelToken

    engine, token = HttpEngine(str(path)), CancelToken()
    before = counters(path)

    def hold():
        try:
            engine.infill(InfillRequest(prefix="y = ", suffix="", budget=ENDLESS), token)
        except Cancelled:
            pass

    thread = threading.Thread(target=hold)
    thread.start()
    assert wait_for(lambda: counters(path).get("engine_started", 0) > before.get("engine_started", 0))

    def release():
        token.cancel()
        thread.join(10)
        engine.close()

    return release


def test_requests_from_several_connections_run_first_in_first_out(engine_socket):
    clients = [HttpEngine(str(engine_socket)) for _ in range(4)]  # one connection pool each, like editors
    finished: list[int] = []
    release = _occupy(engine_socket)
    try:
        threads = []
        for i, client in enumerate(clients):
            queued = counters(engine_socket)["requests"]
            request = InfillRequest(prefix=f"x{i} = ", suffix="", budget=QUICK, seed=i)
            thread = threading.Thread(target=lambda c=client, r=request, i=i: (c.infill(r), finished.append(i)))
            thread.start()
            threads.append(thread)
            assert wait_for(lambda: counters(engine_socket)["requests"] > queued)  # in the queue, in this order
    finally:
        release()
    for thread in threads:
        thread.join(30)
    assert finished == [0, 1, 2, 3]
    for client in clients:
        client.close()


def test_a_request_cancelled_while_it_queues_never_runs(engine_socket):
    from infill_lsp.engine import Cancelled, CancelToken

    client = HttpEngine(str(engine_socket))
    release = _occupy(engine_socket)
    try:
        before = counters(engine_socket)
        token = CancelToken()
        failed = []

        def queued():
            try:
                client.infill(InfillRequest(prefix="z = ", suffix="", budget=QUICK), token)
            except Cancelled:
                failed.append("cancelled")

        thread = threading.Thread(target=queued)
        thread.start()
        assert wait_for(lambda: counters(engine_socket)["requests"] > before["requests"])
        token.cancel()
        thread.join(10)
        assert failed == ["cancelled"]
        assert wait_for(lambda: counters(engine_socket).get("engine_dropped", 0) == before.get("engine_dropped", 0) + 1)
    finally:
        release()
    after = counters(engine_socket)
    # the held request was the only one that started; the dropped one never did
    assert after["engine_started"] == before["engine_started"]
    assert client.infill(InfillRequest(prefix="z = ", suffix="", budget=QUICK)).candidates  # the queue moves on
    client.close()
