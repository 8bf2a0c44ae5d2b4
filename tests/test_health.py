"""`infill/health`: the checks of `infill-lsp doctor`, answered by the running server (what Neovim's
:checkhealth infill and VS Code's "Infill: Show Health" show)."""

import asyncio
import time
from types import SimpleNamespace

from infill_lsp import __version__, doctor
from infill_lsp.config import Settings
from lsp_harness import Editor, _plain

PLAIN_URI = "file:///tmp/health.txt"


async def _health(editor: Editor) -> list[dict]:
    return _plain(await asyncio.wait_for(editor.client.protocol.send_request_async("infill/health", {}), 60))


async def test_health_over_stdio_reports_the_doctor_checks_and_the_served_engine():
    editor = Editor()
    try:
        result = await editor.start()
        assert result.server_info.name == "infill-lsp" and result.server_info.version == __version__
        await editor.wait_ready()
        checks = await _health(editor)
        assert all(set(c) == {"name", "state", "detail", "fix"} for c in checks), checks
        by_name = {c["name"]: c for c in checks}
        assert [c["name"] for c in checks][:2] == ["infill-lsp", "server"]
        assert by_name["infill-lsp"]["detail"].startswith(f"version {__version__}")
        assert by_name["server"]["state"] == "ok" and "serving" in by_name["server"]["detail"]
        assert by_name["model"]["state"] == "ok" and "parameters" in by_name["model"]["detail"]
        assert {"device", "engine", "grammars"} <= set(by_name)
        assert not [c for c in checks if c["state"] == "fail"], checks
        # suggestions still work while and after the checks ran
        editor.open(PLAIN_URI, "value = ", "plaintext")
        assert (await editor.complete(PLAIN_URI, 0, 8)).items
    finally:
        await editor.close()


async def test_health_with_an_unreachable_engine_fails_with_the_fix(tmp_path):
    editor = Editor()
    try:
        await editor.start("--engine", str(tmp_path / "nowhere.sock"))
        await editor.wait_ready()
        by_name = {c["name"]: c for c in await _health(editor)}
        assert by_name["server"]["state"] == "fail" and "unreachable" in by_name["server"]["detail"]
        assert by_name["engine"]["state"] == "fail" and by_name["engine"]["fix"]
        assert editor.client._server.returncode is None  # a failed check, not a failed server
    finally:
        await editor.close()


# -- server_health without a server process ---------------------------------------------------------

class _Server:
    """What server_health reads of an InfillServer."""

    def __init__(self, **holder):
        self.settings = Settings()
        self.holder = SimpleNamespace(**{"engine": None, "loading": None, "error": None, "config": None, **holder})


_server = _Server


async def test_a_check_that_raises_is_a_failed_check(monkeypatch):
    def broken(config):
        raise RuntimeError("boom")

    monkeypatch.setattr(doctor, "run_checks", broken)
    checks = await doctor.server_health(_server(loading=object()))
    assert [(c["name"], c["state"]) for c in checks] == [("doctor", "fail"), ("server", "warn")]
    assert "RuntimeError: boom" in checks[0]["detail"] and "still loading" in checks[1]["detail"]


async def test_a_check_that_hangs_times_out_and_the_loop_stays_free(monkeypatch):
    monkeypatch.setattr(doctor, "run_checks", lambda config: time.sleep(2) or [])
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    running = asyncio.ensure_future(ticker())
    started = time.monotonic()
    checks = await doctor.server_health(_server(), timeout=0.3)
    running.cancel()
    assert time.monotonic() - started < 1.5
    assert ticks >= 10  # the event loop ran meanwhile
    assert checks == [{"name": "doctor", "state": "fail", "detail": "the checks did not finish within 0.3 s",
                       "fix": "run `infill-lsp doctor` in a terminal to see which one hangs"}]


async def test_concurrent_requests_share_one_run(monkeypatch):
    runs = []

    def slow(config):
        runs.append(config)
        time.sleep(0.2)
        return [doctor.Check("infill-lsp", "ok", "version x")]

    monkeypatch.setattr(doctor, "run_checks", slow)
    server = _server(error="EngineUnavailable: gone")
    answers = await asyncio.gather(*(doctor.server_health(server) for _ in range(5)))
    assert len(runs) == 1
    assert all([c["name"] for c in a] == ["infill-lsp", "server"] for a in answers)
    assert answers[0][1]["state"] == "fail" and "gone" in answers[0][1]["detail"]

