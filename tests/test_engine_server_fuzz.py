"""The resident engine's HTTP API under generated requests (hypothesis): bodies that are nearly what
a client sends, with fields of the wrong type, out of range, missing or extra. Every answer is a
success or an error in OpenAI's shape with a 4xx status (a 499 when the client left); never a 500,
never a bare traceback, and the server answers /health after each."""

import json

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from infill_lsp.engine import EngineConfig, load_engine  # noqa: E402
from infill_lsp.engine.http_server import EngineService, build_app  # noqa: E402

from conftest import TINY_MODEL  # noqa: E402

# JSON values of any kind, small: what a confused client might put in any field
ANY = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False)
                   | st.text(max_size=20), lambda inner: st.lists(inner, max_size=4)
                   | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=8)
IDS = st.lists(st.integers(-5, 600), max_size=12)


# Valid requests as clients send them: a canvas read (what HttpEngine sends) and a FIM request.
READ = {"model": str(TINY_MODEL), "prompt": [2, 10, 11], "max_tokens": 4, "n": 2, "logprobs": 1, "seed": 1,
        "return_token_ids": True, "stop_token_ids": [1],
        "vllm_xargs": {"diffusion_canvas_length": 6, "diffusion_seed_canvas": [5, 5, 5, 5, 7, 8],
                       "diffusion_pinned": [4, 5], "diffusion_read_only": True, "diffusion_max_steps": 2,
                       "infill_lsp_request": {"suffix": "\n", "language": "python", "path": "a.py",
                                              "context": [{"path": "b.py", "text": "x = 1\n"}]}}}
FIM = {"model": str(TINY_MODEL), "prompt": "def f(x):\n    return ", "suffix": "\n", "max_tokens": 4, "n": 2,
       "logprobs": 1, "seed": 1, "language": "python", "path": "a.py", "stream": False}
# Values a field might get instead: anything at all, numbers at and past the edges, or nothing.
EDGES = st.sampled_from([0, -1, 1, 2**31, 2**63, 2**64, -(2**63) - 1, 10**9, 1.5, "", "x", [], {}, [[]], True, None])
VALUE = st.one_of(ANY, EDGES, IDS, st.just("<drop>"))


@st.composite
def mutated(draw, template):
    """The template with one to three fields (at the top or inside vllm_xargs / infill_lsp_request)
    replaced, dropped or added."""
    body = json.loads(json.dumps(template))
    for _ in range(draw(st.integers(1, 3))):
        places = [(body, key) for key in body]
        xargs = body.get("vllm_xargs")
        if isinstance(xargs, dict):
            places += [(xargs, key) for key in xargs]
            own = xargs.get("infill_lsp_request")
            if isinstance(own, dict):
                places += [(own, key) for key in own]
        places.append((body, draw(st.sampled_from(["suffix", "echo", "temperature", "min_p", "stream", "prompt"]))))
        target, key = draw(st.sampled_from(places))
        value = draw(VALUE)
        if value == "<drop>":
            target.pop(key, None)
        else:
            target[key] = value
    return body


COMPLETION = st.one_of(mutated(READ), mutated(FIM))
TOKENIZE = mutated({"prompt": "x = 1", "add_special_tokens": True, "return_token_strs": True})
DETOKENIZE = mutated({"tokens": [10, 11]})


@pytest.fixture(scope="module")
def client():
    engine = load_engine(EngineConfig(model=str(TINY_MODEL), device="cpu"))
    service = EngineService(engine, served_steps=2)
    with TestClient(build_app(service), raise_server_exceptions=False) as test_client:
        yield test_client
    service.close()


def _check(response):
    assert response.status_code < 500, (response.status_code, response.text[:300])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error["message"], str) and error["message"] and error["code"] == response.status_code
    elif response.headers["content-type"].startswith("application/json"):
        json.loads(response.text)


FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@settings(FUZZ, max_examples=400)
@given(body=COMPLETION)
@example(body={**READ, "stop_token_ids": 5})  # found by this test: a TypeError, a 500, before
@example(body={**FIM, "seed": -(2**63) - 1})  # an overflow in torch's generator, a 500, before
def test_generated_completions_get_an_answer_or_a_4xx_never_a_500(client, body):
    _check(client.post("/v1/completions", json=body))
    assert client.get("/health").status_code == 200


@settings(FUZZ, max_examples=100)
@given(route=st.sampled_from(["/tokenize", "/detokenize"]), data=st.data())
def test_generated_token_requests_get_an_answer_or_a_4xx(client, route, data):
    _check(client.post(route, json=data.draw(TOKENIZE if route == "/tokenize" else DETOKENIZE)))


@settings(FUZZ, max_examples=60)
@given(raw=st.one_of(st.binary(max_size=80), st.text(max_size=80).map(str.encode),
                     ANY.map(lambda v: json.dumps(v).encode())))
def test_bodies_that_are_not_a_json_object_are_a_400(client, raw):
    for route in ("/v1/completions", "/tokenize", "/detokenize"):
        response = client.post(route, content=raw, headers={"Content-Type": "application/json"})
        _check(response)
