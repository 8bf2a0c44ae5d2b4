"""Many-holes training: the vectorised rows must be exactly what the engine computes at inference."""

import random

import numpy as np
import torch
from transformers import AutoTokenizer, DiffusionGemmaForBlockDiffusion

from infill_lsp.engine.canvas import build_canvas
from infill_lsp.train.corpus import Corpus, ManifestEntry
from infill_lsp.engine.denoise import vocabulary_head
from infill_lsp.train.holes import HoleSampler, _rows_cache, block_causal_mask, self_conditioning_input
from infill_lsp.train.shards import TokenData, is_heldout, read_heldout, write_shards

from conftest import ROOT, TINY_MODEL

SAMPLES = sorted((ROOT / "fixtures" / "samples").iterdir())


def _documents(tokenizer):
    return [np.asarray(tokenizer(p.read_text(), add_special_tokens=False)["input_ids"]) for p in SAMPLES]


def test_block_causal_rows_equal_one_inference_pass_per_hole():
    """Row k attends to the clean keys before its hole: the same logits as encoding that prompt alone."""
    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL)
    model = DiffusionGemmaForBlockDiffusion.from_pretrained(TINY_MODEL).eval()
    sampler = HoleSampler(tokenizer, sequence_tokens=100, holes_per_sequence=4)
    batch = sampler.sample(_documents(tokenizer)[:3], random.Random(0))
    assert batch.canvas.shape[0] >= 8  # precondition: several rows from several sequences
    length, width = batch.encoder_ids.shape[1], batch.canvas.shape[1]
    with torch.no_grad():
        encoded = model.model.encoder(input_ids=batch.encoder_ids, use_cache=True)
        mask = block_causal_mask(batch.row_start, length, width, model.dtype)
        hidden = model.model.decoder(
            decoder_input_ids=batch.canvas, past_key_values=_rows_cache(encoded.past_key_values, batch.row_sequence,
                                                                        length),
            decoder_attention_mask={"full_attention": mask, "sliding_attention": mask},
            decoder_position_ids=batch.row_start[:, None] + torch.arange(width)[None]).last_hidden_state
        vectorised = vocabulary_head(model, hidden)
        for row in range(batch.canvas.shape[0]):
            prompt = batch.encoder_ids[batch.row_sequence[row], :batch.row_start[row]][None]
            cache = model.model.encoder(input_ids=prompt, use_cache=True).past_key_values
            reference = model(decoder_input_ids=batch.canvas[row:row + 1], past_key_values=cache).logits[0]
            assert torch.allclose(vectorised[row], reference, atol=1e-4), row


def test_self_conditioning_input_is_what_transformers_builds_from_logits():
    """holes_loss builds the self-conditioning input itself (embeddings for clamped slots, zeros for rows
    not chosen, the product only on chosen free slots): the same decoder output and the same gradients
    as handing transformers the full (rows, width, V) logits and the row mask."""
    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL)
    model = DiffusionGemmaForBlockDiffusion.from_pretrained(TINY_MODEL).train()
    batch = HoleSampler(tokenizer, sequence_tokens=100, holes_per_sequence=4).sample(
        _documents(tokenizer)[:3], random.Random(2))
    rows, width = batch.canvas.shape
    vocab = model.config.text_config.vocab_size
    decoder = model.model.decoder
    generator = torch.Generator().manual_seed(0)
    chosen_rows = torch.rand(rows, generator=generator) < 0.5
    chosen_rows[0], chosen_rows[1] = True, False  # both kinds of row, whatever the draw
    logits = torch.randn((int((chosen_rows[:, None] & batch.free).sum()), vocab), generator=generator) * 3
    full = torch.full((rows, width, vocab), -1e4)  # what holes_loss handed transformers before
    full.scatter_(-1, batch.canvas[..., None], 0.0)
    full[chosen_rows[:, None] & batch.free] = logits
    length = batch.encoder_ids.shape[1]
    mask = block_causal_mask(batch.row_start, length, width, model.dtype)

    def run(**inputs):
        model.zero_grad()
        encoded = model.model.encoder(input_ids=batch.encoder_ids, use_cache=True)
        hidden = decoder(decoder_input_ids=batch.canvas,
                         past_key_values=_rows_cache(encoded.past_key_values, batch.row_sequence, length),
                         decoder_attention_mask={"full_attention": mask, "sliding_attention": mask},
                         decoder_position_ids=batch.row_start[:, None] + torch.arange(width)[None],
                         **inputs).last_hidden_state
        hidden.square().mean().backward()
        return hidden.detach(), decoder.embed_tokens.weight.grad.clone()

    expected, expected_grad = run(self_conditioning_logits=full, self_conditioning_mask=chosen_rows)
    soft = self_conditioning_input(decoder.embed_tokens, batch.canvas, chosen_rows, batch.free,
                                   torch.softmax(logits, -1))
    hook = decoder.self_conditioning.register_forward_pre_hook(lambda module, args: (args[0], soft))
    try:
        hidden, grad = run()
    finally:
        hook.remove()
    assert torch.allclose(hidden, expected, atol=1e-5)
    assert torch.allclose(grad, expected_grad, atol=1e-6, rtol=1e-4)
    assert grad.abs().sum() > 0


