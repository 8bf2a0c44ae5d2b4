import math

import pytest
import torch

from infill_lsp.engine import CancelToken, Cancelled, EngineConfig, load_engine
from infill_lsp.engine.transformers_backend import ModelNotFound, TransformersEngine
from infill_lsp.types import Budget, InfillRequest


def test_infill_returns_one_scored_candidate_per_row(engine):
    request = InfillRequest(prefix="def f(x):\n    return ", suffix="\n\nprint(f(1))\n",
                            budget=Budget(candidates=4, max_middle_tokens=16, steps=4), seed=3)
    result = engine.infill(request)
    assert len(result.candidates) == 4
    for candidate in result.candidates:
        assert isinstance(candidate.text, str)
        assert math.isfinite(candidate.score) and candidate.score <= 0
        assert 0 <= candidate.tokens <= 16
    t = result.timings
    assert 1 <= t.steps <= 4 and t.prompt_tokens > 0
    assert t.encode_ms > 0 and t.denoise_ms > 0


def test_same_seed_same_candidates(engine):
    request = InfillRequest(prefix="x = ", suffix="\n", budget=Budget(candidates=2, max_middle_tokens=8, steps=3), seed=11)
    assert engine.infill(request).candidates == engine.infill(request).candidates


def test_prefix_is_encoded_once_for_the_whole_batch(engine, monkeypatch):
    calls = []
    encoder = engine.model.model.encoder
    original = encoder.forward

    def spy(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(encoder, "forward", spy)
    engine.infill(InfillRequest(prefix="a = 1\nb = ", suffix="", budget=Budget(candidates=8, max_middle_tokens=8, steps=2)))
    assert len(calls) == 1 and calls[0][0] == 1


def test_token_healing_backs_off_the_partial_token(engine):
    """With the cursor inside `counts`, every candidate continues the word (healing strips `co`'s token)."""
    prompt_ids, healed = engine._prompt("self.co")
    assert healed and "self.co".endswith(healed)
    full = engine._encode_text("self.co")
    assert prompt_ids[1:] == full[:-1]  # bos, then all but the backed-off token
    result = engine.infill(InfillRequest(prefix="self.co", suffix="\n", budget=Budget(candidates=4, max_middle_tokens=6, steps=3), seed=5))
    # every row's first token was constrained to start with the healed text, so no row was dropped
    # for failing to continue it (rows that do not start with it are discarded by the engine)
    assert len(result.candidates) == 4
    allowed = engine.healer.ids_starting_with(healed).tolist()
    texts = [engine.healer_text(i) for i in allowed]
    assert all(t.startswith(healed) for t in texts) and texts


@pytest.mark.parametrize("model", ["tiny", "shipped"])
@pytest.mark.parametrize("prefix", ["def f():\n    ", "def f():\n\t\t", "x = ", "a  ", " ", "def f():\n        return 1\n    "])
def test_after_spaces_the_prompt_is_cut_where_the_files_own_tokens_are(engine, model, prefix):
    """A prefix ending in spaces or tabs: the prompt is the file's own tokens of `prefix + word` up to
    the first token that reaches past the cursor, and `healed` is the rest of the prefix, which that
    token starts with. (The shipped tokenizer has `\n    ` as one token, but a file has `\n   ` +
    ` x` there: backing off `\n    ` left rows that could only end or garble.)"""
    if model == "shipped":
        from infill_lsp.engine import SHIPPED_MODEL

        engine = TransformersEngine(str(SHIPPED_MODEL), device="cpu", dtype="float32")
    prompt_ids, healed = engine._prompt(prefix)
    ids = prompt_ids[1:] if prompt_ids[:1] == [engine.bos_id] else prompt_ids
    assert engine.tokenizer.decode(ids) + healed == prefix
    for word in ["x", "return", "self", "value"] if model == "shipped" else ["x"]:  # the shipped one: any word
        files_own = engine._encode_text(prefix + word)
        assert files_own[: len(ids)] == ids, word
        assert engine.healer_text(files_own[len(ids)]).startswith(healed), word
    if model == "shipped" and prefix == "def f():\n    ":
        assert healed == " " and engine.healer_text(ids[-1]) == "\n   "


def test_empty_file_and_empty_suffix(engine):
    result = engine.infill(InfillRequest(prefix="", suffix="", budget=Budget(candidates=2, max_middle_tokens=4, steps=2)))
    assert len(result.candidates) == 2


def test_long_prefix_is_cut_to_the_token_budget(tiny_model_path):
    small = TransformersEngine(str(tiny_model_path), device="cpu", prefix_tokens=32)
    result = small.infill(InfillRequest(prefix="value = value + 1\n" * 500, suffix="",
                                        budget=Budget(candidates=1, max_middle_tokens=4, steps=1)))
    assert result.timings.prompt_tokens <= 33


def test_cancelled_request_raises(engine):
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        engine.infill(InfillRequest(prefix="x", suffix=""), token)


def test_missing_model_is_a_clear_error_not_a_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelNotFound, match="never downloads"):
        load_engine(EngineConfig(model="google/diffusiongemma-26B-A4B-it"))


