"""Progress on long work: a tqdm bar on a terminal, plain periodic lines elsewhere (CI logs);
`infill-lsp corpus` and `train` print those lines when stderr is a pipe."""

import io
import logging
import os
import subprocess
import sys

import pytest

from infill_lsp import progress as progress_module
from infill_lsp.progress import Progress, amount, clock, progress

from conftest import ROOT, TINY_MODEL


class Terminal(io.StringIO):
    def isatty(self):
        return True


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_plain_lines_every_interval_with_rate_eta_and_a_closing_line():
    stream, now = io.StringIO(), Clock()
    bar = Progress(100, desc="train", unit="steps", initial=10, every=15, stream=stream, clock=now)
    for _ in range(40):
        now.now += 1
        bar.update(1, loss="3.2100")
    bar.close()
    bar.close()  # once
    lines = stream.getvalue().splitlines()
    # this run's 1 step/s from step 10: at 15 s 25/100, 75 steps left
    assert lines == [
        "train: 25/100 steps (25%), 1 steps/s, elapsed 0:00:15, ETA 0:01:15, loss 3.2100",
        "train: 40/100 steps (40%), 1 steps/s, elapsed 0:00:30, ETA 0:01:00, loss 3.2100",
        "train: done, 40 steps in 0:00:40 (1 steps/s)",
    ]


def test_a_short_run_writes_nothing():
    stream, now = io.StringIO(), Clock()
    with Progress(5, desc="tokenizing", unit="files", every=30, stream=stream, clock=now) as bar:
        for _ in range(5):
            now.now += 1
            bar.update()
    assert stream.getvalue() == ""


def test_the_interval_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(progress_module.EVERY_ENV, "0")
    stream = io.StringIO()
    assert list(progress(range(3), desc="pipeline", unit="requests", stream=stream)) == [0, 1, 2]
    lines = stream.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == ["pipeline: 1/3 requests (33%)", "pipeline: 2/3 requests (67%)",
                                                      "pipeline: 3/3 requests (100%)", "pipeline: done"]
    monkeypatch.setenv(progress_module.EVERY_ENV, "often")
    assert progress_module.default_every() == progress_module.DEFAULT_EVERY


def test_a_deadline_caps_the_eta_and_bytes_are_scaled():
    stream, now = io.StringIO(), Clock()
    bar = Progress(120e6, desc="collecting sources", unit="B", scale=True, every=0, deadline=12, stream=stream,
                   clock=now)
    now.now = 2
    bar.update(1_000_000, source="python-stdlib")
    assert stream.getvalue().splitlines()[-1] == (
        "collecting sources: 1 MB/120 MB (1%), 500 kB/s, elapsed 0:00:02, ETA 0:00:10, source python-stdlib")
    assert bar.eta() == 10  # the deadline's 10 s, not the rate's 238 s
    assert amount(1234, "steps", False) == "1,234 steps" and clock(3725) == "1:02:05"


class Full(io.StringIO):
    writes = 0

    def write(self, text):
        self.writes += 1
        raise OSError(28, "No space left on device")


@pytest.mark.parametrize("stream", [Full, type("FullTerminal", (Full, Terminal), {})])
def test_a_failing_stream_never_stops_the_work(stream):
    stream = stream()
    with Progress(3, desc="train", every=0, refresh=0, stream=stream) as bar:
        for _ in range(3):
            bar.update()
    assert bar.failed and stream.writes == 1  # tried once, then left alone


def test_a_terminal_gets_a_tqdm_bar_with_rate_and_eta():
    stream = Terminal()
    bar = Progress(5, desc="train", unit="steps", stream=stream, every=0, refresh=0)
    assert bar.bar is not None
    for _ in range(3):
        bar.update(1, loss="3.2100")
    shown = stream.getvalue()
    bar.close()
    assert "\r" in shown and "train:" in shown and "3/5" in shown
    assert "steps/s" in shown and "<" in shown  # rate, and elapsed<ETA
    assert "loss=3.2100" in shown
    assert "elapsed" not in shown  # no plain lines on a terminal


def test_a_bar_on_stderr_keeps_log_records_above_it(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    handler = logging.StreamHandler(sys.stderr)
    logging.root.addHandler(handler)
    try:
        with Progress(2, desc="train", unit="steps", refresh=0):
            kinds = {type(h).__name__ for h in logging.root.handlers}
            assert "_TqdmLoggingHandler" in kinds and handler not in logging.root.handlers
        assert handler in logging.root.handlers  # put back
    finally:
        logging.root.removeHandler(handler)


def test_without_tqdm_a_terminal_gets_plain_lines(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    stream = Terminal()
    with Progress(2, desc="eval", unit="problems", every=0, stream=stream) as bar:
        assert bar.bar is None
        bar.update()
    assert stream.getvalue().startswith("eval: 1/2 problems (50%), ")


def run(*args, tmp_path):
    env = {**os.environ, progress_module.EVERY_ENV: "0", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "infill_lsp", *args], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env=env)


def test_corpus_prints_progress_lines_when_stderr_is_not_a_terminal(tmp_path):
    out = run("corpus", "--out", str(tmp_path / "shards"), "--max-bytes", "100000", "--tokenizer", str(TINY_MODEL),
              "--humaneval", str(tmp_path / "none"), tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    collecting = [line for line in lines if line.startswith("collecting sources: ")]
    assert "/100 kB (" in collecting[0]
    assert all("/s, elapsed " in line and ", ETA " in line for line in collecting[:-1])
    assert collecting[-1].startswith("collecting sources: done, ")
    tokenizing = [line for line in lines if line.startswith("tokenizing: ")]
    assert tokenizing and tokenizing[-1].startswith("tokenizing: done, ") and " files in " in tokenizing[-1]
    assert "\r" not in out.stderr  # no bar in a log
    assert out.stdout.startswith(f"wrote {tmp_path / 'shards'}: ")


def test_train_prints_progress_lines_when_stderr_is_not_a_terminal(tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text("[data]\nsequence_tokens = 100\nholes_per_sequence = 4\n\n"
                      "[optim]\nbatch_size = 2\nwarmup = 1\nlog_every = 1\n")
    out = run("train", "--config", str(config), "--steps", "2", "--init", str(TINY_MODEL), "--data",
              str(ROOT / "fixtures" / "samples"), "--out", str(tmp_path / "run"), "--device", "cpu", tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("train: ")]
    assert [line.split(",")[0] for line in lines] == ["train: 1/2 steps (50%)", "train: 2/2 steps (100%)",
                                                      "train: done"]
    assert all(" steps/s" in line and "ETA " in line and "loss " in line for line in lines[:2])
    assert "\r" not in out.stderr
    assert "final loss" in out.stdout and (tmp_path / "run" / "model.safetensors").exists()