def test_rows_have_the_engine_canvas_layout():
    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL)
    sampler = HoleSampler(tokenizer, sequence_tokens=128, holes_per_sequence=16)
    documents = _documents(tokenizer)
    rng = random.Random(3)
    batch = sampler.sample(documents, rng)
    assert batch.canvas.shape[1] == 48 and batch.canvas.shape[0] > 50
    for row in range(batch.canvas.shape[0]):
        m = int(batch.free[row].sum())
        assert m in (4, 8, 16, 32)
        canvas = batch.canvas[row].tolist()
        end = canvas.index(tokenizer.eos_token_id)
        assert end < m and all(t == tokenizer.pad_token_id for t in canvas[end + 1:m])
        sequence = batch.encoder_ids[batch.row_sequence[row]].tolist()
        s = int(batch.row_start[row])
        assert 1 <= s <= len(sequence) and sequence[0] == tokenizer.bos_token_id
        # The clamped tail is exactly what build_canvas makes from the tokens after the hole.
        suffix = [t for t in canvas[m:] if t not in (tokenizer.eos_token_id, tokenizer.pad_token_id)]
        expected = build_canvas([m], suffix, 16, tokenizer.eos_token_id, tokenizer.pad_token_id, width=48)
        assert expected.known[0, m:].tolist() == canvas[m:]
        assert torch.equal(expected.free[0], batch.free[row])
    lengths = [canvas.index(tokenizer.eos_token_id) for canvas in batch.canvas.tolist()]
    assert min(lengths) <= 4 and max(lengths) >= 16  # short and long holes both occur


def test_shards_round_trip_and_hold_files_out(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL)
    paths = [f"/src/pkg{i}/file{i}.py" for i in range(300)]
    texts = [SAMPLES[i % len(SAMPLES)].read_text() + f"\n# {i}\n" for i in range(300)]  # no exact duplicates
    corpus = Corpus(texts=texts, manifest=[ManifestEntry("fixtures", "0", "Apache-2.0", 300, 1)],
                    languages=["python"] * 300, paths=paths)
    manifest = write_shards(corpus, tokenizer, tmp_path)
    held = [p for p in paths if is_heldout(p)]
    assert held and manifest["heldout_files"] == len(held) == len(read_heldout(tmp_path))
    data = TokenData(tmp_path)
    expected = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t, p in zip(texts, paths)
                   if not is_heldout(p))
    assert data.total_tokens == expected
    drawn = data.draw(random.Random(0), 5)
    assert len(drawn) == 5 and all(d.tokens.dtype == np.uint16 and not d.chunks for d in drawn)
    assert AutoTokenizer.from_pretrained(tmp_path).vocab_size == tokenizer.vocab_size


def test_fused_vocabulary_loss_is_the_head_and_cross_entropy():
    """The chunked soft-capped cross-entropy gives vocabulary_head + F.cross_entropy's value and gradients
    (rows not a multiple of the chunk, with and without soft-capping, a scaled loss)."""
    import torch.nn.functional as F

    from infill_lsp.train.vocab_loss import softcapped_cross_entropy

    generator = torch.Generator().manual_seed(0)
    for cap in (30.0, None):
        hidden = torch.randn((37, 24), generator=generator).requires_grad_()
        weight = (torch.randn((300, 24), generator=generator) * 2).requires_grad_()
        targets = torch.randint(0, 300, (37,), generator=generator)
        logits = hidden @ weight.T
        if cap:
            logits = torch.tanh(logits / cap) * cap
        expected = F.cross_entropy(logits, targets)
        (expected * 3).backward()
        expected_grads = hidden.grad.clone(), weight.grad.clone()
        hidden.grad = weight.grad = None
        loss = softcapped_cross_entropy(hidden, weight, targets, cap, chunk=8)
        (loss * 3).backward()
        assert torch.allclose(loss, expected, atol=1e-6)
        assert torch.allclose(hidden.grad, expected_grads[0], atol=1e-6)
        assert torch.allclose(weight.grad, expected_grads[1], atol=1e-6)
        assert hidden.grad.abs().sum() > 0 and weight.grad.abs().sum() > 0