def test_encoded_prefix_is_reused_across_keystrokes(tiny_model_path):
    engine = TransformersEngine(str(tiny_model_path), device="cpu")
    prefix = "".join(f"total = total + value_{i}\n" for i in range(40))
    budget = Budget(candidates=2, max_middle_tokens=6, steps=2)
    first = engine.infill(InfillRequest(prefix=prefix, suffix="", budget=budget, seed=9))
    misses = engine.stats["prefix_cache_misses"]
    typed = engine.infill(InfillRequest(prefix=prefix + "res", suffix="", budget=budget, seed=9))
    assert engine.stats["prefix_cache_hits"] == 1 and engine.stats["prefix_cache_misses"] == misses
    # a hit gives exactly what encoding from scratch gives
    engine._checkpoint = None
    again = engine.infill(InfillRequest(prefix=prefix + "res", suffix="", budget=budget, seed=9))
    assert again.candidates == typed.candidates
    assert engine.infill(InfillRequest(prefix=prefix, suffix="", budget=budget, seed=9)).candidates == first.candidates


def test_loads_a_hub_id_from_the_local_cache_only(tiny_model_path, tmp_path, monkeypatch):
    """A hub id resolves through the HF cache layout (models--org--name/snapshots/<rev>), offline."""
    import shutil

    repo = tmp_path / "hub" / "models--acme--tiny-infill"
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_model_path, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # read once at import: patch it
    engine = load_engine(EngineConfig(model="acme/tiny-infill", device="cpu"))
    assert engine.info.model == "acme/tiny-infill"
    assert engine.infill(InfillRequest(prefix="a", suffix="", budget=Budget(candidates=1, max_middle_tokens=2, steps=1))).candidates


def _tensor_bytes(directory) -> int:
    """The weights' bytes, read the plain way: every tensor of every safetensors file, materialised."""
    from safetensors import safe_open

    total = 0
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            total += sum(f.get_tensor(name).nbytes for name in f.keys())
    return total


