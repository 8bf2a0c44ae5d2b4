import torch

from infill_lsp.engine import CancelToken, Cancelled
from infill_lsp.engine.canvas import TokenHealer, build_canvas, middle_lengths
from infill_lsp.engine.denoise import DenoiseSettings, denoise


def test_middle_lengths_ladder_cycles_over_rows():
    assert middle_lengths(4, 32) == [32, 16, 8, 4]
    assert middle_lengths(8, 32) == [32, 16, 8, 4, 32, 16, 8, 4]
    assert middle_lengths(1, 32) == [32]
    assert middle_lengths(3, 5) == [5, 5, 5]
    assert middle_lengths(0, 0) == [1]


def test_canvas_rows_share_suffix_head_after_their_middle():
    suffix = [10, 11, 12]
    batch = build_canvas([4, 2], suffix, suffix_head=3, end_id=1, pad_id=0)
    assert batch.shape == (2, 7)
    # row 0: 4 free, then the suffix head, nothing else fits
    assert batch.clamped[0].tolist() == [False] * 4 + [True] * 3
    assert batch.known[0, 4:].tolist() == [10, 11, 12]
    # row 1: 2 free, the whole suffix, then the end marker and padding
    assert batch.clamped[1].tolist() == [False] * 2 + [True] * 5
    assert batch.known[1, 2:].tolist() == [10, 11, 12, 1, 0]
    assert torch.equal(batch.free, ~batch.clamped)


def test_canvas_at_end_of_file_clamps_end_marker_then_padding():
    batch = build_canvas([3], [], suffix_head=4, end_id=1, pad_id=0)
    assert batch.known[0, 3:].tolist() == [1, 0, 0, 0]


def test_canvas_width_is_the_longest_slot_plus_the_suffix_head_or_the_width_asked_for():
    # at least one clamped position after the longest slot: the end marker when there is no suffix
    for suffix_head, width in ((0, 5), (1, 5), (3, 7)):
        batch = build_canvas([4, 2], [10, 11, 12], suffix_head=suffix_head, end_id=1, pad_id=0)
        assert batch.shape == (2, width), suffix_head
        assert batch.clamped[0].tolist() == [False] * 4 + [True] * (width - 4)
    wide = build_canvas([4, 2], [10], suffix_head=1, end_id=1, pad_id=0, width=9)  # training's fixed width
    assert wide.shape == (2, 9) and wide.known[0, 4:].tolist() == [10, 1, 0, 0, 0]


def test_canvas_records_each_rows_slot_length():
    lengths = [8, 4, 2]
    batch = build_canvas(lengths, [10], suffix_head=1, end_id=1, pad_id=0)
    assert batch.lengths == [8, 4, 2] and batch.lengths is not lengths
    assert batch.free.sum(dim=1).tolist() == lengths


def test_token_healer_finds_every_token_with_the_prefix():
    texts = ["<pad>", "re", "ret", "return", "r", "x", "retina", "  "]
    healer = TokenHealer(texts)
    assert sorted(healer.ids_starting_with("ret").tolist()) == [2, 3, 6]
    assert healer.allowed_mask("re").nonzero().squeeze(-1).tolist() == [1, 2, 3, 6]
    assert healer.ids_starting_with("zzz").numel() == 0


def _run(engine, batch, steps=6, **kwargs):
    with torch.inference_mode():
        cache = engine.model.model.encoder(input_ids=torch.tensor([[2, 40, 41, 42]]), use_cache=True).past_key_values
        cache.batch_repeat_interleave(batch.shape[0])
    return denoise(engine.model, cache, batch, DenoiseSettings(steps=steps), **kwargs)


def test_clamped_tokens_survive_every_step(engine, monkeypatch):
    """Wrap the model so every canvas it is fed during denoising is checked."""
    batch = build_canvas([5, 3, 2], [100, 101, 102, 103], suffix_head=4, end_id=1, pad_id=0)
    seen = []
    model = engine.model.model  # the body the loop calls; the head then runs on free positions only
    original = model.forward

    def spy(*args, **kwargs):
        seen.append(kwargs["decoder_input_ids"].clone())
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "forward", spy)
    out = _run(engine, batch, steps=8, generator=torch.Generator().manual_seed(0))
    assert len(seen) == out.steps >= 1
    for canvas in [*seen, out.tokens]:
        assert torch.equal(canvas[batch.clamped], batch.known[batch.clamped])