def test_holes_loss_is_the_unfused_objective(monkeypatch):
    """holes_loss with its two speed-ups (the fused vocabulary loss; sdpa on grouped key/value heads,
    no per-head copy) has the loss and gradients of the plain path: vocabulary_head + cross_entropy,
    transformers' own sdpa choice (the tiny model has 2 query heads on 1 key/value head)."""
    import contextlib

    import torch.nn.functional as F

    from infill_lsp.train import holes

    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL)
    model = DiffusionGemmaForBlockDiffusion.from_pretrained(TINY_MODEL).train()
    assert model.config.text_config.num_attention_heads > model.config.text_config.num_key_value_heads
    batch = HoleSampler(tokenizer, sequence_tokens=100, holes_per_sequence=4).sample(
        _documents(tokenizer)[:3], random.Random(5))
    seen_gqa = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen_gqa.append(bool(kwargs.get("enable_gqa")))
        return real_sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)

    def run():
        model.zero_grad()
        loss = holes.holes_loss(model, batch, torch.Generator().manual_seed(0), self_condition_p=0.5)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    loss, grads = run()
    fused_gqa = sum(seen_gqa)
    seen_gqa.clear()
    monkeypatch.setattr(holes, "grouped_query_sdpa", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(holes, "softcapped_cross_entropy", lambda hidden, weight, targets, cap: F.cross_entropy(
        vocabulary_head(model, hidden), targets))
    expected, expected_grads = run()
    assert fused_gqa > sum(seen_gqa), "the masked decoder passes run sdpa on grouped key/value heads"
    assert torch.allclose(loss, expected, atol=1e-5)
    assert len(grads) == len(expected_grads) > 10
    for grad, reference in zip(grads, expected_grads):
        assert torch.allclose(grad, reference, atol=1e-5, rtol=1e-3)


def test_language_weights_set_each_languages_share_of_sequences(tmp_path):
    """`[data] language_weights` (e.g. more Python): a factor on each language's default weight (the
    square root of its size); a language left out keeps 1; one the shards do not hold is an error, not
    a silent no-op."""
    import pytest

    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL)
    samples = [s for s in SAMPLES if s.suffix in (".py", ".js")]
    texts = [samples[i % len(samples)].read_text() + f"\n// {i}\n" for i in range(200)]  # no exact duplicates
    languages = ["python" if samples[i % len(samples)].suffix == ".py" else "javascript" for i in range(200)]
    corpus = Corpus(texts=texts, manifest=[ManifestEntry("fixtures", "0", "Apache-2.0", 200, 1)],
                    languages=languages, paths=[f"/src/pkg{i}/file{i}" for i in range(200)])
    write_shards(corpus, tokenizer, tmp_path)

    def python_share(weights):
        data = TokenData(tmp_path, weights)
        drawn = data.draw(random.Random(0), 2000)
        in_python = {id(d) for d in data.documents["python"]}
        return sum(id(d) in in_python for d in drawn) / len(drawn)

    data = TokenData(tmp_path)
    sizes = {lang: sum(len(d.tokens) for d in docs) ** 0.5 for lang, docs in data.documents.items()}
    default = sizes["python"] / (sizes["python"] + sizes["javascript"])
    assert 0.2 < default < 0.8 and abs(python_share(None) - default) < 0.03  # both drawn by default
    assert python_share({"javascript": 0.0}) == 1.0
    tripled = 3 * sizes["python"] / (3 * sizes["python"] + sizes["javascript"])
    assert abs(python_share({"python": 3.0}) - tripled) < 0.03
    with pytest.raises(ValueError, match="pyhton"):
        TokenData(tmp_path, {"pyhton": 2.0})


def test_exact_duplicates_are_left_out_and_never_leak_into_the_held_out_check(tmp_path):
    """An npm package ships the same file under `lib/` and `lib/esm/`: one copy held out and one
    trained on put the held-out answer in the training data (9 of the 223 held-out files of this
    machine's corpus did). The held-out copy is kept and its training twins dropped; other repeats
    are kept once."""
    from infill_lsp.train.shards import duplicates

    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL)
    paths = [f"/src/pkg{i}/file{i}.py" for i in range(300)]
    held = [p for p in paths if is_heldout(p)]
    texts = [SAMPLES[i % len(SAMPLES)].read_text() + f"\n# file {i}\n" for i in range(300)]
    twin = paths.index(held[0])
    texts[-1] = texts[-2] = texts[twin]  # two training copies of a held-out file
    texts[0] = texts[1] = texts[2] = "x = 1\n" * 20  # a training file three times
    assert not is_heldout(paths[-1]) and not any(is_heldout(p) for p in paths[:3])
    assert duplicates(texts, [is_heldout(p) for p in paths]) == {len(paths) - 1, len(paths) - 2, 1, 2}

    corpus = Corpus(texts=texts, manifest=[ManifestEntry("fixtures", "0", "Apache-2.0", 300, 1)],
                    languages=["python"] * 300, paths=paths)
    manifest = write_shards(corpus, tokenizer, tmp_path)
    assert manifest["duplicates_dropped"] == 4 and manifest["heldout_files"] == len(held)
    assert texts[twin] in {r["text"] for r in read_heldout(tmp_path)}
    trained = [tokenizer.decode(d.tokens.tolist()) for d in TokenData(tmp_path).documents["python"]]
    assert texts[twin] not in trained and trained.count("x = 1\n" * 20) == 1
    assert len(trained) == 300 - len(held) - 4