def test_load_percent_is_the_share_of_the_weights_bytes_read(tiny_model_path):
    """The load's percent is measured, not a milestone: while the weights are read it is the
    share of their bytes read so far (counted per tensor as transformers reads it); the other
    stages say what they do with no percent; "ready" is 100."""
    from transformers import DiffusionGemmaForBlockDiffusion

    from infill_lsp.engine.transformers_backend import WeightsMeter

    expected = _tensor_bytes(tiny_model_path)
    reports = []
    meter = WeightsMeter(lambda message, percent: reports.append((message, percent, meter.read)))
    with meter.measure():
        DiffusionGemmaForBlockDiffusion.from_pretrained(str(tiny_model_path), local_files_only=True)
    assert meter.total == expected and meter.read == expected
    assert len(reports) >= 10, reports  # 67 tensors: a percent that moves, not five fixed steps
    assert [percent for _, percent, _ in reports] == [read * 100 // expected for _, _, read in reports]
    assert reports[-1][1] == 100 and reports[-1][0] == "reading weights: 792.0 of 792.0 kB"

    seen = []
    TransformersEngine(str(tiny_model_path), device="cpu", progress=lambda message, percent: seen.append((message, percent)))
    measured = [(message, percent) for message, percent in seen if percent is not None]
    assert measured[-1] == ("ready", 100) and sum(1 for m in measured if m[0] == "ready") == 1
    assert all(message.startswith("reading weights: ") for message, _ in measured[:-1]) and len(measured) >= 11
    percents = [percent for _, percent in measured]
    assert percents == sorted(percents) and len(set(percents[:-1])) == len(percents) - 1  # rising, each once
    assert [message for message, percent in seen if percent is None] == [
        "loading tokenizer", "loading weights", "indexing vocabulary", "warming up"]


def test_load_percent_counts_every_shard_of_a_sharded_checkpoint(tiny_model_path, tmp_path):
    """Shards are all opened before any is read: the percent is of the whole, 100 only at the end."""
    import shutil

    from transformers import DiffusionGemmaForBlockDiffusion

    model = DiffusionGemmaForBlockDiffusion.from_pretrained(str(tiny_model_path), local_files_only=True)
    model.save_pretrained(tmp_path, max_shard_size="300KB")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_path / name, tmp_path / name)
    shards = sorted(tmp_path.glob("*.safetensors"))
    assert len(shards) >= 3, shards
    expected = _tensor_bytes(tmp_path)
    seen = []
    TransformersEngine(str(tmp_path), device="cpu", progress=lambda message, percent: seen.append((message, percent)))
    weights = [(message, percent) for message, percent in seen if message.startswith("reading weights: ")]
    percents = [percent for _, percent in weights]
    assert len(weights) >= 10 and percents == sorted(percents) and percents.count(100) == 1 and percents[-1] == 100
    total = f"{expected / 1e3:,.1f} kB"
    assert all(message.endswith(f" of {total}") for message, _ in weights), (weights, total)


