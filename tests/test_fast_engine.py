"""The fast engine (static-shape decoder pass, finished rows dropped) answers as the reference does."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from infill_lsp.engine.denoise import DenoiseSettings
from infill_lsp.engine.fast import FastEngine, StaticDecoder, row_bucket
from infill_lsp.engine.transformers_backend import TransformersEngine
from infill_lsp.types import Budget, InfillRequest

TINY = str(Path(__file__).resolve().parent.parent / "fixtures" / "tiny-diffusiongemma")
SOURCE = (Path(__file__).resolve().parent.parent / "infill_lsp" / "engine" / "canvas.py").read_text()


@pytest.fixture(scope="module")
def reference(engine):
    return engine  # conftest's TransformersEngine on the tiny fixture


@pytest.fixture(scope="module")
def fast():
    return FastEngine(TINY, device="cpu")


def same_answers(a, b, tolerance: float = 1e-4) -> None:
    assert [c.text for c in a.candidates] == [c.text for c in b.candidates]
    for x, y in zip(a.candidates, b.candidates):
        assert abs(x.score - y.score) <= tolerance
        assert x.tokens == y.tokens
    assert a.timings.steps == b.timings.steps
    assert a.timings.prompt_tokens == b.timings.prompt_tokens


REQUESTS = [
    # token healing inside a word, a short prompt
    InfillRequest(prefix="def f(x):\n    ret", suffix="\n\nprint(f(2))\n",
                  budget=Budget(candidates=4, max_middle_tokens=16, steps=8), seed=1),
    # a prompt far longer than the fixture's sliding window (128): both kinds of layer see different prefixes
    InfillRequest(prefix=SOURCE[:3000], suffix=SOURCE[3000:3400],
                  budget=Budget(candidates=3, max_middle_tokens=20, steps=6), seed=2),
    # end of file (the clamped tail is the end marker and padding), 8 rows, 16 steps
    InfillRequest(prefix=SOURCE[:700], suffix="", budget=Budget(candidates=8, max_middle_tokens=32, steps=16), seed=3),
    # an empty file
    InfillRequest(prefix="", suffix="x = 1\n", budget=Budget(candidates=1, max_middle_tokens=8, steps=4), seed=4),
    # rows beyond the largest bucket, a width that is not a multiple of 16
    InfillRequest(prefix=SOURCE[:1200], suffix=SOURCE[1200:1300],
                  budget=Budget(candidates=10, max_middle_tokens=12, steps=3), seed=5),
]


@pytest.fixture(scope="module")
def bucketed():
    """The static pass at the bucketed shapes graphs would use, run eagerly."""
    return FastEngine(TINY, device="cpu", exact_shapes=False)


@pytest.mark.parametrize("request_", REQUESTS, ids=["healing", "long-prompt", "eof", "empty", "wide-batch"])
def test_fast_path_gives_the_reference_candidates(reference, fast, bucketed, request_):
    expected = reference.infill(request_)
    same_answers(expected, fast.infill(request_))
    same_answers(expected, bucketed.infill(request_))


def test_static_shapes_come_from_buckets(bucketed):
    bucketed.static.bucket_trace.clear()
    bucketed.infill(REQUESTS[1])  # 3 rows, width 20 + 16 = 36
    rows, width, prefix = bucketed.static.bucket_trace[0]
    assert (rows, width) == (4, 48)
    assert prefix in bucketed.static.prefix_buckets()


def test_without_graphs_passes_run_at_the_request_s_own_shapes(fast):
    fast.static.bucket_trace.clear()
    result = fast.infill(REQUESTS[1])
    rows, width, prefix = fast.static.bucket_trace[0]
    assert (rows, width, prefix) == (3, 36, result.timings.prompt_tokens)
    assert row_bucket(1) == 1 and row_bucket(3) == 4 and row_bucket(5) == 8 and row_bucket(10) == 16


def test_info_and_capture_plan(fast):
    assert fast.info.backend == "transformers-fast"
    assert not fast.static.graphs_enabled  # CPU: the same static code, no graph capture
    shapes = fast.capture_shapes()
    assert {(r, w) for r, w, _ in shapes} == {(r, w) for r in (1, 4, 8) for w in (48, 80)}
    assert {p for _, _, p in shapes} == set(fast.static.prefix_buckets())


@pytest.fixture(scope="module")
def keeping():
    """Finished rows stay in the pass (and keep what they had), as in the reference loop."""
    seen = []
    engine = FastEngine(TINY, device="cpu", drop_finished=False,
                        progress=lambda message, percent: seen.append((message, percent)))
    engine.progress_seen = seen
    return engine


def test_progress_reaches_ready_in_order(keeping):
    seen = keeping.progress_seen
    percents = [p for _, p in seen if p is not None]  # measured: the weights' bytes read, then ready
    assert percents and percents == sorted(percents) and seen[-1] == ("ready", 100)
    assert sum(1 for message, _ in seen if message == "ready") == 1


def test_one_pass_matches_the_transformers_decoder(fast):
    """Teacher-forced: the same canvas and self-conditioning through both, all rows and a padded subset."""
    ids, _ = fast._prompt(SOURCE[:2100])
    cache = fast._encode(ids)
    fast.static.load_prefix(cache)
    rows, width = 8, 32
    vocab = fast.model.config.text_config.vocab_size
    generator = torch.Generator().manual_seed(0)
    canvas = torch.randint(0, vocab, (rows, width), generator=generator)
    conditioning = torch.randn(rows, width, vocab, generator=generator) * 3
    decoder = fast.model.model.decoder
    with torch.inference_mode():
        cache.batch_repeat_interleave(rows)
        expected = fast.model.model(decoder_input_ids=canvas, past_key_values=cache,
                                    self_conditioning_logits=conditioning).last_hidden_state
        soft = (torch.softmax(conditioning, -1) @ decoder.embed_tokens.weight) * decoder.embed_tokens.embed_scale
        torch.testing.assert_close(fast.static.step(canvas, soft, width), expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(fast.static.step(canvas[:3], soft[:3], width), expected[:3], atol=1e-4, rtol=1e-4)


def test_prefix_reuse_across_keystrokes_is_kept(reference, fast):
    before = fast.stats["prefix_cache_hits"]
    for typed in ("re", "ret", "retu"):
        request = InfillRequest(prefix=SOURCE[:2500] + typed, suffix=SOURCE[2500:2600],
                                budget=Budget(candidates=2, max_middle_tokens=8, steps=3), seed=7)
        same_answers(reference.infill(request), fast.infill(request))
    assert fast.stats["prefix_cache_hits"] >= before + 2


# Middles of one token: a row's argmax is often stable from one step to the next, so rows stop at
# different steps. The tiny random model is never confident, so these requests run with a stopping rule
# that needs stability only (any mean entropy counts as confident).
FINISHING = [InfillRequest(prefix=SOURCE[:500 + 150 * seed], suffix=SOURCE[2000:2200], seed=seed,
                           budget=Budget(candidates=8, max_middle_tokens=1, steps=12)) for seed in range(4)]
STABLE_IS_DONE = DenoiseSettings(confidence=1e9)


@contextmanager
def stopping_when_stable(*engines):
    saved = [e.denoise_settings for e in engines]
    for e in engines:
        e.denoise_settings = STABLE_IS_DONE
    try:
        yield
    finally:
        for e, settings in zip(engines, saved):
            e.denoise_settings = settings


def test_dropping_finished_rows_does_not_change_results(fast, keeping):
    before = fast.static.stats["rows_finished_early"]
    fast.static.bucket_trace.clear()
    keeping.static.bucket_trace.clear()
    with stopping_when_stable(fast, keeping):
        for request in FINISHING:
            reference, dropped, _ = fast.compare(request)
            kept = keeping.compare(request)[1]
            assert torch.equal(reference.tokens, dropped.tokens)
            assert torch.allclose(reference.token_logprobs, dropped.token_logprobs, atol=1e-4)
            assert torch.equal(kept.tokens, dropped.tokens)
            assert torch.allclose(kept.token_logprobs, dropped.token_logprobs, atol=1e-5)
            assert reference.steps == dropped.steps == kept.steps
    assert all(rows == 8 for rows, _, _ in keeping.static.bucket_trace)  # finished rows still computed
    assert any(rows < 8 for rows, _, _ in fast.static.bucket_trace), "no row finished early: nothing shown"
    assert fast.static.stats["rows_finished_early"] > before


def test_same_answers_through_the_infill_interface_when_rows_finish(reference, fast):
    with stopping_when_stable(reference, fast):
        for request in FINISHING[:2]:
            same_answers(reference.infill(request), fast.infill(request))


@pytest.mark.parametrize("request_", REQUESTS[:3], ids=["healing", "long-prompt", "eof"])
def test_fast_path_gives_the_reference_candidates_with_linear_commit(reference, fast, request_):
    """The acceptance schedule a small checkpoint may declare (infill_decoding) is the same in both loops."""
    saved = reference.denoise_settings, fast.denoise_settings
    reference.denoise_settings = fast.denoise_settings = DenoiseSettings(linear_commit=True, t_max=0.4, t_min=0.1)
    try:
        same_answers(reference.infill(request_), fast.infill(request_))
    finally:
        reference.denoise_settings, fast.denoise_settings = saved


@pytest.fixture(scope="module")
def emulated():
    """CUDA graphs' buffer handling (static inputs and outputs, captured at start and on first use) on a CPU."""
    return FastEngine(TINY, device="cpu", graphs="emulate", capture_middles=(16,))


