"""The evaluator and its sandbox: known-good and known-bad completions, hostile programs."""

import os
import time
from pathlib import Path

import pytest

from infill_lsp import evaluate
from infill_lsp.evaluate import Problem, load_problems
from infill_lsp.sandbox import run_python
from infill_lsp.types import Budget, Candidate, EngineInfo, InfillResult

from conftest import ROOT, TINY_MODEL

DATA = ROOT.parent / "shared" / "fim_data" / "humaneval-infilling"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"HumanEval-Infilling data not at {DATA}")


def test_sandbox_pass_fail_timeout_and_hostile_programs(tmp_path):
    assert run_python("assert sum([1, 2]) == 3").passed
    failed = run_python("assert 1 == 2, 'nope'")
    assert not failed.passed and "nope" in failed.stderr_tail
    started = time.perf_counter()
    loop = run_python("while True:\n    pass", timeout=1)
    assert loop.timed_out and not loop.passed and time.perf_counter() - started < 10
    assert not run_python("import sys\nwhile True: sys.stderr.write('x' * 65536)", timeout=2).passed
    assert not run_python("input()", timeout=5).timed_out  # no stdin: EOF, not a hang
    result = run_python("import os\nopen('left_behind', 'w').write('x')\nassert os.getcwd() != %r" % os.getcwd())
    assert result.passed and not Path("left_behind").exists()  # it ran in its own, now removed, directory
    assert "TRANSFORMERS_OFFLINE" in os.environ  # the evaluator's environment is untouched


def test_sandbox_limits_memory_and_refuses_to_start_processes():
    memory = run_python("x = bytearray(8 << 30)")
    assert not memory.passed and not memory.timed_out and "MemoryError" in memory.stderr_tail
    spawner = run_python("import subprocess, sys\n"
                         "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n")
    assert not spawner.passed and "sandbox: _posixsubprocess is not available" in spawner.stderr_tail
    hostile = run_python("import os\nos.close(0)\nos.close(1)\nos.close(2)\nraise SystemExit(3)")
    assert hostile.returncode == 3 and not hostile.passed


class ScriptedEngine:
    """Answers each problem with a fixed function of the problem (known-good or known-bad)."""

    info = EngineInfo(model="scripted", backend="test")

    def __init__(self, answer):
        self.answer = answer
        self.problems = {}

    def infill(self, request, cancel=None):
        problem = self.problems[request.prefix[-200:]]
        return InfillResult(candidates=[Candidate(text=t, score=s) for t, s in self.answer(problem)])

    def close(self):
        pass

    def register(self, problems):
        for p in problems:
            self.problems[p.prompt[-200:]] = p


@needs_data
def test_known_good_scores_full_and_known_bad_scores_zero():
    problems = load_problems(DATA / evaluate.SUBSETS["single-line"], limit=4)
    good = ScriptedEngine(lambda p: [(p.canonical_solution, -0.1)])
    good.register(problems)
    records, score = evaluate.evaluate(good, problems, budget=Budget(candidates=1))
    assert score.pass_top == 1.0 and score.pass_raw == 1.0 and score.problems == 4
    assert score.shown_parse_share == 1.0

    # raw sample is garbage, but ranking puts the (valid, correct) solution first
    ranked = ScriptedEngine(lambda p: [("return None (", -0.01), (p.canonical_solution, -0.5)])
    ranked.register(problems)
    _, score = evaluate.evaluate(ranked, problems, budget=Budget(candidates=2))
    assert score.pass_top == 1.0 and score.pass_raw == 0.0

    def indented_exit(p):  # parses where the solution stands, fails its tests
        indent = p.canonical_solution[: len(p.canonical_solution) - len(p.canonical_solution.lstrip())]
        return [(indent + "raise SystemExit(1)\n" + p.canonical_solution, -0.1)]

    bad = ScriptedEngine(indented_exit)
    bad.register(problems)
    records, score = evaluate.evaluate(bad, problems, budget=Budget(candidates=1))
    assert score.pass_top == 0.0 and all(r.shown == 1 for r in records)


def test_scores_with_no_suggestion_count_as_fail():
    problem = Problem(task_id="t/0", entry_point="f", prompt="def f():\n    return ", suffix="\n",
                      canonical_solution="1", test="def check(f):\n    assert f() == 1\n")
    empty = ScriptedEngine(lambda p: [("(", -0.1)])  # never parses: nothing is shown
    empty.register([problem])
    records, score = evaluate.evaluate(empty, [problem], budget=Budget(candidates=1))
    assert records[0].top is None and score.pass_top == 0.0 and score.shown_parse_share is None
    assert score.no_suggestion == 1 and score.shown == 0 and not records[0].passed_raw


def _toy(n: int) -> Problem:
    return Problem(task_id=f"t/{n}", entry_point="f", prompt=f"def f():\n    # problem {n}\n    return ",
                   suffix="\n", canonical_solution=str(n), test=f"def check(f):\n    assert f() == {n}\n")


