"""The HTTP engine backend end to end against the real resident engine (tiny model), and its
requests against vLLM's own request model and DiffusionGemma checks."""

import os
import random
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

from infill_lsp.engine import CancelToken, Cancelled, EngineUnavailable
from infill_lsp.engine.http_backend import HttpEngine, ServerFacts, build_requests, middle_lengths
from infill_lsp.engine.openai_wire import validate_diffusion_xargs
from infill_lsp.types import Budget, InfillRequest

from conftest import TINY_MODEL

KEY = "test-token-123"
SHORT = Budget(candidates=1, max_middle_tokens=2, steps=1)
ENDLESS = Budget(candidates=8, max_middle_tokens=64, steps=100_000)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_engine(path, *extra):
    proc = subprocess.Popen([sys.executable, "-m", "infill_lsp", "engine", "--model", str(TINY_MODEL),
                             "--socket", str(path), "--max-steps", "1000000", *extra],
                            stderr=subprocess.DEVNULL)  # requests of ENDLESS steps hold the model thread
    for _ in range(1200):
        if path.exists():
            return proc
        assert proc.poll() is None, "the engine exited"
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the engine did not start")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = tmp_path_factory.mktemp("http") / "run" / "engine.sock"
    port = free_port()
    proc = start_engine(path, "--http", f"127.0.0.1:{port}", "--api-key", KEY)
    for _ in range(200):  # the TCP listener opens with the socket; make sure it answers
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)
    yield path, f"http://127.0.0.1:{port}"
    proc.send_signal(signal.SIGINT)
    proc.wait(10)


def counters(path) -> dict[str, int]:
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://engine") as client:
        text = client.get("/metrics").text
    return {name.removeprefix("infill_"): int(value) for name, value in (line.split() for line in text.splitlines())}