def test_graph_buffer_handling_with_an_emulated_replay(reference, emulated):
    """The static inputs/outputs around captured passes (reused across requests and row counts)."""
    assert emulated.static.graphs_enabled
    assert emulated.static.stats["graphs_captured"] >= len(emulated.capture_shapes())
    for request in REQUESTS:
        same_answers(reference.infill(request), emulated.infill(request))
    with stopping_when_stable(reference, emulated):
        for request in FINISHING[:2]:
            same_answers(reference.infill(request), emulated.infill(request))
    assert emulated.static.stats["graphs_captured_late"] > 0  # widths not captured at start


def test_static_decoder_grows_its_prefix_buffers(fast):
    static = StaticDecoder(fast.model, device="cpu", prefix_capacity=64)
    ids, _ = fast._prompt(SOURCE[:1500])
    assert len(ids) > 64
    static.load_prefix(fast._encode(ids))
    assert static.prefix_capacity >= len(ids)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_on_cuda_fp32_matches_the_reference_and_bf16_graphs_match_the_eager_static_pass():
    reference = TransformersEngine(TINY, device="cuda", dtype="float32")
    fast = FastEngine(TINY, device="cuda", dtype="float32")
    assert not fast.static.graphs_enabled  # grouped_mm has a graph-safe kernel for bf16 only
    for request in REQUESTS:
        same_answers(reference.infill(request), fast.infill(request))
    graphs = FastEngine(TINY, device="cuda", dtype="bfloat16")
    eager = FastEngine(TINY, device="cuda", dtype="bfloat16", graphs="none")
    assert graphs.static.graphs_enabled and graphs.static.stats["graphs_captured"] > 0
    assert not eager.static.graphs_enabled
    for request in REQUESTS:
        with_graphs, without = graphs.compare(request)[1], eager.compare(request)[1]
        assert torch.equal(with_graphs.tokens, without.tokens)
        assert torch.allclose(with_graphs.token_logprobs, without.token_logprobs, atol=1e-3)


