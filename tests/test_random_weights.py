"""Random weights for the real architecture: tied as the checkpoint is, a tokenizer of the real size,
and `infill-lsp bench --random-weights` running the engine's own path on a tiny config of the same shape."""

from __future__ import annotations

import json
import re

import pytest
import torch
from transformers import DiffusionGemmaForBlockDiffusion

from infill_lsp.cli import main
from infill_lsp.engine import random_weights as rw
from infill_lsp.types import Budget, InfillRequest


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """The synthetic tokenizer is cached under XDG_CACHE_HOME: keep the tests' copies out of $HOME."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_the_real_config_is_the_26b_a4b_architecture():
    config = rw.load_config("diffusiongemma-26B-A4B-it")
    text = config.text_config
    assert (text.num_hidden_layers, text.hidden_size, text.num_experts, text.top_k_experts) == (30, 2816, 128, 8)
    assert text.vocab_size == 262144 and config.canvas_length == 256 and text.sliding_window == 1024
    assert text.layer_types.count("full_attention") == 5 and text.layer_types[5] == "full_attention"
    full, sliding = text.per_layer_config[5], text.per_layer_config[0]
    assert (full.head_dim, full.num_key_value_heads) == (512, 2)
    assert (sliding.head_dim, sliding.num_key_value_heads) == (256, 8)
    # 25.25B unique text parameters, as measured on an H100 (shared encoder/decoder counted once)
    assert abs(rw.meta_parameter_count(config) / 1e9 - 25.25) < 0.01


def test_layers_option_keeps_the_shapes():
    text = rw.load_config("diffusiongemma-26B-A4B-it", layers=6).text_config
    assert text.num_hidden_layers == 6 and text.layer_types[-1] == "full_attention"
    assert text.per_layer_config[5].head_dim == 512 and text.hidden_size == 2816


@pytest.fixture(scope="module")
def tiny_config():
    return rw.load_config("tiny-random")


def test_random_model_is_tied_and_has_the_checkpoint_buffers(tiny_config):
    model = rw.build_random_model(tiny_config, seed=0)
    rw.check_tied(model)
    assert model.lm_head.weight is model.model.decoder.embed_tokens.weight
    assert all(not p.is_meta for p in model.parameters()) and all(not b.is_meta for b in model.buffers())
    normal = DiffusionGemmaForBlockDiffusion(tiny_config)
    text_params = sum(p.numel() for n, p in normal.named_parameters() if ".vision_tower." not in n
                      and ".embed_vision." not in n)
    assert rw.parameter_count(model) == text_params
    expected = dict(normal.named_buffers())
    for name, buffer in model.named_buffers():  # rotary frequencies, embedding scale, layer scalars
        torch.testing.assert_close(buffer, expected[name], rtol=0, atol=0)
    again = rw.build_random_model(tiny_config, seed=0)
    assert torch.equal(again.model.decoder.layers[0].experts.down_proj, model.model.decoder.layers[0].experts.down_proj)


def test_random_model_in_bf16(tiny_config):
    model = rw.build_random_model(tiny_config, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    rw.check_tied(model)


def test_synthetic_tokenizer_has_the_exact_size_and_inert_padding(tmp_path):
    texts = [p.read_text() for p in sorted((rw.CONFIGS.parent.parent / "fixtures" / "samples").iterdir())]
    tokenizer = rw.synthetic_tokenizer(20_000, texts)
    assert len(tokenizer) == 20_000
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id) == (0, 1, 2)
    learned = rw.learned_tokens(tokenizer)
    assert 256 < learned < 20_000
    code = "".join(texts) + "\nfor item in values:\n    total += item  # émoji ✓\n"
    ids = tokenizer(code, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == code  # byte-level: everything round-trips
    produced = tokenizer.convert_ids_to_tokens(sorted(set(ids)))
    assert not any(re.search(r"[A-Za-z]\u0120", t) for t in produced)  # inert merges never fire
    assert any((tmp_path / "cache" / "infill-lsp" / "tokenizers").iterdir())  # cached
    assert len(rw.synthetic_tokenizer(20_000, texts)) == 20_000  # from the cache


@pytest.mark.parametrize("fast", [False, True], ids=["reference", "fast"])
def test_random_weights_engine_serves_requests(fast):
    engine = rw.random_weights_engine("tiny-random", fast=fast, device="cpu", prefix_tokens=256)
    assert engine.info.model.startswith(rw.PREFIX)
    assert len(engine.tokenizer) == engine.model.config.text_config.vocab_size == 2048
    result = engine.infill(InfillRequest(prefix="def total(values):\n    ret", suffix="\n",
                                         budget=Budget(candidates=4, max_middle_tokens=8, steps=3), seed=0))
    assert result.timings.steps == 3 and result.timings.prompt_tokens > 1
    if fast:
        request = InfillRequest(prefix="import os\n" * 40, suffix="\n", seed=3,
                                budget=Budget(candidates=4, max_middle_tokens=16, steps=4))
        reference, fast_out, batch = engine.compare(request)
        assert torch.equal(reference.tokens, fast_out.tokens)
        assert engine.step_agreement(request)["agree"] == engine.step_agreement(request)["total"]


def test_bench_random_weights_runs_the_grid(tmp_path, capsys):
    out = tmp_path / "arch.json"
    code = main(["bench", "--random-weights", "tiny-random", "--compare", "--device", "cpu",
                 "--prompt-tokens", "128", "--middles", "8", "--step-counts", "2", "--candidates", "1,4",
                 "--repeat", "1", "--starts", "1", "--agreement", "1", "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "2,048 entries" in printed and "engine starts" in printed and "fast vs reference" in printed
    report = json.loads(out.read_text())
    assert {r["path"] for r in report["grid"]} == {"fast", "reference"}
    assert {r["candidates"] for r in report["grid"]} == {1, 4}
    assert report["starts"][0]["seconds"] > 0
    assert report["agreement"]["final_token_agreement"] == 1.0
