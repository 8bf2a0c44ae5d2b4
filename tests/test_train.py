"""The training loop on the tiny checkpoint: a few optimisation steps must lower the infill loss."""

import json
import random
import shutil

import msgspec
import pytest
import torch
from transformers import AutoTokenizer, DiffusionGemmaForBlockDiffusion

from infill_lsp.train.corpus import Corpus, ManifestEntry, humaneval_signatures, collect_repository
from infill_lsp.train.loop import OptimConfig, TrainConfig, DataConfig, train
from infill_lsp.train.objective import ExampleBuilder, collate, sample_split

from conftest import ROOT, TINY_MODEL

SAMPLES = sorted((ROOT / "fixtures" / "samples").iterdir())


def test_split_kinds_cover_lines_spans_and_end_of_file():
    rng = random.Random(0)
    text = (ROOT / "fixtures" / "samples" / "fib.py").read_text()
    splits = [s for s in (sample_split(text, rng) for _ in range(400)) if s]
    assert all(s.prefix + s.middle + s.suffix == text for s in splits)
    assert any(s.suffix == "" for s in splits)
    assert any(s.prefix.endswith("\n") and s.middle.endswith("\n") for s in splits)
    assert any(not s.prefix.endswith("\n") for s in splits)


def test_examples_match_the_engine_canvas_layout():
    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL)
    builder = ExampleBuilder(tokenizer, prefix_tokens=64, max_middle=32, suffix_head=16)
    rng = random.Random(1)
    text = SAMPLES[0].read_text()
    for _ in range(50):
        split = sample_split(text, rng)
        example = split and builder.build(split, rng)
        if not example:
            continue
        m = sum(example.free)
        assert m in (4, 8, 16, 32) and len(example.canvas) == 48
        middle = example.canvas[:m]
        end = middle.index(tokenizer.eos_token_id)  # the end marker is always inside the slot
        assert all(t == tokenizer.pad_token_id for t in middle[end + 1:])
        healed_middle = tokenizer.decode(middle[:end])
        assert healed_middle.endswith(split.middle)
        assert example.prompt[0] == tokenizer.bos_token_id and len(example.prompt) <= 65


def test_a_few_steps_lower_the_loss_and_resume_continues(tmp_path):
    texts = [SAMPLES[i % len(SAMPLES)].read_text() for i in range(200)]  # ~2% of the paths are held out
    corpus = Corpus(texts=texts, manifest=[ManifestEntry("fixtures", "0", "Apache-2.0")],
                    paths=[f"/repo/file{i}.py" for i in range(200)], languages=["python"] * 200)
    config = TrainConfig(seed=0, data=DataConfig(sequence_tokens=100, holes_per_sequence=8),
                         optim=OptimConfig(steps=40, batch_size=4, lr=3e-3, warmup=1, log_every=10))
    history = train(config, tmp_path / "ft", init=str(TINY_MODEL), corpus=corpus, device="cpu")
    assert history[-1]["loss"] < history[0]["loss"] - 0.5, history
    assert all(h["supervised_tokens_per_s"] > 0 for h in history[:-1])
    assert history[-1]["heldout_loss"] < history[-1]["heldout_loss_start"]  # "before/after" of a fine-tune
    assert (tmp_path / "ft" / "model.safetensors").exists() and (tmp_path / "ft" / "state.pt").exists()
    assert (tmp_path / "ft" / "loss.csv").read_text().startswith("step,loss")
    assert "Corpus manifest" in (tmp_path / "ft" / "README.md").read_text()
    model = DiffusionGemmaForBlockDiffusion.from_pretrained(tmp_path / "ft")  # loads as the engine would
    assert model.config.text_config.vocab_size == 512
    assert model.config.infill_layout["suffix_head"] == 16 and model.config.infill_layout["prefix_tokens"] == 99

    # --resume: the schedule, step count and history carry on from the saved state.
    longer = TrainConfig(seed=0, data=config.data, optim=OptimConfig(steps=60, batch_size=4, lr=3e-3, warmup=1,
                                                                     log_every=10))
    state = torch.load(tmp_path / "ft" / "state.pt", weights_only=False)
    state["config"]["optim"]["steps"] = 60  # what a longer schedule in the resumed run's config would say
    torch.save(state, tmp_path / "ft" / "state.pt")
    resumed = train(longer, tmp_path / "ft", corpus=corpus, device="cpu", resume=True)
    assert resumed[-1]["step"] == 60 and resumed[:len(history)] == history[:len(resumed[:len(history)])]