def test_a_failed_capture_falls_back_to_the_eager_static_pass(reference, emulated, monkeypatch):
    """(Runs last: it leaves the module's emulated engine without graphs.)"""

    def broken(*shape):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(emulated.static, "_capture", broken)
    emulated.static._graphs.clear()
    request = REQUESTS[0]
    same_answers(reference.infill(request), emulated.infill(request))
    assert not emulated.static.graphs_enabled
    assert "not permitted" in emulated.static.capture_error


def test_the_fast_setting_selects_the_fast_engine_through_load_engine():
    """`--fast` / the `fast` setting reach load_engine, and the answers are the reference's."""
    from infill_lsp.config import Settings, merge
    from infill_lsp.engine import load_engine
    from infill_lsp.engine.fast import FastEngine
    from infill_lsp.types import Budget, InfillRequest

    settings = merge(Settings(model=TINY, device="cpu"), {"fast": True})
    fast = load_engine(settings.engine_config())
    reference = load_engine(merge(Settings(model=TINY, device="cpu"), {"fast": False}).engine_config())
    assert isinstance(fast, FastEngine) and not isinstance(reference, FastEngine)
    assert isinstance(load_engine(Settings(model=TINY, device="cpu").engine_config()), FastEngine)  # a CPU's default
    request = InfillRequest(prefix="def f(x):\n    return", suffix="\n", seed=3,
                            budget=Budget(candidates=4, max_middle_tokens=16, steps=6))
    assert [c.text for c in fast.infill(request).candidates] == [c.text for c in reference.infill(request).candidates]