def test_a_checkpoint_declares_its_sampler_temperatures(tiny_model_path, tmp_path, monkeypatch):
    """`infill_decoding` in config.json sets the sampler (the shipped model's temperatures were chosen
    on held-out holes); settings a caller passes win; unknown keys and the step count are ignored."""
    import json
    import shutil

    from infill_lsp.engine.denoise import DenoiseSettings

    checkpoint = tmp_path / "model"
    shutil.copytree(tiny_model_path, checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    config["infill_decoding"] = {"t_max": 0.4, "t_min": 0.1, "straggler_steps": 1, "steps": 3, "no_such_knob": 1}
    (checkpoint / "config.json").write_text(json.dumps(config))

    declared = TransformersEngine(str(checkpoint), device="cpu", dtype="float32")
    assert (declared.denoise_settings.t_max, declared.denoise_settings.t_min) == (0.4, 0.1)
    assert declared.denoise_settings.straggler_steps == 1
    assert declared.denoise_settings.steps == DenoiseSettings().steps
    assert declared.denoise_settings.entropy_bound == DenoiseSettings().entropy_bound
    plain = TransformersEngine(str(tiny_model_path), device="cpu", dtype="float32")
    assert plain.denoise_settings == DenoiseSettings()
    chosen = TransformersEngine(str(checkpoint), device="cpu", dtype="float32",
                                denoise_settings=DenoiseSettings(t_max=0.9))
    assert chosen.denoise_settings.t_max == 0.9
    # the temperatures reach the sampler, and the step count stays the request's
    seen = []
    import infill_lsp.engine.transformers_backend as backend

    real = backend.denoise
    monkeypatch.setattr(backend, "denoise", lambda *args, **kwargs: seen.append(args[3]) or real(*args, **kwargs))
    declared.infill(InfillRequest(prefix="def f(x):\n    return ", suffix="\n",
                                  budget=Budget(candidates=2, max_middle_tokens=8, steps=5), seed=1))
    assert [(s.t_max, s.t_min, s.steps) for s in seen] == [(0.4, 0.1, 5)]


def test_on_a_cpu_the_engine_keeps_the_faster_thread_count(tiny_model_path, monkeypatch):
    """Torch's default (a thread per core) or one thread, whichever answered the calibration request
    sooner; an explicit count is taken as given; the choice is in the engine's info (infill/stats)."""
    import time as time_module

    saved = torch.get_num_threads()
    real_infill = TransformersEngine.infill
    try:
        torch.set_num_threads(2)
        clock = iter(range(1000))
        # a fake clock: each request takes 5 "seconds" at 2 threads and 1 at 1 thread
        monkeypatch.setattr(time_module, "perf_counter",
                            lambda: next(clock) * (5 if torch.get_num_threads() == 2 else 1))
        engine = TransformersEngine(str(tiny_model_path), device="cpu", dtype="float32")
        monkeypatch.undo()
        assert torch.get_num_threads() == 1 and engine.info.threads == 1
        # the timing runs leave no trace in the counters: only the warm-up request's encoder pass
        assert engine.stats["prefix_cache_hits"] == 0 and engine.stats["prefix_cache_misses"] == 1
        torch.set_num_threads(2)
        given = TransformersEngine(str(tiny_model_path), device="cpu", dtype="float32", threads=2)
        assert torch.get_num_threads() == 2 and given.info.threads == 2
        # a big model is not timed (four more requests of a 26B on a CPU would cost minutes)
        monkeypatch.setattr("infill_lsp.engine.transformers_backend.CALIBRATE_MAX_PARAMETERS", 10)
        monkeypatch.setattr(TransformersEngine, "infill", lambda *a, **k: pytest.fail("timed a big model")
                            if a[1].prefix.startswith("def step_") else real_infill(*a, **k))
        big = TransformersEngine(str(tiny_model_path), device="cpu", dtype="float32")
        assert torch.get_num_threads() == 2 and big.info.threads == 2
    finally:
        torch.set_num_threads(saved)


def test_requests_run_on_one_thread_while_other_processes_use_the_cpu(monkeypatch, tiny_model_path):
    """Two threads (chosen at start) while the rest of the machine is quiet, one while others use
    more than OTHERS_BUSY cores; an unknown reading keeps the last choice."""
    import msgspec

    saved = torch.get_num_threads()
    try:
        engine = TransformersEngine(str(tiny_model_path), device="cpu", dtype="float32", threads=1)
        engine.info = msgspec.structs.replace(engine.info, threads=2)  # as if two threads won at start
        torch.set_num_threads(2)
        readings = iter([0.0, 0.9, None, 0.1])
        engine._others = type("Fake", (), {"sample": lambda self: next(readings)})()
        seen = []
        real = TransformersEngine._infill
        monkeypatch.setattr(TransformersEngine, "_infill",
                            lambda self, *a: seen.append(torch.get_num_threads()) or real(self, *a))
        for _ in range(4):
            engine.infill(InfillRequest(prefix="def f(x):\n    return ", suffix="\n", budget=Budget(candidates=1, steps=2)))
        assert seen == [2, 1, 1, 2]
        assert engine.stats["requests_on_one_thread"] == 1
    finally:
        torch.set_num_threads(saved)


def test_others_cpu_is_the_machines_busy_time_minus_this_process(monkeypatch):
    import os

    from infill_lsp.engine.transformers_backend import OthersCpu

    tick = os.sysconf("SC_CLK_TCK")
    reads = iter([(10.0, 1000, 100), (10.05, 1010, 105), (11.0, 1000 + 2 * tick, 100 + tick // 2)])
    monkeypatch.setattr(OthersCpu, "_read", staticmethod(lambda: next(reads)))
    monitor = OthersCpu()
    assert monitor.sample() is None  # 50 ms: too soon to tell, the first look is kept
    assert abs(monitor.sample() - 1.5) < 1e-9  # 2 cores' worth busy over 1 s, half a core of it ours


def test_others_cpu_reads_this_machine():
    from infill_lsp.engine.transformers_backend import OthersCpu

    reading = OthersCpu._read()
    if reading is None:
        pytest.skip("no /proc here")
    assert reading[1] > 0 and reading[2] >= 0


def test_a_renoised_position_never_shows_its_noise_token(engine):
    """A model that copies its input (the random fixture does: tied embeddings) would hand back the
    noise canvas; the loop rules out each renoised position's own token (DenoiseSettings.ignore_noise)."""
    from infill_lsp.engine.denoise import denoise

    request = InfillRequest(prefix="def f(x):\n    return ", suffix="\n",
                            budget=Budget(candidates=4, max_middle_tokens=16, steps=1), seed=5)
    copied = {}
    for ignore_noise in (False, True):
        prompt_ids, _, lengths, batch, _, settings = engine._prepare(request)
        settings.ignore_noise = ignore_noise
        cache = engine._encode(prompt_ids)
        cache.batch_repeat_interleave(len(lengths))
        vocab = engine.model.config.text_config.vocab_size
        first_noise = torch.randint(0, vocab, batch.known.shape, generator=torch.Generator().manual_seed(5))
        out = denoise(engine.model, cache, batch, settings, generator=torch.Generator().manual_seed(5))
        copied[ignore_noise] = (out.tokens[batch.free] == first_noise[batch.free]).float().mean().item()
    assert copied[False] > 0.2  # the fixture does copy: the test can tell
    assert copied[True] == 0.0


def test_rule_out_noise_blocks_only_the_renoised_positions_own_token():
    from infill_lsp.engine.denoise import BLOCKED, rule_out_noise

    raw = torch.zeros(3, 5)
    rule_out_noise(raw, torch.tensor([1, 4, 2]), torch.tensor([True, False, True]))
    expected = torch.zeros(3, 5)
    expected[0, 1] = expected[2, 2] = BLOCKED
    assert torch.equal(raw, expected)



def test_blank_so_far_marks_positions_after_nothing_but_whitespace():
    from infill_lsp.engine.denoise import blank_so_far

    blank = torch.tensor([False, True, False, False])  # token 1 is whitespace
    previous = torch.tensor([[1, 1, 2, 1], [2, 1, 1, 0], [1, 3, 3, 3]])
    free = torch.tensor([[True, True, True, True], [True, True, True, False], [True, True, False, False]])
    assert blank_so_far(previous, free, blank).tolist() == [True, True, True, False,  # row 0
                                                           True, False, False,  # row 1
                                                           True, True]  # row 2: its free slot is 2 long


def test_a_row_never_ends_a_middle_of_whitespace(engine, monkeypatch):
    """A head that wants a line break's indentation and then the end marker (the shipped small model at
    a line start) is made to write on: the end marker may not follow whitespace alone."""
    import infill_lsp.engine.denoise as denoise_module

    request = InfillRequest(prefix="def f(x):\n    return ", suffix="\n",
                            budget=Budget(candidates=2, max_middle_tokens=8, steps=4), seed=3)
    prompt_ids, _, lengths, batch, _, settings = engine._prepare(request)
    vocab = engine.model.config.text_config.vocab_size
    blank_id = int(engine.blank.nonzero()[0])
    word_id = next(i for i in range(vocab) if not engine.blank[i] and i not in engine.stop_ids
                   and not engine.banned[i])
    columns = batch.free.nonzero()[:, 1]

    def head(model, hidden, temperature=1.0):
        logits = torch.zeros(hidden.shape[0], vocab)
        logits[columns == 0, blank_id] = 30.0
        logits[columns > 0, engine.end_id] = 30.0
        logits[columns > 0, word_id] = 20.0
        return logits / temperature

    monkeypatch.setattr(denoise_module, "vocabulary_head", head)
    second = {}
    for rule in (False, True):
        cache = engine._encode(prompt_ids)
        cache.batch_repeat_interleave(len(lengths))
        out = denoise_module.denoise(engine.model, cache, batch, settings, banned_tokens=engine.banned,
                                     blank_tokens=engine.blank if rule else None, stop_ids=engine.stop_ids,
                                     generator=torch.Generator().manual_seed(3))
        assert out.tokens[:, 0].tolist() == [blank_id] * len(lengths)
        second[rule] = out.tokens[:, 1].tolist()
    assert second[False] == [engine.end_id] * len(lengths)
    assert second[True] == [word_id] * len(lengths)


def test_the_engine_knows_its_whitespace_tokens(engine):
    texts = engine.tokenizer.backend_tokenizer.decode_batch([[i] for i in range(len(engine.blank))],
                                                            skip_special_tokens=False)
    assert engine.blank.any()
    assert all(not texts[i].strip() for i in engine.blank.nonzero().squeeze(-1).tolist())
    assert not any(engine.blank[i] for i in engine.stop_ids)

_FAULTS = """
import ctypes, resource, sys, torch
from infill_lsp.engine.transformers_backend import keep_freed_memory
if sys.argv[1] == "keep":
    applied = keep_freed_memory()
else:  # glibc's starting point, held fixed (its threshold adapts to what was freed: sometimes 0 faults)
    applied = bool(ctypes.CDLL(None).mallopt(-3, 128 * 1024))
for _ in range(10):  # what a denoising step does: a few (free positions x vocabulary) tensors, then freed;
    # the heap takes 2-4 such steps to grow to what they need, then serves them from what it kept
    held = [torch.empty(264, 8192).fill_(1.0) for _ in range(4)]
    del held
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    held = [torch.empty(264, 8192).fill_(1.0) for _ in range(4)]
    del held
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_freed_step_tensors_are_reused_without_page_faults():
    import subprocess
    import sys

    def faults(mode: str) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True)
        applied, count = out.stdout.split()
        return applied, int(count)

    applied, kept = faults("keep")
    assert applied == "True" and kept < 100  # 20 steps x 4 tensors of 8.6 MB: ~42,000 pages if all were fresh
    assert faults("default")[1] > 10_000  # served by mmap, handed back when freed: the test can tell


def test_weights_are_read_into_memory_of_their_own_not_left_mapped(tiny_model_path, tmp_path):
    """A float32 checkpoint loaded as float32 (what `train` exports; the fixture too) came back as views
    of the file's memory map at unaligned offsets: a server whose checkpoint was overwritten in place
    died of SIGBUS at its next request. Every weight now lives in memory of its own."""
    import shutil
    from pathlib import Path

    checkpoint = tmp_path / "fp32-checkpoint"
    shutil.copytree(tiny_model_path, checkpoint)
    engine = TransformersEngine(str(checkpoint), device="cpu", dtype="float32")
    tensors = [*engine.model.parameters(), *engine.model.buffers()]
    assert tensors and all(t.data_ptr() % 64 == 0 for t in tensors if t.numel())
    maps = Path("/proc/self/maps")
    if maps.exists():  # Linux: no weight the model reads lies in a mapping of the file, so rewriting it is safe
        mapped = [tuple(int(a, 16) for a in line.split()[0].split("-")) for line in maps.read_text().splitlines()
                  if line.endswith(str(checkpoint / "model.safetensors"))]
        assert not [t for t in tensors if any(lo <= t.data_ptr() < hi for lo, hi in mapped)]
        (checkpoint / "model.safetensors").write_bytes(b"")  # what a training run rewriting it does
        assert engine.infill(InfillRequest(prefix="def f(x):\n    return ", suffix="\n")).candidates