def test_counts_errors_and_empty_engine_output():
    problems = [_toy(n) for n in range(4)]

    def answer(p):
        n = int(p.task_id.split("/")[1])
        if n == 1:
            raise RuntimeError("model blew up")
        if n == 2:
            return []  # the engine returned no candidates at all
        if n == 3:
            return [("99", -0.1), (str(n), -0.2)]  # wrong first, right second: top is the wrong one
        return [(str(n), -0.1)]

    engine = ScriptedEngine(answer)
    engine.register(problems)
    records, score = evaluate.evaluate(engine, problems, budget=Budget(candidates=2), workers=3)
    by_id = {r.task_id: r for r in records}
    assert [r.task_id for r in records] == [p.task_id for p in problems]  # input order kept
    assert by_id["t/0"].passed_top and by_id["t/0"].passed_raw and by_id["t/0"].error is None
    assert not by_id["t/1"].passed_top and "model blew up" in by_id["t/1"].error
    assert by_id["t/2"].shown == 0 and not by_id["t/2"].passed_raw
    assert by_id["t/3"].shown == 2 and by_id["t/3"].top == "99" and not by_id["t/3"].passed_top
    assert score.problems == 4 and score.passed_top_count == 1 and score.pass_top == 0.25
    assert score.passed_raw_count == 1 and score.errors == 1 and score.no_suggestion == 2
    assert score.shown == 3 and score.shown_parsing == 3 and score.shown_parse_share == 1.0
    assert score.mean_ms >= 0 and max(r.latency_ms for r in records) >= score.p95_ms >= 0


def test_an_unavailable_engine_stops_the_run():
    from infill_lsp.engine import EngineUnavailable

    def answer(p):
        raise EngineUnavailable("daemon gone")

    engine = ScriptedEngine(answer)
    engine.register([_toy(0)])
    with pytest.raises(EngineUnavailable):
        evaluate.evaluate(engine, [_toy(0)], budget=Budget(candidates=1))


def test_cli_options_and_bad_subsets(tmp_path):
    import argparse

    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    args = parser.parse_args([])
    assert args.subsets == "single-line,multi-line,random-span-light" and args.candidates == 4
    assert args.timeout == 3.0 and args.workers == 2 and args.model == "" and args.limit is None
    assert Path(args.data) == DATA
    with pytest.raises(SystemExit, match="unknown subsets"):
        evaluate.run(parser.parse_args(["--subsets", "nope"]))
    with pytest.raises(SystemExit, match="no HumanEval-Infilling data"):
        evaluate.run(parser.parse_args(["--data", str(tmp_path)]))


@needs_data
def test_eval_command_with_the_tiny_model(tmp_path):
    import json
    import subprocess
    import sys

    out = tmp_path / "eval.json"
    proc = subprocess.run([sys.executable, "-m", "infill_lsp", "--log-level", "ERROR", "eval", "--model",
                           str(TINY_MODEL), "--limit", "2", "--steps", "2", "--max-tokens", "8", "--data", str(DATA),
                           "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "| single-line | 2 |" in proc.stdout and "| random-span-light | 2 |" in proc.stdout
    report = json.loads(out.read_text())
    assert set(report["subsets"]) == {"single-line", "multi-line", "random-span-light"}
    assert report["candidates"] == 4 and report["steps"] == 2 and report["max_tokens"] == 8
    assert report["limit"] == 2 and report["seed"] == 0 and report["model"]
    for subset in report["subsets"].values():
        score = subset["score"]
        assert score["problems"] == 2 and len(subset["records"]) == 2
        for key in ("pass_top", "pass_raw"):
            assert 0.0 <= score[key] <= 1.0
        share = score["shown_parse_share"]
        assert (share is None) if score["shown"] == 0 else (0.0 <= share <= 1.0)
        assert score["shown_parsing"] <= score["shown"] and 0 <= score["no_suggestion"] <= 2
        assert score["mean_ms"] > 0 and score["p95_ms"] >= 0 and score["errors"] == 0
        for record in subset["records"]:
            assert "HumanEval/" in record["task_id"] and record["latency_ms"] > 0
            assert 0 <= record["shown"] <= 4 and isinstance(record["passed_top"], bool)
            assert record["passed_top"] is False or record["shown"] > 0


def test_sandbox_refuses_writes_outside_processes_sockets_and_ctypes(tmp_path):
    outside = tmp_path / "outside.txt"
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    hostile = {
        "write outside": f"open({str(outside)!r}, 'w').write('x')",
        "os.open outside": f"import os\nos.open({str(outside)!r}, os.O_CREAT | os.O_WRONLY)",
        "remove outside": f"import os\nos.remove({str(victim)!r})",
        "rename outside": f"import os\nos.rename({str(victim)!r}, 'mine.txt')",
        "escape by chdir": f"import os\nos.chdir({str(tmp_path)!r})\nopen('outside.txt', 'w')",
        "escape by symlink": f"import os\nos.symlink({str(tmp_path)!r}, 'link')\nopen('link/outside.txt', 'w')",
        "fork bomb": "import os\nwhile True:\n    os.fork()",
        "subprocess": "import subprocess\nsubprocess.run(['true'])",
        "os.system": "import os\nos.system('touch " + str(outside) + "')",
        "network": "import socket\nsocket.create_connection(('127.0.0.1', 9))",
        "ctypes": "import ctypes\nctypes.CDLL(None).system(b'true')",
        "replace the guard": "import sys\nfor f in []: pass\n(lambda: 0).__code__ = (lambda: 1).__code__",
    }
    for name, source in hostile.items():
        started = time.perf_counter()
        result = run_python(source, timeout=5)
        assert not result.passed and not result.timed_out, (name, result)
        assert "sandbox:" in result.stderr_tail, (name, result.stderr_tail)
        assert time.perf_counter() - started < 5, name  # stopped at once, not by the timeout
    assert not outside.exists() and victim.read_text() == "keep me"
    # what a HumanEval solution does still works, including files in its own directory
    assert run_python("import math, re, collections, itertools, functools, heapq, typing\n"
                      "open('scratch.txt', 'w').write('ok')\nassert open('scratch.txt').read() == 'ok'\n"
                      "assert math.gcd(12, 18) == 6").passed
