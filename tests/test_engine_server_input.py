"""The resident engine's HTTP API against bad and hostile input, in process (Starlette's test client
over the real app and the tiny model): every such request gets a 4xx in OpenAI's error shape, or
a 500 in that shape for what no route expected, and the server goes on serving."""

import pytest
from starlette.testclient import TestClient

from infill_lsp.engine import EngineConfig, load_engine
from infill_lsp.engine.http_server import EngineService, build_app, split_fim

from conftest import TINY_MODEL


class Recording:
    """The engine, with the budgets it was asked for kept."""

    def __init__(self, engine):
        self.engine = engine
        self.budgets = []

    def infill(self, request, cancel=None):
        self.budgets.append(request.budget)
        return self.engine.infill(request, cancel) if cancel is not None else self.engine.infill(request)

    def __getattr__(self, name):
        return getattr(self.engine, name)


@pytest.fixture(scope="module")
def tiny():
    return load_engine(EngineConfig(model=str(TINY_MODEL), device="cpu"))


@pytest.fixture
def served(tiny):
    engine = Recording(tiny)
    service = EngineService(engine, served_steps=3)
    with TestClient(build_app(service), raise_server_exceptions=False) as client:
        yield client, engine, service
    service.close()


def read(model=str(TINY_MODEL), **extra):
    """A one-canvas read as the HTTP backend sends it: a free middle of 4, a pinned tail of 2."""
    xargs = {"diffusion_canvas_length": 6, "diffusion_seed_canvas": [5, 5, 5, 5, 7, 8],
             "diffusion_pinned": [4, 5], "diffusion_read_only": True, "diffusion_max_steps": 2}
    return {"model": model, "prompt": [2, 10, 11], "max_tokens": 4, "n": 1, "vllm_xargs": xargs, **extra}


def assert_error(response, status, *words):
    assert response.status_code == status, response.text
    message = response.json()["error"]["message"]
    assert all(word in message for word in words), message


def test_bad_input_gets_a_4xx_in_openais_shape_and_the_server_goes_on(served):
    client, _, _ = served
    nested = b"[" * 3000 + b"]" * 3000  # deeper than the JSON decoder recurses
    assert_error(client.post("/v1/completions", content=nested, headers={"Content-Type": "application/json"}),
                 400, "nested")
    assert_error(client.post("/v1/completions", json=read(stop_token_ids=5)), 400, "stop_token_ids")
    assert_error(client.post("/v1/completions", json=read(stop_token_ids=["x"])), 400, "stop_token_ids")
    for seed in (2**64, -(2**63) - 1, "7", 1.5):
        assert_error(client.post("/v1/completions", json=read(seed=seed)), 400, "seed")
    fim = {"prompt": "x = ", "suffix": "\n", "max_tokens": 4}
    for seed in (2**64, -(2**63) - 1):
        assert_error(client.post("/v1/completions", json={**fim, "seed": seed}), 400, "seed")
    for ignored in ("7", 1.5, True):  # FIM clients' stray seeds are ignored, as before
        assert client.post("/v1/completions", json={**fim, "seed": ignored}).status_code == 200
    assert_error(client.post("/v1/completions", json=read(prompt={"not": "ids"})), 400, "prompt")
    for seed in (2**64 - 1, -(2**63), 0):  # the whole range torch's generators take
        assert client.post("/v1/completions", json=read(seed=seed)).status_code == 200
    assert client.get("/health").status_code == 200


def test_a_step_cap_over_the_served_maximum_is_cut_to_it(served):
    """As vLLM clamps diffusion_max_steps to its max_denoising_steps: a client cannot hold the one
    model thread with a request of a million steps."""
    client, engine, _ = served
    body = read()
    body["vllm_xargs"]["diffusion_max_steps"] = 1_000_000
    assert client.post("/v1/completions", json=body).status_code == 200
    body["vllm_xargs"]["diffusion_max_steps"] = 2
    assert client.post("/v1/completions", json=body).status_code == 200
    assert [budget.steps for budget in engine.budgets] == [3, 2]


def test_what_no_route_expected_is_a_500_in_openais_shape(served, monkeypatch):
    client, _, service = served

    def broken(text, special):
        raise ValueError("a tokenizer bug")
    monkeypatch.setattr(service, "encode", broken)
    answer = client.post("/tokenize", json={"prompt": "x"})
    assert answer.status_code == 500 and answer.json()["error"]["message"] == "internal error: ValueError"
    assert client.get("/health").status_code == 200


def test_fim_prompts_templated_by_the_client_are_split_at_the_last_suffix_marker():
    assert split_fim("<fim_prefix>a = <fim_suffix>\nb<fim_middle>") == ("a = ", "\nb")
    assert split_fim("<|fim_prefix|>a<|fim_suffix|>b<|fim_middle|>") == ("a", "b")
    assert split_fim("<fim_prefix>a<|fim_suffix|>b<fim_middle>") == ("a", "b")  # spellings mixed, as before
    assert split_fim("<fim_prefix>a<fim_suffix>b<fim_suffix>c<fim_middle>") == ("a<fim_suffix>b", "c")
    assert split_fim("<fim_prefix><fim_suffix><fim_middle>") == ("", "")
    for plain in ("x = 1", "<fim_prefix>a<fim_middle>", "<fim_prefix>a<fim_suffix>b", "a<fim_suffix>b<fim_middle>",
                  "<fim_prefix><fim_middle>"):
        assert split_fim(plain) is None, plain


def test_a_prompt_of_many_markers_is_answered_not_stuck_on(served):
    """100,000 suffix markers and no middle marker: not a templated prompt, so a FIM request with an
    empty suffix (the regular expression this replaced backtracked for hours on it, holding the
    event loop: no health check, no cancel, no other client)."""
    client, _, _ = served
    prompt = "<fim_prefix>" + "<fim_suffix>" * 100_000
    assert split_fim(prompt) is None
    answer = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 4, "n": 1})
    assert answer.status_code == 200 and len(answer.json()["choices"]) == 1