def wait_for(predicate, seconds=10.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_socket_is_0600_in_a_0700_directory(server):
    path, _ = server
    assert stat.S_ISSOCK(path.stat().st_mode)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_a_completion_over_the_socket(server):
    path, _ = server
    engine = HttpEngine(str(path))
    assert engine.info.model == str(TINY_MODEL) and engine.facts.own and engine.facts.vocab_size == 512
    request = InfillRequest(prefix="def f(x):\n    return", suffix="\n", budget=Budget(candidates=4, max_middle_tokens=8, steps=2), seed=1)
    result = engine.infill(request)
    assert len(result.candidates) == 4 and all(-50 < c.score <= 0 for c in result.candidates)
    assert engine.infill(request).candidates == result.candidates  # the seed crosses the wire
    engine.close()


def test_bearer_token_is_required_on_http(server):
    _, url = server
    assert httpx.get(f"{url}/v1/models").status_code == 401
    assert httpx.get(f"{url}/health").status_code == 200
    with pytest.raises(EngineUnavailable, match="401"):
        HttpEngine(url, api_key="wrong")
    with pytest.raises(EngineUnavailable, match="401"):
        HttpEngine(url, api_key="")
    engine = HttpEngine(url, api_key=KEY)
    assert engine.infill(InfillRequest(prefix="a", suffix="", budget=SHORT)).candidates
    engine.close()


def test_a_key_read_with_its_line_ending_still_works(server):
    """A key copied from a CRLF `.env` file ends in a carriage return, which no HTTP header may carry."""
    _, url = server
    HttpEngine(url, api_key=KEY + "\r\n").close()
    HttpEngine(url, api_key=f" {KEY} ").close()


def test_a_key_a_header_cannot_carry_is_refused_without_echoing_it(server):
    _, url = server
    threads = {t.ident for t in threading.enumerate()}
    for key in ("clé-secrète-42", "two words-secret-42", "line\nbreak-secret-42"):
        with pytest.raises(EngineUnavailable) as refused:
            HttpEngine(url, api_key=key)
        assert key not in str(refused.value) and "secr" not in str(refused.value) and "header" in str(refused.value)
    assert not [t for t in threading.enumerate() if t.ident not in threads and t.name == "infill-http"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to give a socket away")
def test_a_socket_of_another_user_is_not_used(tmp_path):
    path = tmp_path / "theirs.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(1)
    try:
        os.chown(path, 12345, -1)
        with pytest.raises(EngineUnavailable, match="belongs to another user"):
            HttpEngine(str(path))
    finally:
        listener.close()


def test_tls_follows_the_scheme(server):
    _, url = server
    with pytest.raises(EngineUnavailable):  # https to a plain-HTTP port: the TLS handshake fails, reported
        HttpEngine(url.replace("http://", "https://"), api_key=KEY, connect_timeout=2, read_timeout=2)


def test_the_key_comes_from_the_environment(server, monkeypatch):
    _, url = server
    monkeypatch.setenv("INFILL_ENGINE_API_KEY", KEY)
    HttpEngine(url).close()


def test_a_wrong_model_name_is_reported(server):
    path, url = server
    with pytest.raises(EngineUnavailable, match="serves .*not 'no-such-model'"):
        HttpEngine(str(path), model="no-such-model")
    answer = httpx.post(f"{url}/v1/completions", json={"model": "no-such-model", "prompt": "x"},
                        headers={"Authorization": f"Bearer {KEY}"})
    assert answer.status_code == 404 and "does not exist" in answer.json()["error"]["message"]


def test_cancelling_stops_the_engine_work(server):
    path, _ = server
    engine = HttpEngine(str(path))
    before = counters(path)
    token = CancelToken()
    threading.Timer(0.3, token.cancel).start()
    started = time.perf_counter()
    with pytest.raises(Cancelled):
        engine.infill(InfillRequest(prefix="y = ", suffix="", budget=ENDLESS), token)
    assert time.perf_counter() - started < 3
    assert wait_for(lambda: counters(path).get("engine_cancelled", 0) == before.get("engine_cancelled", 0) + 1)
    after = counters(path)
    assert after["disconnected"] == before.get("disconnected", 0) + 1
    assert after.get("engine_completed", 0) == before.get("engine_completed", 0)  # stopped, not run to the end
    engine.close()


def test_a_read_timeout_is_an_engine_error_and_stops_the_work(server):
    path, _ = server
    engine = HttpEngine(str(path), read_timeout=0.5)
    before = counters(path)
    started = time.perf_counter()
    with pytest.raises(EngineUnavailable, match="did not answer within 0.5 s"):
        engine.infill(InfillRequest(prefix="y = ", suffix="", budget=ENDLESS))
    assert time.perf_counter() - started < 3
    assert wait_for(lambda: counters(path).get("engine_cancelled", 0) == before.get("engine_cancelled", 0) + 1)
    engine.close()


def test_fim_requests_get_validated_ranked_candidates(server):
    _, url = server
    body = {"prompt": "def add(a, b):\n    return ", "suffix": "\n\nprint(add(1, 2))\n", "max_tokens": 8, "n": 3,
            "temperature": 0.2, "language": "python", "seed": 5}
    answer = httpx.post(f"{url}/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert answer.status_code == 200
    data = answer.json()
    assert data["object"] == "text_completion" and 1 <= len(data["choices"]) <= 3
    for choice in data["choices"]:
        if choice["text"]:
            compile(body["prompt"] + choice["text"] + body["suffix"], "<fim>", "exec")  # shown ones parse


def test_fim_clients_as_they_send(server):
    """Tabby's openai/completion (prompt + suffix, stream) and Continue's templated prompt (stream)."""
    _, url = server
    headers = {"Authorization": f"Bearer {KEY}"}
    tabby = {"model": str(TINY_MODEL), "prompt": "x = ", "suffix": "\n", "max_tokens": 8, "temperature": 0.1,
             "stream": True, "presence_penalty": 0.0}
    continue_ = {"model": str(TINY_MODEL), "prompt": "<fim_prefix>x = <fim_suffix>\n<fim_middle>", "max_tokens": 8,
                 "temperature": 0.01, "stop": ["\n\n"], "stream": True}
    for body in (tabby, continue_):
        answer = httpx.post(f"{url}/v1/completions", json=body, headers=headers, timeout=60)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
        events = [line.removeprefix("data: ") for line in answer.text.split("\n\n") if line]
        assert events[-1] == "[DONE]"
        chunk = msgspec.json.decode(events[0])
        assert chunk["choices"][0]["finish_reason"] == "stop" and "<fim" not in chunk["choices"][0]["text"]


def test_a_server_that_dies_mid_request(tmp_path):
    path = tmp_path / "e" / "engine.sock"
    proc = start_engine(path)
    try:
        engine = HttpEngine(str(path))
        errors = []

        def ask():
            try:
                engine.infill(InfillRequest(prefix="a", suffix="", budget=ENDLESS))
            except Exception as exc:  # noqa: BLE001 - what the caller sees is the point
                errors.append(exc)

        thread = threading.Thread(target=ask)
        thread.start()
        time.sleep(0.5)
        proc.kill()
        proc.wait(10)
        thread.join(10)
        assert not thread.is_alive(), "the client hung on a dead server"
        assert len(errors) == 1 and isinstance(errors[0], EngineUnavailable)
        with pytest.raises(EngineUnavailable):
            engine.infill(InfillRequest(prefix="a", suffix="", budget=SHORT))
        proc = start_engine(path)  # the stale socket is cleared on restart; the same client recovers
        assert wait_for(lambda: _answers(engine), 30)
        engine.close()
    finally:
        proc.kill()
        proc.wait(10)


def _answers(engine) -> bool:
    try:
        return bool(engine.infill(InfillRequest(prefix="a", suffix="", budget=SHORT)).candidates)
    except EngineUnavailable:
        return False


# -- servers that are not DiffusionGemma -------------------------------------------------------
@pytest.fixture
def fake_server(tmp_path):
    """A vLLM look-alike on a Unix socket whose /v1/completions does what the test says."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    behaviour = {}

    async def models(request):
        if behaviour.get("hang"):
            import asyncio
            await asyncio.sleep(30)
        return JSONResponse({"object": "list", "data": [{"id": "some/model", "object": "model", "owned_by": "vllm",
                                                         "max_model_len": 4096}]})

    async def tokenize(request):
        return JSONResponse({"count": 1, "max_model_len": 4096, "tokens": [7]})

    async def completions(request):
        return JSONResponse(*behaviour["completions"])

    app = Starlette(routes=[Route("/v1/models", models), Route("/tokenize", tokenize, methods=["POST"]),
                            Route("/v1/completions", completions, methods=["POST"])])
    path = tmp_path / "fake.sock"
    server = uvicorn.Server(uvicorn.Config(app, uds=str(path), log_level="error", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert wait_for(lambda: server.started)
    yield path, behaviour
    server.should_exit = True
    thread.join(10)


def test_a_model_that_is_not_a_diffusion_model_is_refused(fake_server):
    path, behaviour = fake_server
    choice = {"index": 0, "text": "x", "finish_reason": "length"}
    behaviour["completions"] = ({"id": "c", "object": "text_completion", "created": 0, "model": "some/model",
                                 "choices": [choice], "usage": {}},)
    with pytest.raises(EngineUnavailable, match="not a diffusion model"):
        HttpEngine(str(path))


def test_a_server_rejecting_the_arguments_is_refused_with_its_reason(fake_server):
    path, behaviour = fake_server
    behaviour["completions"] = ({"error": {"message": "unknown field vllm_xargs", "type": "BadRequestError", "code": 400}}, 400)
    with pytest.raises(EngineUnavailable, match="unknown field vllm_xargs"):
        HttpEngine(str(path))


def test_a_server_that_never_answers_times_out(fake_server):
    path, behaviour = fake_server
    behaviour["hang"] = True
    started = time.perf_counter()
    with pytest.raises(EngineUnavailable, match="did not answer"):
        HttpEngine(str(path), read_timeout=0.5)
    assert time.perf_counter() - started < 5


def test_nothing_listening_is_reported():
    with pytest.raises(EngineUnavailable, match="unreachable"):
        HttpEngine(f"http://127.0.0.1:{free_port()}", connect_timeout=2)


# -- the requests themselves ------------------------------------------------------------------
VLLM_FACTS = ServerFacts(model="google/diffusiongemma-26B-A4B-it", owned_by="vllm", max_model_len=8192,
                         vocab_size=262144, canvas_limit=64, bos=[2], end_id=1, pad_id=0)
FACT_VARIANTS = [VLLM_FACTS, msgspec.structs.replace(VLLM_FACTS, canvas_limit=20),  # a narrow served canvas
                 msgspec.structs.replace(VLLM_FACTS, canvas_limit=20, end_id=None, pad_id=None, bos=[])]  # no <eos>


def _bodies(facts=VLLM_FACTS, budget=Budget(candidates=8, max_middle_tokens=32, steps=16), suffix=list(range(100, 130))):
    request = InfillRequest(prefix="p", suffix="s", budget=budget)
    return build_requests(facts, request, list(range(10, 3000)), suffix, random.Random(0))


def test_requests_follow_the_engines_canvas_layout():
    import torch  # noqa: F401 - canvas.py needs it

    from infill_lsp.engine.canvas import build_canvas, middle_lengths as engine_lengths

    assert middle_lengths(8, 32) == engine_lengths(8, 32) and middle_lengths(3, 5) == engine_lengths(3, 5)
    bodies = _bodies()
    lengths = middle_lengths(8, 32)
    assert sorted((b["max_tokens"], b["n"]) for b in bodies) == sorted({(m, lengths.count(m)) for m in lengths})
    batch = build_canvas(lengths, list(range(100, 116)), 16, 1, 0)
    for body in bodies:
        m, xargs = body["max_tokens"], body["vllm_xargs"]
        row = lengths.index(m)
        assert xargs["diffusion_canvas_length"] == batch.shape[1] == 48
        assert xargs["diffusion_seed_canvas"][m:] == batch.known[row, m:].tolist()
        assert xargs["diffusion_pinned"] == batch.clamped[row].nonzero().flatten().tolist()
        assert body["prompt"] == [2] + list(range(10, 3000))[2048:]  # BOS, then a window starting on a step of 128
        assert "seed" not in body and "suffix" not in body and body["temperature"] == 1.0


def test_requests_pass_the_ported_diffusion_checks():
    for facts in FACT_VARIANTS:
        for body in _bodies(facts):
            assert validate_diffusion_xargs(body["vllm_xargs"], facts.canvas_limit, facts.vocab_size) is None
            assert body["vllm_xargs"]["diffusion_canvas_length"] <= facts.canvas_limit


def test_requests_pass_vllms_own_request_model_and_diffusion_checks():
    protocol = pytest.importorskip("vllm.entrypoints.openai.completion.protocol")
    from types import SimpleNamespace

    from vllm.utils.diffusion import validate_diffusion_sampling_params

    for facts in FACT_VARIANTS:
        for body in _bodies(facts):
            request = protocol.CompletionRequest.model_validate(body)
            assert not (set(body) - protocol.CompletionRequest.model_fields.keys())  # every field is vLLM's own
            params = request.to_sampling_params(body["max_tokens"], {})
            params._validate_diffusion(SimpleNamespace(is_diffusion=True))  # temperature 1, no seed
            validate_diffusion_sampling_params(params, canvas_length=facts.canvas_limit, vocab_size=facts.vocab_size)
            assert params.extra_args == body["vllm_xargs"] and params.n == body["n"]
            assert params.max_tokens == body["max_tokens"] and params.ignore_eos  # read-only: EOS ignored ...
            assert set(params.stop_token_ids) == {t for t in (facts.end_id, facts.pad_id) if t is not None}  # ... stops end it
            assert params.logprobs == 0


def test_the_ported_checks_answer_as_vllms_own():
    pytest.importorskip("vllm.entrypoints.openai.completion.protocol")
    from vllm.exceptions import VLLMValidationError
    from vllm.sampling_params import SamplingParams
    from vllm.utils.diffusion import validate_diffusion_sampling_params

    cases = [{}, {"diffusion_canvas_length": 0}, {"diffusion_canvas_length": 65}, {"diffusion_canvas_length": True},
             {"diffusion_canvas_length": 8, "diffusion_seed_canvas": [1] * 8}, {"diffusion_seed_canvas": [1] * 8},
             {"diffusion_seed_canvas": [1, 2**31]}, {"diffusion_seed_canvas": [1, "x"]}, {"diffusion_seed_canvas": 3},
             {"diffusion_canvas_length": 4, "diffusion_seed_canvas": [1] * 4, "diffusion_pinned": [0, 3]},
             {"diffusion_canvas_length": 4, "diffusion_seed_canvas": [1] * 4, "diffusion_pinned": [4]},
             {"diffusion_pinned": [1]}, {"diffusion_max_steps": 0}, {"diffusion_max_steps": 3},
             {"diffusion_read_only": 2}, {"diffusion_read_only": 1}, {"diffusion_read_only": True}]
    for extra in cases:
        try:
            validate_diffusion_sampling_params(SamplingParams(extra_args=dict(extra)), canvas_length=64, vocab_size=512)
            theirs = None
        except VLLMValidationError as exc:
            theirs = exc.args[0] if exc.args else str(exc)
        ours = validate_diffusion_xargs(extra, 64, 512)
        assert ours == theirs, extra


def test_the_engines_responses_have_vllms_shapes():
    pytest.importorskip("vllm.entrypoints.openai.completion.protocol")
    from vllm.entrypoints.openai.completion.protocol import CompletionResponse
    from vllm.entrypoints.serve.engine.protocol import ErrorResponse, ModelList
    from vllm.entrypoints.serve.tokenize.protocol import TokenizeResponse

    from infill_lsp.engine import openai_wire as wire

    choice = wire.CompletionChoice(index=0, text="x", finish_reason="stop", stop_reason=1, token_ids=[5, 1],
                                   logprobs=wire.CompletionLogProbs([0, 1], [-0.5, -0.1], ["x", ""], [{"x": -0.5}, {"": -0.1}]))
    samples = [(CompletionResponse, wire.CompletionResponse(model="m", choices=[choice], usage=wire.Usage(3, 2, 5))),
               (ModelList, wire.ModelList(data=[wire.ModelCard(id="m", owned_by="infill-lsp", max_model_len=9)])),
               (TokenizeResponse, wire.TokenizeResponse(count=1, max_model_len=9, tokens=[4])),
               (ErrorResponse, wire.ErrorResponse(wire.ErrorInfo(message="no", type="BadRequestError", code=400)))]
    for model, value in samples:
        parsed = model.model_validate_json(msgspec.json.encode(value))
        assert not parsed.model_extra, model  # no field vLLM does not have
    # and the backend reads vLLM's own response
    theirs = CompletionResponse.model_validate_json(msgspec.json.encode(samples[0][1])).model_dump_json()
    assert msgspec.json.decode(theirs.encode(), type=wire.CompletionResponse).choices[0].token_ids == [5, 1]
