"""Faults around the server, driven as an editor drives it (stdio): the engine daemon killed or
frozen mid-request, weights damaged or gone, a disk that takes no writes. Each time the editor
gets an answer (empty) and a status with the reason, never a hang or a dead server, and
suggestions come back by themselves once the cause is gone."""

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from lsprotocol import types

from lsp_harness import TINY_MODEL, Editor

PLAIN = "file:///tmp/faults.txt"
QUICK = {"invokedSteps": 2, "maxTokens": 4, "invokedCandidates": 2, "seed": 0}


def start_daemon(path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "infill_lsp", "engine", "--model", str(TINY_MODEL),
                             "--socket", str(path)], stderr=subprocess.DEVNULL)


async def wait_listening(path, daemon: subprocess.Popen, timeout: float = 120) -> None:
    """Until the daemon accepts connections (a killed daemon leaves its socket file behind)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert daemon.poll() is None, "the engine daemon exited"
        try:
            with socket.socket(socket.AF_UNIX) as probe:
                probe.connect(str(path))
                return
        except OSError:
            await asyncio.sleep(0.05)
    raise TimeoutError("the engine daemon never listened")


async def first_items(ed: Editor, uri: str, line: int, column: int, within: float) -> float:
    """Seconds until a completion there has items; fails after `within` seconds."""
    start = time.monotonic()
    while time.monotonic() - start < within:
        if (await asyncio.wait_for(ed.complete(uri, line, column), within)).items:
            return time.monotonic() - start
        await asyncio.sleep(0.1)
    raise AssertionError(f"no suggestion within {within} s")


async def test_daemon_killed_mid_request_then_restarted(tmp_path):
    sock = tmp_path / "run" / "engine.sock"
    daemon = start_daemon(sock)
    ed = Editor()
    try:
        await wait_listening(sock, daemon)
        # a long request, so the kill lands while the daemon is denoising it
        await ed.start("--engine", str(sock), init_options={**QUICK, "invokedSteps": 256, "maxTokens": 64,
                                                            "invokedCandidates": 32})
        assert (await ed.wait_ready())["engineReady"]
        ed.open(PLAIN, "hello ", "plaintext")
        request = asyncio.ensure_future(ed.complete(PLAIN, 0, 6))
        await asyncio.sleep(0.5)
        assert not request.done(), "precondition: the request is still running in the daemon"
        daemon.kill()
        killed = time.monotonic()
        result = await asyncio.wait_for(request, 10)
        assert time.monotonic() - killed <= 1.0
        assert not result.items
        assert ed.statuses[-1]["state"] == "error" and "closed the connection" in ed.statuses[-1]["message"]
        daemon.wait(10)

        ed.client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"infill": QUICK}))
        daemon = start_daemon(sock)  # the same address; the editor is not restarted
        await wait_listening(sock, daemon)
        assert await first_items(ed, PLAIN, 0, 6, within=5) <= 5
        assert ed.statuses[-1]["state"] == "idle"
        assert ed.client._server.returncode is None
    finally:
        daemon.kill()
        await ed.close()


async def test_daemon_that_stops_answering_times_out(tmp_path):
    sock = tmp_path / "run" / "engine.sock"
    daemon = start_daemon(sock)
    ed = Editor()
    try:
        await wait_listening(sock, daemon)
        await ed.start("--engine", str(sock), init_options={**QUICK, "engineTimeout": 2})
        assert (await ed.wait_ready())["engineReady"]
        ed.open(PLAIN, "hello ", "plaintext")
        assert (await ed.complete(PLAIN, 0, 6)).items
        daemon.send_signal(signal.SIGSTOP)  # alive, connected, silent
        start = time.monotonic()
        result = await asyncio.wait_for(ed.complete(PLAIN, 0, 6), 20)
        assert not result.items and 1.5 <= time.monotonic() - start <= 6
        assert ed.statuses[-1]["state"] == "error"
        assert "did not answer within 2 s" in ed.statuses[-1]["message"]
        assert (await asyncio.wait_for(ed.stats(), 5))["requests"] >= 2  # the server itself still answers
        daemon.send_signal(signal.SIGCONT)
        assert await first_items(ed, PLAIN, 0, 6, within=10) <= 10
    finally:
        daemon.send_signal(signal.SIGCONT)
        daemon.kill()
        await ed.close()


@pytest.mark.parametrize("damage", ["truncated", "missing"])
async def test_damaged_weights_give_a_clear_error_at_load(tmp_path, damage):
    model = tmp_path / "model"
    shutil.copytree(TINY_MODEL, model)
    weights = model / "model.safetensors"
    if damage == "truncated":  # a copy that stopped half way
        os.truncate(weights, weights.stat().st_size // 2)
    else:
        weights.unlink()
    ed = Editor()
    try:
        await ed.start("--model", str(model))
        stats = await ed.wait_ready()
        expected = "damaged or incomplete" if damage == "truncated" else "not a complete checkpoint"
        assert stats["engineError"] and expected in stats["engineError"], stats
        assert ed.statuses[-1]["state"] == "error" and expected in ed.statuses[-1]["message"]
        assert not any("Traceback" in line for line in ed.logs)
        ed.open(PLAIN, "hello ", "plaintext")
        assert not (await ed.complete(PLAIN, 0, 6)).items
    finally:
        assert await ed.close() == 0


async def test_model_directory_removed_while_serving(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(TINY_MODEL, model)
    ed = Editor()
    try:
        await ed.start("--model", str(model), init_options=QUICK)
        assert (await ed.wait_ready())["engineReady"]
        shutil.rmtree(model)  # the weights are in memory: serving goes on
        ed.open(PLAIN, "hello ", "plaintext")
        assert (await ed.complete(PLAIN, 0, 6)).items
    finally:
        assert await ed.close() == 0


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
async def test_a_disk_that_takes_no_writes(tmp_path):
    """stderr (the log) on /dev/full: every write fails with ENOSPC; every cache and runtime
    directory unwritable. The server keeps serving; it writes nothing else."""
    unwritable = "/dev/full/cannot-be-a-directory"
    env = {"XDG_CACHE_HOME": unwritable, "XDG_RUNTIME_DIR": unwritable, "TMPDIR": unwritable,
           "HF_HOME": unwritable, "TORCHINDUCTOR_CACHE_DIR": unwritable, "MPLCONFIGDIR": unwritable}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the server inherits them (start_io has no env argument of its own)
    ed = Editor()
    try:
        command = [sys.executable, "-m", "infill_lsp", "--log-level", "DEBUG", "serve", "--model", str(TINY_MODEL)]
        await ed.client.start_io("sh", "-c", 'exec "$@" 2>/dev/full', "sh", *command)
        await ed.client.initialize_async(types.InitializeParams(capabilities=types.ClientCapabilities(),
                                                                initialization_options=QUICK))
        ed.client.initialized(types.InitializedParams())
        stats = await ed.wait_ready()
        assert stats["engineReady"], stats["engineError"]
        ed.open(PLAIN, "hello ", "plaintext")
        for _ in range(3):
            assert (await ed.complete(PLAIN, 0, 6)).items
        assert ed.client._server.returncode is None
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        assert await ed.close() == 0
