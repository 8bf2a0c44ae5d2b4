"""The suffix-window layout (`infill_layout.suffix_window`): prompt, cache reuse, training rows, fast path."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, DiffusionGemmaForBlockDiffusion

from infill_lsp.engine.denoise import vocabulary_head
from infill_lsp.engine.fast import FastEngine
from infill_lsp.engine.transformers_backend import PromptIds, TransformersEngine
from infill_lsp.train.holes import HoleSampler, holes_loss, row_keys
from infill_lsp.train.loop import TrainConfig, infill_layout, load_config
from infill_lsp.types import Budget, InfillRequest

from conftest import ROOT, TINY_MODEL, with_layout

WINDOW = 96  # more than CHECKPOINT_STEP: a window the checkpoint must not swallow
SOURCE = (ROOT / "infill_lsp" / "engine" / "canvas.py").read_text()
SHIPPED = ROOT / "infill_lsp" / "models" / "infill-small" / "config.json"



@pytest.fixture(scope="module")
def windowed_path(tmp_path_factory) -> Path:
    return with_layout(tmp_path_factory.mktemp("windowed") / "model",
                        {"name": "windowed", "prefix_tokens": 1024, "suffix_head": 16, "suffix_window": WINDOW})


@pytest.fixture(scope="module")
def windowed(windowed_path) -> TransformersEngine:
    return TransformersEngine(str(windowed_path), device="cpu")


def _lines_end(text: str) -> set[int]:
    return {i + 1 for i, c in enumerate(text) if c == "\n"}


def test_prompt_holds_a_separator_and_a_line_cut_suffix_window(windowed):
    prefix, suffix = SOURCE[:900], SOURCE[900:2400]  # the suffix runs far past the window
    prompt, healed, *_ = windowed._prepare(InfillRequest(prefix=prefix, suffix=suffix))
    plain, plain_healed = windowed._prompt(prefix)
    assert isinstance(prompt, PromptIds) and prompt.cacheable == len(plain) and healed == plain_healed
    assert prompt[:len(plain)] == plain  # [BOS] + prefix window, as today
    assert prompt[len(plain)] == windowed.end_id  # the separator: the end marker
    window = prompt[len(plain) + 1:]
    assert 0 < len(window) <= WINDOW
    text = windowed.tokenizer.decode(window)
    assert suffix.startswith(text) and len(text) in _lines_end(suffix)  # from the cursor, up to a line's end
    ids = windowed._encode_text(suffix)
    assert window == ids[:len(window)] and "\n" not in windowed.tokenizer.decode(ids[len(window):WINDOW])
    assert windowed.info.suffix_window == WINDOW


def test_a_short_suffix_is_kept_whole_and_an_empty_one_leaves_the_separator(windowed):
    prompt = windowed._prepare(InfillRequest(prefix="x = ", suffix="\nprint(x)"))[0]
    assert windowed.tokenizer.decode(prompt[prompt.cacheable + 1:]) == "\nprint(x)"  # end of file: no cut
    prompt = windowed._prepare(InfillRequest(prefix="x = ", suffix=""))[0]
    assert prompt[prompt.cacheable:] == [windowed.end_id]


def test_a_checkpoint_without_the_key_gets_todays_prompt(tmp_path):
    """infill-small's own layout (no suffix_window) on the tiny weights: the prompt is [BOS] + prefix window."""
    layout = json.loads(SHIPPED.read_text())["infill_layout"]
    assert "suffix_window" not in layout
    engine = TransformersEngine(str(with_layout(tmp_path / "shipped-layout", layout)), device="cpu")
    assert engine.suffix_window == 0 and engine.info.suffix_window == 0
    prefix = SOURCE[:700].rstrip(" \t")  # after spaces the cut is the file's own (test_engine.py)
    prompt, healed, *_ = engine._prepare(InfillRequest(prefix=prefix, suffix=SOURCE[len(prefix):2000]))
    ids = engine._encode_text(prefix)
    assert healed and type(prompt) is list and prompt == [engine.bos_id, *ids[:-1]]


def test_the_prefix_checkpoint_keeps_hitting_while_the_user_types(windowed):
    budget = Budget(candidates=2, max_middle_tokens=6, steps=2)
    prefix, suffix = SOURCE[:1500], SOURCE[1500:3000]
    while len(windowed._prompt(prefix)[0]) % 64 >= 56:  # room to type without crossing a checkpoint step
        prefix = prefix[:-1]
    windowed.infill(InfillRequest(prefix=prefix, suffix=suffix, budget=budget, seed=1))
    hits, misses = windowed.stats["prefix_cache_hits"], windowed.stats["prefix_cache_misses"]
    typed = []
    for extra in ("r", "res", "result"):
        typed.append(windowed.infill(InfillRequest(prefix=prefix + extra, suffix=suffix, budget=budget, seed=2)))
    assert windowed.stats["prefix_cache_hits"] == hits + 3 and windowed.stats["prefix_cache_misses"] == misses
    windowed._checkpoint = None  # a hit gives what encoding from scratch gives
    again = windowed.infill(InfillRequest(prefix=prefix + "result", suffix=suffix, budget=budget, seed=2))
    assert again.candidates == typed[-1].candidates


