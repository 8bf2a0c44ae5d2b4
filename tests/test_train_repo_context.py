"""Training with repository context (issue 14): corpus context, shards, sampler layout, checkpoint."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import msgspec
import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from infill_lsp import definitions
from infill_lsp.config import Settings
from infill_lsp.engine.transformers_backend import TransformersEngine
from infill_lsp.train import repo
from infill_lsp.train.corpus import Corpus, ManifestEntry
from infill_lsp.train.holes import HoleSampler
from infill_lsp.train.loop import (DataConfig, OptimConfig, TrainConfig, check_fits, hole_sampler, infill_layout,
                                  load_config, train)
from infill_lsp.train.shards import Document, TokenData, is_heldout, write_shards
from infill_lsp.train.workers import BatchWorkers, sample_batch
from infill_lsp.types import Budget, ContextChunk, InfillRequest

from conftest import ROOT, TINY_MODEL, with_layout

CHECKSUM = '''"""Checksums."""


def compute_checksum(payload, seed=0):
    total = seed
    for byte in payload:
        total = (total * 31 + byte) % 65521
    return total


class Banner:
    def __init__(self, width):
        self.width = width
'''
MAIN = '''from urllib.request import urlopen

from .checksum import compute_checksum, Banner


def local_helper(data):
    """Sum of two checksums."""
    return compute_checksum(data) + compute_checksum(data, seed=1)


def shout(text):
    return text.upper() + "!"


def main():
    banner = Banner(40)
    print(banner.width, local_helper(b"abc"), shout("hi"), far_away(), urlopen("x"), urlopen("y"))
'''
HELPERS = '''def local_helper(data):
    return len(data)


def shout(text):
    return text
'''
ELSEWHERE = '''def far_away():
    return 42
'''
NET = '''def urlopen(url):
    return url
'''
FILES = {"pkg/checksum.py": CHECKSUM, "pkg/main.py": MAIN, "pkg/helpers.py": HELPERS, "pkg/net.py": NET,
         "other/far.py": ELSEWHERE}


def _corpus(files: dict[str, str] = FILES, root: str = "/src") -> Corpus:
    paths = [f"{root}/{name}" for name in files]
    assert not any(is_heldout(p) for p in paths)  # precondition: every file lends and is trained on
    return Corpus(texts=list(files.values()), manifest=[ManifestEntry("fixture", "0", "MIT", len(files), 1)],
                  languages=["python"] * len(files), paths=paths, roots=[root] * len(files))


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(TINY_MODEL)


def _decode(tokenizer, ids) -> str:
    return tokenizer.backend_tokenizer.decode(list(ids), skip_special_tokens=False)


def _main_choice(tokenizer, budget: int = 256) -> repo.Choice | None:
    corpus = _corpus()
    return repo.choose(corpus, tokenizer, budget).get(corpus.paths.index("/src/pkg/main.py"))


def test_context_holds_the_siblings_definitions_of_the_names_the_file_uses(tokenizer):
    choice = _main_choice(tokenizer)
    text = "".join(_decode(tokenizer, ids) for ids in choice.chunks) + _decode(tokenizer, choice.header)
    # the most used name (compute_checksum: 3 uses) last, next to the prefix; then the document's own header
    assert choice.names == ["Banner", "compute_checksum"]
    assert text.startswith("# path: pkg/checksum.py\nclass Banner:\n")
    assert text.endswith("# path: pkg/checksum.py\ndef compute_checksum(payload, seed=0):\n" + CHECKSUM.split(
        "def compute_checksum(payload, seed=0):\n")[1].split("\n\n\n")[0] + "\n\n# path: pkg/main.py\n")
    # never what the file defines itself (helpers.py defines local_helper and shout too), nor another
    # package's, nor a sibling's name the file imports from elsewhere (net.py's urlopen)
    assert "local_helper" not in text and "def shout" not in text and "far_away" not in text
    assert "urlopen" not in text
    # checksum.py uses nothing a sibling defines: no context at all
    corpus = _corpus()
    assert corpus.paths.index("/src/pkg/checksum.py") not in repo.choose(corpus, tokenizer, 256)


def test_the_budget_holds_and_drops_the_less_used_name_first(tokenizer):
    full = _main_choice(tokenizer)
    last = len(full.chunks[-1]) + len(full.header)
    small = _main_choice(tokenizer, budget=last + 2)
    assert small.tokens <= last + 2 and small.names == ["compute_checksum"] and small.chunks == full.chunks[-1:]
    assert _main_choice(tokenizer, budget=len(full.header) + 3) is None  # no definition fits: no context
    corpus = _corpus()  # a lender that is held out lends nothing
    lenders = {i for i, p in enumerate(corpus.paths) if not p.endswith("checksum.py")}
    assert corpus.paths.index("/src/pkg/main.py") not in repo.choose(corpus, tokenizer, 256, lenders)


def test_anchors_are_the_tokens_where_the_context_names_are_used(tokenizer):
    choice = _main_choice(tokenizer)
    ids, context = next(repo.tokenize([MAIN], tokenizer, [choice]))
    assert ids == tokenizer(MAIN, add_special_tokens=False)["input_ids"]  # the document's ids as without context
    words = [_decode(tokenizer, ids[a:a + 4]).strip() for a in context.anchors]
    assert len(context.anchors) == 5  # 3 x compute_checksum, 2 x Banner (the import line counts)
    for word, chunk in zip(words, context.anchor_chunks):
        assert word.startswith(choice.names[chunk][:4]), (word, chunk)


def test_shards_round_trip_with_context_and_old_shards_load_without(tokenizer, tmp_path):
    corpus = _corpus()
    manifest = write_shards(corpus, tokenizer, tmp_path / "ctx", context_tokens=256)
    assert manifest["repo_context"]["layout"] == "path-comment" and manifest["repo_context"]["with_context"] == 1
    data = TokenData(tmp_path / "ctx")
    assert data.repo_context["tokens"] == 256
    documents = {_decode(tokenizer, d.tokens): d for d in data.documents["python"]}
    main = documents[MAIN]
    choice = _main_choice(tokenizer)
    assert [c.tolist() for c in main.chunks] == choice.chunks and main.header.tolist() == choice.header
    assert len(main.anchors) == len(main.anchor_chunks) == 5
    assert all(not d.chunks and not len(d.header) for text, d in documents.items() if text != MAIN)
    assert all(isinstance(d, Document) for d in data.draw(random.Random(0), 4))

    old = write_shards(corpus, tokenizer, tmp_path / "old")  # as written before: tokens and offsets only
    assert "repo_context" not in old
    with np.load(tmp_path / "old" / old["shards"][0]["file"]) as arrays:
        assert sorted(arrays.files) == ["offsets", "tokens"]
    plain = TokenData(tmp_path / "old")
    assert plain.repo_context is None and plain.total_tokens == data.total_tokens
    assert all(not d.chunks and not len(d.anchors) for d in plain.documents["python"])



def _chunks_of(choice: repo.Choice) -> tuple[ContextChunk, ...]:
    """The ContextChunks the server would send for these definitions (its definition index's texts)."""
    found = {d.name: d for d in definitions.definitions_of("python", CHECKSUM, "/src/pkg/checksum.py", "",
                                                           "pkg/checksum.py")}
    return tuple(ContextChunk(path=found[name].path, text=found[name].text) for name in choice.names)


@pytest.mark.parametrize("drop", [False, True])  # True: a limit that only the most relevant chunk fits
def test_the_sampler_lays_out_the_engines_prompt_token_for_token(tokenizer, tmp_path, drop):
    choice = _main_choice(tokenizer)
    ids, context = next(repo.tokenize([MAIN], tokenizer, [choice]))
    limit = len(choice.chunks[-1]) + len(choice.header) + 2 if drop else 256
    engine = TransformersEngine(str(with_layout(tmp_path / "model", {
        "name": "ctx", "prefix_tokens": 511, "suffix_head": 16, "repo_context": "path-comment",
        "repo_context_tokens": limit})), device="cpu")
    prefix = MAIN[:MAIN.index("def shout")]  # the cursor at a line's start
    prompt, healed = engine._prompt(prefix, _chunks_of(choice), "pkg/main.py")
    context_tokens, kept = engine._last_context
    assert kept == (1 if drop else 2) and healed

    sampler = HoleSampler(tokenizer, sequence_tokens=512, holes_per_sequence=8, repo_context_tokens=limit,
                          context_dropout=0.0)
    batch = sampler.sample([Document.of(ids, context)], random.Random(0))
    sequence = batch.encoder_ids[0].tolist()
    assert sequence[:len(prompt)] == prompt  # BOS, the chunks, the header, the window up to the healed token
    assert _decode(tokenizer, sequence[len(prompt):len(prompt) + 1]) == healed  # the middle restarts it
    assert len(sequence) == 1 + context_tokens + len(ids)
    assert (batch.row_start >= 1 + context_tokens).all()  # every hole's prompt holds the whole context


def test_holes_never_fall_in_the_context_and_some_start_at_its_names(tokenizer):
    choice = _main_choice(tokenizer)
    ids, context = next(repo.tokenize([MAIN], tokenizer, [choice]))
    document = Document.of(ids, context)
    lo = 1 + choice.tokens
    anchors = {lo + a for a in context.anchors}
    sampler = HoleSampler(tokenizer, sequence_tokens=512, holes_per_sequence=16, repo_context_tokens=256,
                          context_dropout=0.3)
    rng = random.Random(0)
    with_context = at_anchor = rows = 0
    for _ in range(40):
        batch = sampler.sample([document], rng)
        length = int((batch.encoder_ids[0] != tokenizer.pad_token_id).sum())
        start = lo if length > len(ids) + 1 else 1  # the sequence went with or without its context
        with_context += start == lo
        assert (batch.row_start >= start).all()
        if start == lo:
            rows += len(batch.row_start)
            at_anchor += sum(int(s) in anchors for s in batch.row_start)
    assert 20 <= with_context <= 36  # about 30% of sequences without it
    assert at_anchor > 0.2 * rows  # anchor_share (0.3) plus the random starts that land there

    # data.repo_anchor_share sets it: all holes at the names when 1
    config = msgspec.convert({"data": {"repo_context_tokens": 256, "repo_context_dropout": 0.0,
                                       "repo_anchor_share": 1.0, "holes_per_sequence": 16}}, TrainConfig)
    batch = hole_sampler(config.data, tokenizer).sample([document], random.Random(1))
    assert len(batch.row_start) and {int(s) for s in batch.row_start} <= anchors

    # off (repo_context_tokens = 0): the very batches of a document without context
    off = HoleSampler(tokenizer, sequence_tokens=512, holes_per_sequence=16)
    a, b = off.sample([document], random.Random(5)), off.sample([np.asarray(ids)], random.Random(5))
    assert all(torch.equal(x, y) for x, y in zip((a.encoder_ids, a.row_start, a.canvas), (b.encoder_ids, b.row_start,
                                                                                          b.canvas)))


def test_the_config_file_fits_and_the_layout_is_declared_only_when_on():
    config = load_config(ROOT / "infill_lsp" / "train" / "configs" / "repo-context.toml")
    default = load_config(ROOT / "infill_lsp" / "train" / "configs" / "default.toml")
    assert config.data.repo_context_tokens > 0 and config.model == default.model and config.optim == default.optim
    check_fits(config, config.model.sliding_window)
    layout = infill_layout(config)
    assert layout["repo_context"] == "path-comment" and layout["repo_context_tokens"] == config.data.repo_context_tokens
    assert layout["prefix_tokens"] == infill_layout(default)["prefix_tokens"]  # the window keeps its budget
    assert "repo_context" not in infill_layout(default)
    with pytest.raises(ValueError, match="sliding window"):
        check_fits(config, config.data.sequence_tokens + config.data.repo_context_tokens - 1)


def test_the_gpu_config_continues_the_shipped_run_with_its_shape_and_data():
    """configs/gpu.toml (issue 12, part A): the shipped context run's model and data, a longer schedule."""
    gpu = load_config(ROOT / "infill_lsp" / "train" / "configs" / "gpu.toml")
    record = json.loads((ROOT / "infill_lsp" / "models" / "infill-small" / "training_state.json").read_text())
    kept = msgspec.convert(record["config"], TrainConfig)
    assert gpu.model == kept.model and gpu.data == kept.data
    assert gpu.optim.steps > record["totals"]["step"]
    check_fits(gpu, gpu.model.sliding_window)


UTIL = "def tally(values):\n    return sum(values)\n\n\ndef scale(values, k):\n    return [v * k for v in values]\n"
USER = """from .util import scale, tally


def report(rows):
    totals = [tally(row) for row in rows]
    doubled = scale(totals, 2)
    print(tally(doubled), scale(rows[0], 3))
    return tally(totals)
"""


def _training_corpus() -> Corpus:
    """Packages of two files: one uses the short functions the other defines."""
    files = {}
    for k in range(16):
        files[f"pkg{k}/util.py"] = UTIL + f"# package {k}\n"  # no exact duplicates (write_shards drops them)
        files[f"pkg{k}/report.py"] = USER + f"# package {k}\n"
    paths = [f"/src/{name}" for name in files]
    return Corpus(texts=list(files.values()), manifest=[ManifestEntry("fixture", "0", "MIT", len(files), 1)],
                  languages=["python"] * len(files), paths=paths, roots=["/src"] * len(files))


def test_a_short_run_with_context_exports_a_checkpoint_the_engine_serves_with_context(tokenizer, tmp_path):
    shards = tmp_path / "shards"
    manifest = write_shards(_training_corpus(), tokenizer, shards, context_tokens=128)
    assert manifest["repo_context"]["with_context"] >= 10
    assert TokenData(shards).documents["python"][1].chunks  # report.py: tally and scale from util.py
    config = TrainConfig(seed=0, data=DataConfig(sequence_tokens=64, holes_per_sequence=4, repo_context_tokens=60),
                         optim=OptimConfig(steps=2, batch_size=2, lr=1e-3, warmup=1, log_every=1))
    history = train(config, tmp_path / "run", init=str(TINY_MODEL), shards=shards, device="cpu")
    assert history[-1]["step"] == 2
    layout = json.loads((tmp_path / "run" / "config.json").read_text())["infill_layout"]
    assert layout["repo_context"] == "path-comment" and layout["repo_context_tokens"] == 60

    engine = TransformersEngine(str(tmp_path / "run"), device="cpu")
    assert engine.info.repo_context == "path-comment"
    assert Settings(repo_context="auto").repo_context_enabled(engine.info.repo_context)
    chunks = tuple(ContextChunk(path="pkg0/util.py", text=d.text)
                   for d in definitions.definitions_of("python", UTIL, "/src/pkg0/util.py", "", "pkg0/util.py"))
    result = engine.infill(InfillRequest(prefix=USER[:90], suffix="\n", context=chunks, path="pkg0/report.py",
                                         seed=0, budget=Budget(candidates=2, max_middle_tokens=4, steps=2)))
    assert result.timings.context_chunks >= 1 and 0 < result.timings.context_tokens <= 60  # at most as trained

    plain = tmp_path / "plain"  # shards without context cannot train it: the checkpoint would lie
    write_shards(_training_corpus(), tokenizer, plain)
    with pytest.raises(ValueError, match="no repository context"):
        train(config, tmp_path / "run2", init=str(TINY_MODEL), shards=plain, device="cpu")


def test_batches_from_worker_processes_are_the_streams_own(tokenizer, tmp_path):
    """train/workers.py: batch k of a run comes from its own seeded RNG, so spawned workers give what
    sampling in process gives, in order, and a run trains on them (a GPU's default)."""
    shards = tmp_path / "shards"
    write_shards(_training_corpus(), tokenizer, shards, context_tokens=128)
    data = DataConfig(sequence_tokens=64, holes_per_sequence=4, repo_context_tokens=60)
    workers = BatchWorkers(2, shards, data, seed=3, batch_size=2, first_step=5)
    try:
        got = [workers.next() for _ in range(3)]
    finally:
        workers.close()
    sampler, token_data = hole_sampler(data, AutoTokenizer.from_pretrained(shards)), TokenData(shards)
    for k, batch in enumerate(got):
        expected = sample_batch(sampler, token_data, 3, 5 + k, 2)
        assert torch.equal(batch.encoder_ids, expected.encoder_ids) and torch.equal(batch.canvas, expected.canvas)
        assert torch.equal(batch.row_start, expected.row_start)
    assert not torch.equal(got[0].canvas, got[1].canvas)  # a stream, not one batch repeated

    config = TrainConfig(seed=0, data=data, optim=OptimConfig(steps=2, batch_size=2, lr=1e-3, warmup=1, log_every=1))
    history = train(config, tmp_path / "run", init=str(TINY_MODEL), shards=shards, device="cpu", data_workers=1)
    assert history[-1]["step"] == 2 and math.isfinite(history[-1]["loss"])


def test_a_step_that_raises_still_ends_the_worker_processes(tokenizer, tmp_path, monkeypatch):
    """Out of memory or Ctrl-C in a step: the batch workers are shut down, not left to process exit."""
    from infill_lsp.train import loop

    shards = tmp_path / "shards"
    write_shards(_training_corpus(), tokenizer, shards, context_tokens=128)
    started, closed = [], []
    real_loss = loop.holes_loss

    class Recorded(BatchWorkers):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.append(self.pool)

        def close(self) -> None:
            super().close()
            closed.append(self.pool)

    def boom(*args, **kwargs):
        if started:  # a training step (the fit check before it runs the loss too)
            raise RuntimeError("out of memory")
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(loop, "BatchWorkers", Recorded)
    monkeypatch.setattr(loop, "holes_loss", boom)
    config = TrainConfig(seed=0, data=DataConfig(sequence_tokens=64, holes_per_sequence=4, repo_context_tokens=60),
                         optim=OptimConfig(steps=2, batch_size=2, lr=1e-3, warmup=1, log_every=1))
    with pytest.raises(RuntimeError, match="out of memory"):
        train(config, tmp_path / "run", init=str(TINY_MODEL), shards=shards, device="cpu", data_workers=1)
    assert len(started) == 1 and closed == started and closed[0]._shutdown_thread