def test_first_position_respects_token_healing(engine):
    batch = build_canvas([4, 4], [50], suffix_head=1, end_id=1, pad_id=0)
    allowed = torch.zeros(engine.model.config.text_config.vocab_size, dtype=torch.bool)
    allowed[[300, 301]] = True
    out = _run(engine, batch, first_token_allowed=allowed, generator=torch.Generator().manual_seed(1))
    assert set(out.tokens[:, 0].tolist()) <= {300, 301}


def test_banned_tokens_never_appear_in_the_middle(engine):
    batch = build_canvas([8, 8], [], suffix_head=2, end_id=1, pad_id=0)
    banned = torch.zeros(engine.model.config.text_config.vocab_size, dtype=torch.bool)
    banned[:256] = True
    out = _run(engine, batch, banned_tokens=banned, generator=torch.Generator().manual_seed(2))
    assert (out.tokens[batch.free] >= 256).all()


def test_seeded_denoising_is_reproducible(engine):
    batch = build_canvas([6, 3], [60, 61], suffix_head=2, end_id=1, pad_id=0)
    a = _run(engine, batch, generator=torch.Generator().manual_seed(7))
    b = _run(engine, batch, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.tokens, b.tokens)
    assert torch.allclose(a.token_logprobs, b.token_logprobs)
    assert (a.token_logprobs[batch.clamped] == 0).all()  # forced tokens are certain


def test_cancel_stops_between_steps(engine, monkeypatch):
    batch = build_canvas([4], [], suffix_head=1, end_id=1, pad_id=0)
    token = CancelToken()
    calls = []
    original = engine.model.model.forward

    def cancel_after_first(*args, **kwargs):
        calls.append(1)
        token.cancel()
        return original(*args, **kwargs)

    monkeypatch.setattr(engine.model.model, "forward", cancel_after_first)
    try:
        _run(engine, batch, steps=50, cancel=token)
    except Cancelled:
        pass
    else:
        raise AssertionError("denoise did not stop")
    assert len(calls) == 1


def test_linear_commit_accepts_a_growing_share_and_the_whole_slot_at_the_last_step():
    """A model too unsure for the entropy bound still gets its slot committed step by step, lowest
    entropy first; clamped positions are never accepted (they are not free)."""
    from infill_lsp.engine.denoise import DenoiseSettings, accepted_positions

    free = torch.tensor([[True] * 6 + [False] * 2, [True] * 3 + [False] * 5])
    entropy = torch.tensor([[5.0, 1.0, 4.0, 2.0, 6.0, 3.0, 0.0, 0.0], [9.0, 8.0, 7.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    plain = DenoiseSettings(steps=4)
    committing = DenoiseSettings(steps=4, linear_commit=True)
    # the bound alone: only the lowest-entropy token of each row (the sum before it is 0)
    assert accepted_positions(entropy, free, plain, 1).sum(-1).tolist() == [1, 1]
    assert accepted_positions(entropy, free, plain, 4).sum(-1).tolist() == [1, 1]
    # ceil(free * step / steps): 6 free -> 2, 3, 5, 6; 3 free -> 1, 2, 3, 3
    counts = [accepted_positions(entropy, free, committing, step).sum(-1).tolist() for step in (1, 2, 3, 4)]
    assert counts == [[2, 1], [3, 2], [5, 3], [6, 3]]
    second = accepted_positions(entropy, free, committing, 2)
    assert second[0].nonzero().flatten().tolist() == [1, 3, 5]  # entropies 1, 2, 3
    assert second[1].nonzero().flatten().tolist() == [1, 2]  # 8 and 7: the lowest two
    assert not (accepted_positions(entropy, free, committing, 4) & ~free).any()