def test_resume_without_local_state_continues_the_shipped_record_and_its_config(tmp_path):
    """`train --resume DIR` on a machine where DIR is gone continues from the shipped weights with the
    config they were trained with (not the built-in defaults), with command-line overrides on top."""
    texts = [SAMPLES[i % len(SAMPLES)].read_text() for i in range(60)]
    corpus = Corpus(texts=texts, manifest=[ManifestEntry("fixtures", "0", "Apache-2.0")],
                    paths=[f"/repo/file{i}.py" for i in range(60)], languages=["python"] * 60)
    shipped = tmp_path / "shipped"
    shutil.copytree(TINY_MODEL, shipped)
    trained_with = TrainConfig(seed=3, data=DataConfig(sequence_tokens=80, holes_per_sequence=4),
                               optim=OptimConfig(steps=500, batch_size=2, lr=2e-3, warmup=2, log_every=2))
    record = [{"step": 4, "loss": 6.0, "lr": 1e-3, "minutes": 1.0, "supervised_tokens_per_s": 10.0,
               "supervised_tokens": 100}]
    (shipped / "training_state.json").write_text(json.dumps({
        "config": msgspec.to_builtins(trained_with),
        "totals": {"step": 4, "tokens_seen": 320, "supervised_tokens": 100, "minutes": 1.0, "device": "cpu"},
        "history": record}))
    history = train(None, tmp_path / "run", init=str(shipped), corpus=corpus, device="cpu", resume=True,
                    optim_overrides={"steps": 8})
    assert history[0] == record[0] and history[-1]["step"] == 8
    assert history[-1]["lr"] == pytest.approx(0.1 * 2e-3)  # the cosine ends at --steps, not 8 steps later
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=False)
    assert state["config"]["data"] == msgspec.to_builtins(trained_with.data)
    assert state["config"]["optim"] == {**msgspec.to_builtins(trained_with.optim), "steps": 8}


def test_a_fine_tune_of_weights_past_the_schedule_counts_its_steps_from_theirs(tmp_path):
    """The shipped record ends at its annealed step (3743, then 7831, now 10631), past the default config's 3000: `train --init
    SHIPPED --data REPO` (README, "Fine-tune on your code") trained nothing and reported the same loss.
    The steps now count from the weights' own step, and the run learns."""
    texts = [SAMPLES[i % len(SAMPLES)].read_text() for i in range(200)]
    corpus = Corpus(texts=texts, manifest=[ManifestEntry("fixtures", "0", "Apache-2.0")],
                    paths=[f"/repo/file{i}.py" for i in range(200)], languages=["python"] * 200)
    shipped = tmp_path / "shipped"
    shutil.copytree(TINY_MODEL, shipped)
    finished = TrainConfig(optim=OptimConfig(steps=50))
    (shipped / "training_state.json").write_text(json.dumps({
        "config": msgspec.to_builtins(finished), "history": [{"step": 50, "loss": 6.0, "lr": 1e-4, "minutes": 1.0}],
        "totals": {"step": 50, "tokens_seen": 5000, "supervised_tokens": 900, "minutes": 1.0, "device": "cpu"}}))
    config = TrainConfig(seed=0, data=DataConfig(sequence_tokens=100, holes_per_sequence=8),
                         optim=OptimConfig(steps=30, batch_size=4, lr=3e-3, warmup=1, log_every=10))
    history = train(config, tmp_path / "ft", init=str(shipped), corpus=corpus, device="cpu")
    assert history[-1]["step"] == 80  # 30 more, not "already at 50 of 30"
    assert history[-1]["heldout_loss"] < history[-1]["heldout_loss_start"]
    state = torch.load(tmp_path / "ft" / "state.pt", weights_only=False)
    assert state["config"]["optim"]["steps"] == 80  # a later --resume keeps this schedule