def test_a_fast_path_that_does_not_fit_the_transformers_version_falls_back_to_the_reference(monkeypatch, caplog):
    """A transformers release that renames a module's attribute breaks the fast path's forward at its
    warm-up: by default the server then serves with transformers' own forward (a warning, same answers);
    an explicit `fast: true` still fails loudly."""
    from infill_lsp.config import Settings, merge
    from infill_lsp.engine import fast as fast_module, load_engine

    def renamed(norm, x):
        raise AttributeError("'DiffusionGemmaRMSNorm' object has no attribute 'eps'")

    monkeypatch.setattr(fast_module, "rms_norm", renamed)
    with caplog.at_level("WARNING", logger="infill_lsp.engine"):
        engine = load_engine(Settings(model=TINY, device="cpu").engine_config())
    assert type(engine) is TransformersEngine
    assert "does not fit this transformers version" in caplog.text
    request = InfillRequest(prefix="def f(x):\n    return", suffix="\n", seed=3,
                            budget=Budget(candidates=2, max_middle_tokens=8, steps=4))
    assert engine.infill(request).candidates
    with pytest.raises(AttributeError):
        load_engine(merge(Settings(model=TINY, device="cpu"), {"fast": True}).engine_config())


def test_the_fused_norm_reads_epsilon_under_either_transformers_name():
    """transformers <= 5.24 calls it `eps`, 5.25 `variance_epsilon`: both give the module's own formula."""
    from infill_lsp.engine.fast import rms_norm

    x = torch.randn(3, 8)
    for name in ("eps", "variance_epsilon"):
        norm = torch.nn.Module()
        norm.with_scale, norm.weight = True, torch.nn.Parameter(torch.rand(8))
        setattr(norm, name, 0.5)
        expected = x * torch.pow(x.pow(2).mean(-1, keepdim=True) + 0.5, -0.5) * norm.weight
        torch.testing.assert_close(rms_norm(norm, x), expected)


def test_the_one_softmax_is_softmax_with_far_tokens_floored():
    """denoise.distribution floors exponents at EXP_FLOOR (a CPU's exp is slow where float32
    underflows): argmax, probabilities and entropy stay what a plain softmax gives."""
    from infill_lsp.engine.denoise import EXP_FLOOR, distribution, sample_inverse_cdf

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn((6, 512), generator=generator) * 40  # most entries hundreds below the top
    logits[0] = 0.0  # a flat row: nothing floored
    expected = torch.softmax(logits, -1)
    best, shifted, total, probs = distribution(logits.clone())
    assert (shifted.min(-1).values < EXP_FLOOR).sum() >= 5  # the floor is actually reached
    assert torch.equal(best, logits.argmax(-1))
    assert torch.allclose(probs, expected, rtol=1e-5, atol=1e-30)
    entropy = total.squeeze(-1).log() - (probs * shifted).sum(-1)
    reference = -(expected * torch.log_softmax(logits, -1)).nan_to_num(0.0).sum(-1)
    assert torch.allclose(entropy, reference, atol=1e-4)
    uniform = torch.rand((6, 1), generator=generator)
    assert torch.equal(sample_inverse_cdf(probs, uniform), sample_inverse_cdf(expected, uniform))


