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
    assert records[0].top is None and score.pass_top == 0.0 and score.shown_parse_share == 1.0


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
    for subset in report["subsets"].values():
        assert subset["score"]["problems"] == 2 and len(subset["records"]) == 2