def test_resume_continues_from_whichever_of_shipped_and_kept_trained_further(tmp_path):
    from infill_lsp.train.loop import resume_point

    def checkpoint(name, step):
        path = tmp_path / name
        path.mkdir()
        (path / "config.json").write_text("{}")
        (path / "training_state.json").write_text(json.dumps({"totals": {"step": step}, "history": []}))
        return path

    shipped, kept = checkpoint("shipped", 267), checkpoint("kept", 668)
    assert resume_point(shipped, kept) == kept
    assert resume_point(shipped, tmp_path / "none") == shipped  # no kept run (an installed package)
    (kept / "training_state.json").write_text(json.dumps({"totals": {"step": 100}, "history": []}))
    assert resume_point(shipped, kept) == shipped  # the shipped weights are newer


def test_repository_corpus_and_humaneval_exclusion(tmp_path):
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "a.py").write_text("def add(a, b):\n    return a + b\n")
    (repo / "pkg" / "leak.py").write_text("def has_close_elements(numbers: List[float], threshold: float) -> bool:\n    pass\n")
    (repo / "node_modules").mkdir()
    (repo / "node_modules" / "x.js").write_text("var x = 1;\n")
    data = ROOT.parent / "shared" / "fim_data" / "humaneval-infilling"
    corpus = collect_repository(repo, data if data.is_dir() else None)
    if data.is_dir():
        assert len(humaneval_signatures(data)) >= 160
        assert corpus.excluded_for_humaneval == 1 and len(corpus.texts) == 1
    else:
        assert len(corpus.texts) == 2


def test_weights_train_only_on_shards_written_with_their_own_tokenizer(tmp_path):
    """Shards hold token ids. `infill-lsp corpus` used to train a tokenizer of its own by default, and
    `train --init SHIPPED --shards` (or `--resume` once the run's state was gone) then trained the
    shipped weights on ids that meant other text to them, silently. Now `corpus` writes with the
    shipped model's tokenizer by default, and `train` refuses shards of another tokenizer, saying how
    to write the right ones."""
    from infill_lsp.train.loop import same_tokenizer, train_tokenizer
    from infill_lsp.train.shards import write_shards

    texts = [SAMPLES[i % len(SAMPLES)].read_text() for i in range(120)]
    corpus = Corpus(texts=texts, manifest=[ManifestEntry("fixtures", "0", "Apache-2.0")],
                    paths=[f"/repo/file{i}.py" for i in range(120)], languages=["python"] * 120)
    own = AutoTokenizer.from_pretrained(TINY_MODEL)
    other = train_tokenizer([t.upper() for t in texts], own.vocab_size)  # the same recipe on other text
    assert len(other) == len(own) and not same_tokenizer(own, other)  # same size: nothing else would notice
    write_shards(corpus, other, tmp_path / "other")
    write_shards(corpus, own, tmp_path / "own")
    config = TrainConfig(seed=0, data=DataConfig(sequence_tokens=100, holes_per_sequence=4),
                         optim=OptimConfig(steps=2, batch_size=2, lr=1e-3, warmup=1, log_every=1))
    with pytest.raises(ValueError, match=r"another tokenizer.*infill-lsp corpus --tokenizer"):
        train(config, tmp_path / "wrong", init=str(TINY_MODEL), shards=tmp_path / "other", device="cpu")
    assert not (tmp_path / "wrong" / "state.pt").exists()
    history = train(config, tmp_path / "right", init=str(TINY_MODEL), shards=tmp_path / "own", device="cpu")
    assert history[-1]["step"] == 2
    assert same_tokenizer(own, AutoTokenizer.from_pretrained(tmp_path / "right"))


def test_corpus_writes_shards_with_the_shipped_tokenizer_by_default(tmp_path, monkeypatch):
    import infill_lsp.engine
    from infill_lsp.cli import main
    from infill_lsp.train.loop import same_tokenizer

    monkeypatch.setattr(infill_lsp.engine, "SHIPPED_MODEL", TINY_MODEL)  # as the shipped model, faster
    assert main(["corpus", "--out", str(tmp_path / "shards"), "--max-bytes", "60000", "--context-tokens", "0",
                 "--humaneval", str(tmp_path / "none")]) == 0
    assert same_tokenizer(AutoTokenizer.from_pretrained(TINY_MODEL), AutoTokenizer.from_pretrained(tmp_path / "shards"))