@pytest.mark.parametrize("vocab", [1024, 8192, 1000])
def test_the_two_level_argmax_picks_what_max_picks(vocab):
    """denoise.first_argmax (group maxima, then inside the first group holding the row's maximum)
    returns torch's index for every row, ties included: the first maximum."""
    from infill_lsp.engine.denoise import first_argmax

    generator = torch.Generator().manual_seed(1)
    values = torch.randn((9, vocab), generator=generator)
    values[1] = 0.0  # all tied: index 0
    values[2, [5, 700, vocab - 1]] = 50.0  # tied maxima in different groups: the first
    values[3, [130, 131]] = 50.0  # tied inside one group
    values[4, vocab - 1] = 50.0  # the last token
    values[5] = -1e4  # blocked everywhere (a BLOCKED bias) but one token
    values[5, 77] = -1e4 + 1
    assert torch.equal(first_argmax(values), values.max(-1).indices)
    assert first_argmax(values)[2] == 5 and first_argmax(values)[3] == 130


@pytest.mark.parametrize("declared", [None, 128])
def test_the_prefix_buffers_hold_a_prompt_with_repository_context(tmp_path, declared):
    """A full window plus as much repository context as the checkpoint takes (the real model's
    plain layout: up to the window again; a trained layout: its own cap) fits the buffers sized at
    start: no request reallocates them (on a GPU that would mean capturing again)."""
    from conftest import with_layout

    from infill_lsp.types import ContextChunk

    model = TINY
    if declared:
        model = str(with_layout(tmp_path / "model", {"repo_context": "path-comment", "repo_context_tokens": declared,
                                                     "prefix_tokens": 256}))
    engine = FastEngine(model, device="cpu", prefix_tokens=256)
    capacity = engine.static.prefix_capacity
    chunks = tuple(ContextChunk(path=f"pkg/m{i}.py", text=SOURCE[i * 40:(i + 1) * 40]) for i in range(60))
    request = InfillRequest(prefix=SOURCE[:4000], suffix="\n", context=chunks, path="pkg/main.py",
                            budget=Budget(candidates=2, max_middle_tokens=8, steps=2), seed=0)
    result = engine.infill(request)
    assert result.timings.context_tokens > (declared or 256) // 2  # the context did fill most of its budget
    window, _ = engine._prompt(request.prefix)
    assert result.timings.prompt_tokens == len(window) + result.timings.context_tokens
    assert engine.static.prefix_capacity == capacity


def test_the_last_unfinished_row_gets_at_most_straggler_steps_more_in_both_loops(reference, fast):
    """`straggler_steps` (a checkpoint's infill_decoding): once all rows but one are done, the request
    waits at most that many more steps; both loops stop at the same step with the same candidates."""
    cut = DenoiseSettings(confidence=1e9, straggler_steps=1)
    saved = reference.denoise_settings, fast.denoise_settings
    shortened = 0
    try:
        for request in FINISHING:
            with stopping_when_stable(reference):
                unlimited = reference.infill(request)
            reference.denoise_settings = fast.denoise_settings = cut
            limited = reference.infill(request)
            same_answers(limited, fast.infill(request))
            reference.denoise_settings, fast.denoise_settings = saved
            assert limited.timings.steps <= unlimited.timings.steps
            shortened += limited.timings.steps < unlimited.timings.steps
    finally:
        reference.denoise_settings, fast.denoise_settings = saved
    assert shortened, "no request had a straggler: nothing shown"


def test_one_row_is_never_a_straggler(reference):
    request = InfillRequest(prefix=SOURCE[:500], suffix=SOURCE[2000:2200], seed=0,
                            budget=Budget(candidates=1, max_middle_tokens=1, steps=12))
    saved = reference.denoise_settings
    try:
        reference.denoise_settings = STABLE_IS_DONE
        alone = reference.infill(request)
        reference.denoise_settings = DenoiseSettings(confidence=1e9, straggler_steps=1)
        assert reference.infill(request).timings.steps == alone.timings.steps
    finally:
        reference.denoise_settings = saved