def test_fast_engine_answers_as_the_reference_with_the_layout(windowed, windowed_path):
    fast = FastEngine(str(windowed_path), device="cpu")
    assert fast.info.suffix_window == WINDOW
    for seed, (prefix, suffix) in enumerate([(SOURCE[:3000], SOURCE[3000:4000]), ("def f(x):\n    ret", "\n"),
                                             ("", "x = 1\n")]):
        request = InfillRequest(prefix=prefix, suffix=suffix, budget=Budget(candidates=4, max_middle_tokens=16,
                                                                            steps=6), seed=seed)
        a, b = windowed.infill(request), fast.infill(request)
        assert [c.text for c in a.candidates] == [c.text for c in b.candidates]
        assert all(abs(x.score - y.score) <= 1e-4 for x, y in zip(a.candidates, b.candidates))
        assert a.timings.prompt_tokens == b.timings.prompt_tokens


def _documents(tokenizer):
    samples = sorted((ROOT / "fixtures" / "samples").iterdir())
    return [np.asarray(tokenizer(p.read_text(), add_special_tokens=False)["input_ids"]) for p in samples]


def test_training_rows_equal_the_engine_on_each_hole_alone(windowed):
    """Row k's logits from the vectorised windowed pass = the engine encoding that hole's prompt
    ([BOS] + prefix + [SEP] + window, through `_encode`'s checkpoint split) and denoising its canvas."""
    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL)
    model = windowed.model
    sampler = HoleSampler(tokenizer, sequence_tokens=30, holes_per_sequence=4, suffix_window=WINDOW)
    batch = sampler.sample(_documents(tokenizer)[:3], random.Random(0))
    rows = batch.canvas.shape[0]
    lengths = batch.window_length.tolist()
    assert rows >= 8 and all(t == tokenizer.eos_token_id for t in batch.window[:, 0].tolist())
    assert min(lengths) < WINDOW + 1 and max(lengths) > 40  # windows cut at a line's end, and long ones
    for k in range(rows):  # each window ends with a newline (cut) or is the full budget / the document's end
        text = tokenizer.decode(batch.window[k, 1:lengths[k]].tolist())
        assert text.endswith("\n") or lengths[k] == WINDOW + 1 or not text.strip() or lengths[k] < 40
    with torch.no_grad():
        keys = row_keys(model, batch)
        hidden = model.model.decoder(decoder_input_ids=batch.canvas, past_key_values=keys.cache(),
                                     decoder_attention_mask=keys.masks(),
                                     decoder_position_ids=keys.positions).last_hidden_state
        vectorised = vocabulary_head(model, hidden)
        for k in range(rows):
            prefix = batch.encoder_ids[batch.row_sequence[k], :batch.row_start[k]].tolist()
            prompt = PromptIds(prefix + batch.window[k, :lengths[k]].tolist(), cacheable=len(prefix))
            cache = windowed._encode(prompt)
            reference = model(decoder_input_ids=batch.canvas[k:k + 1], past_key_values=cache).logits[0]
            assert torch.allclose(vectorised[k], reference, atol=1e-4), k


def test_the_windowed_loss_trains_the_encoder_through_the_window_pass():
    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL)
    model = DiffusionGemmaForBlockDiffusion.from_pretrained(TINY_MODEL)
    sampler = HoleSampler(tokenizer, sequence_tokens=40, holes_per_sequence=4, suffix_window=32)
    batch = sampler.sample(_documents(tokenizer)[:2], random.Random(1))
    loss = holes_loss(model, batch, torch.Generator().manual_seed(0), self_condition_p=0.5)
    loss.backward()
    assert torch.isfinite(loss) and model.model.encoder.language_model.embed_tokens.weight.grad is not None
    plain = HoleSampler(tokenizer, sequence_tokens=40, holes_per_sequence=4)
    assert plain.sample(_documents(tokenizer)[:2], random.Random(1)).window is None  # N = 0: today's batch


def test_the_layout_is_written_only_when_on_and_the_config_file_sets_it():
    assert "suffix_window" not in infill_layout(TrainConfig())
    config = load_config(ROOT / "infill_lsp" / "train" / "configs" / "suffix-window.toml")
    assert config.data.suffix_window > 0
    assert config.model.sliding_window > config.data.sequence_tokens + config.data.suffix_window + 1
    assert infill_layout(config)["suffix_window"] == config.data.suffix_window


def test_the_ablation_arms_differ_only_in_the_window_and_fit_the_shipped_model():
    """training/suffix-window-ablation: both arms fine-tune the shipped checkpoint, so their model
    shape is its own, and the only difference between them is the window."""
    import msgspec

    folder = ROOT / "training" / "suffix-window-ablation"
    plain, window = (load_config(folder / name) for name in ("no-window.toml", "window-64.toml"))
    assert plain.data.suffix_window == 0 and window.data.suffix_window == 64
    assert msgspec.structs.replace(window, data=msgspec.structs.replace(window.data, suffix_window=0)) == plain
    shipped = json.loads((ROOT / "infill_lsp" / "models" / "infill-small" / "config.json").read_text())["text_config"]
    assert (plain.model.hidden_size, plain.model.layers) == (shipped["hidden_size"], shipped["num_hidden_layers"])
    data = window.data
    assert data.sequence_tokens + data.repo_context_tokens + data.suffix_window + 1 <= shipped["sliding_window"]
