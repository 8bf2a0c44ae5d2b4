"""`infill-lsp eval`: HumanEval-Infilling, scored the way the editor would show suggestions.

For each problem the document is prompt + suffix with the cursor between them; the full
pipeline (engine -> clean -> validate -> rank) runs as for a real completion. Metrics:
pass@1 of the top-ranked suggestion (no suggestion = fail), pass@1 of one raw sample (the
engine's first row, cleaned but neither validated nor ranked), the share of shown suggestions
that parse (Python's own `ast`), mean and p95 latency. Model output runs only in
`sandbox.run_python`, never here.
"""

from __future__ import annotations

import ast
import gzip
import json
import logging
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec

from . import pipeline, rank
from .config import Settings
from .sandbox import run_python
from .types import Budget

log = logging.getLogger(__name__)

SUBSETS = {
    "single-line": "HumanEval-SingleLineInfilling.jsonl.gz",
    "multi-line": "HumanEval-MultiLineInfilling.jsonl.gz",
    "random-span": "HumanEval-RandomSpanInfilling.jsonl.gz",
    "random-span-light": "HumanEval-RandomSpanInfillingLight.jsonl.gz",
}


class Problem(msgspec.Struct, frozen=True):
    task_id: str
    entry_point: str
    prompt: str
    suffix: str
    canonical_solution: str
    test: str


class Record(msgspec.Struct):
    task_id: str
    passed_top: bool
    passed_raw: bool
    shown: int
    shown_parsing: int
    latency_ms: float
    top: str | None
    error: str | None = None  # the pipeline raised on this problem (counted as a fail)


class SubsetScore(msgspec.Struct):
    subset: str
    problems: int
    pass_top: float
    pass_raw: float
    shown_parse_share: float | None  # None when nothing was shown at all
    mean_ms: float
    p95_ms: float
    passed_top_count: int = 0
    passed_raw_count: int = 0
    shown: int = 0  # suggestions shown, all problems together
    shown_parsing: int = 0
    no_suggestion: int = 0  # problems where nothing was shown
    errors: int = 0


def default_data_dir() -> Path:
    return Path(__file__).resolve().parent.parent.parent / "shared" / "fim_data" / "humaneval-infilling"


def load_problems(path: Path, limit: int | None = None) -> list[Problem]:
    problems = []
    with gzip.open(path, "rt") as fh:
        for line in fh:
            problems.append(msgspec.json.decode(line, type=Problem))
            if limit is not None and len(problems) >= limit:
                break
    return problems


def program(problem: Problem, middle: str) -> str:
    return f"{problem.prompt}{middle}{problem.suffix}\n{problem.test}\ncheck({problem.entry_point})\n"


def parses(problem: Problem, middle: str) -> bool:
    try:
        ast.parse(problem.prompt + middle + problem.suffix)
        return True
    except (SyntaxError, ValueError):
        return False


def evaluate(engine, problems: list[Problem], *, budget: Budget, settings: Settings = Settings(),
             seed: int | None = 0, timeout: float = 3.0, workers: int = 2) -> tuple[list[Record], SubsetScore]:
    """Complete every problem (sequentially: one model), then test the answers in parallel sandboxes.

    A problem whose completion raises counts as a fail with its error recorded; an engine that
    is unavailable (daemon gone) stops the run.
    """
    from .engine import EngineUnavailable

    from .progress import progress

    completions = []
    for problem in progress(problems, desc="completing", unit="problems"):
        text = problem.prompt + problem.suffix
        t0 = time.perf_counter()
        try:
            result = pipeline.complete(engine, text, len(problem.prompt), language_id="python", settings=settings,
                                       budget=budget, seed=seed)
        except EngineUnavailable:
            raise
        except Exception as exc:  # one bad problem must not lose the whole run
            log.warning("%s: completion failed: %r", problem.task_id, exc)
            completions.append((problem, None, None, 0, 0, (time.perf_counter() - t0) * 1e3, repr(exc)))
            continue
        top = result.items[0].text if result.items else None
        raw = rank.clean(result.raw[0].text, problem.suffix, rank.line_before_cursor(problem.prompt)) if result.raw else None
        shown_parsing = sum(parses(problem, item.text) for item in result.items)
        completions.append((problem, top, raw, len(result.items), shown_parsing, result.timings.total_ms, None))

    def judge(entry):
        problem, top, raw, shown, shown_parsing, latency, error = entry
        passed_top = top is not None and run_python(program(problem, top), timeout).passed
        if raw is None:  # the engine returned nothing at all
            passed_raw = False
        elif raw == top:
            passed_raw = passed_top
        else:
            passed_raw = run_python(program(problem, raw), timeout).passed
        return Record(problem.task_id, passed_top, passed_raw, shown, shown_parsing, latency, top, error)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        records = list(progress(pool.map(judge, completions), total=len(completions), desc="testing",
                                unit="problems"))
    return records, score("", records)


def score(subset: str, records: list[Record]) -> SubsetScore:
    n = max(1, len(records))
    latencies = sorted(r.latency_ms for r in records) or [0.0]
    shown = sum(r.shown for r in records)
    return SubsetScore(
        subset=subset, problems=len(records),
        pass_top=sum(r.passed_top for r in records) / n,
        pass_raw=sum(r.passed_raw for r in records) / n,
        shown_parse_share=(sum(r.shown_parsing for r in records) / shown) if shown else None,
        mean_ms=statistics.fmean(latencies),
        p95_ms=latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))],
        passed_top_count=sum(r.passed_top for r in records),
        passed_raw_count=sum(r.passed_raw for r in records),
        shown=shown,
        shown_parsing=sum(r.shown_parsing for r in records),
        no_suggestion=sum(r.shown == 0 for r in records),
        errors=sum(r.error is not None for r in records),
    )


def _percent(share: float | None) -> str:
    return "n/a" if share is None else f"{share:.1%}"


def add_arguments(parser) -> None:
    parser.add_argument("--model", default="", help="checkpoint directory or cached hub id")
    parser.add_argument("--engine", default="", metavar="SOCKET", help="use a running `infill-lsp engine`")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--context-tokens", type=int, default=1024)
    parser.add_argument("--data", default=str(default_data_dir()), help="HumanEval-Infilling directory")
    parser.add_argument("--subsets", default="single-line,multi-line,random-span-light",
                        help=f"comma-separated, of: {', '.join(SUBSETS)}")
    parser.add_argument("--limit", type=int, default=None, help="first N problems of each subset")
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds per test run")
    parser.add_argument("--workers", type=int, default=2, help="sandboxes run in parallel")
    parser.add_argument("--json", help="write the scores and per-problem records here")
    parser.add_argument("--heldout", default="", metavar="SHARDS",
                        help="also run the per-language held-out check on this shard directory's held-out files")
    parser.add_argument("--heldout-files", type=int, default=20, help="held-out files per language")
    parser.add_argument("--repo-heldout", default="", metavar="SHARDS",
                        help="also run the repository-level held-out check (holes at names defined in a sibling "
                             "file, with and without repository context) on this shard directory's held-out files")
    parser.add_argument("--repo-heldout-files", type=int, default=10,
                        help="held-out files per language for --repo-heldout")


def _held_out(shards: str, files_per_language: int, repository: bool = False):
    """The holes of the per-file (heldout.py) or repository-level (repo_heldout.py) held-out check
    from a shard directory, or None when no directory is given."""
    if not shards:
        return None
    from .train.shards import read_heldout

    if repository:
        from .repo_heldout import cut_holes
    else:
        from .heldout import cut_holes
    try:
        return cut_holes(read_heldout(Path(shards)), files_per_language=files_per_language)
    except OSError as exc:
        raise SystemExit(f"no held-out files in {shards}: {exc}") from None


def run(args) -> int:
    from .engine import load_engine

    settings = Settings(model=args.model, engine_address=args.engine, device=args.device, dtype=args.dtype,
                        context_tokens=args.context_tokens)
    data = Path(args.data)
    names = [s.strip() for s in args.subsets.split(",") if s.strip()]
    heldout_holes = _held_out(args.heldout, args.heldout_files)
    repo_holes = _held_out(args.repo_heldout, args.repo_heldout_files, repository=True)
    if args.limit == 0:  # `--limit 0`: no HumanEval, only the held-out checks
        names = []
    unknown = [n for n in names if n not in SUBSETS]
    if unknown:
        raise SystemExit(f"unknown subsets {unknown}; known: {', '.join(SUBSETS)}")
    missing = [str(data / SUBSETS[n]) for n in names if not (data / SUBSETS[n]).is_file()]
    if missing:
        raise SystemExit(f"no HumanEval-Infilling data: {', '.join(missing)} (--data DIR)")
    budget = Budget(candidates=args.candidates, max_middle_tokens=args.max_tokens, steps=args.steps)
    engine = load_engine(settings.engine_config())
    try:
        scores, report = [], {"model": engine.info.model, "device": engine.info.device, "dtype": engine.info.dtype,
                              "candidates": args.candidates, "max_tokens": args.max_tokens, "steps": args.steps,
                              "seed": args.seed, "limit": args.limit, "timeout": args.timeout, "subsets": {}}
        for name in names:
            problems = load_problems(data / SUBSETS[name], args.limit)
            records, subset_score = evaluate(engine, problems, budget=budget, settings=settings, seed=args.seed,
                                             timeout=args.timeout, workers=args.workers)
            subset_score.subset = name
            scores.append(subset_score)
            report["subsets"][name] = {"score": msgspec.to_builtins(subset_score),
                                       "records": msgspec.to_builtins(records)}
        heldout_results = None
        if heldout_holes is not None:
            from .heldout import run_holes

            heldout_results = run_holes(engine, heldout_holes, budget=budget, settings=settings, seed=args.seed)
            report["heldout"] = msgspec.to_builtins(heldout_results)
        repo_results = None
        if repo_holes is not None:
            from .repo_heldout import run_holes as run_repo_holes

            repo_results = run_repo_holes(engine, repo_holes, budget=budget, settings=settings, seed=args.seed)
            report["repo_heldout"] = msgspec.to_builtins(repo_results)
    finally:
        engine.close()
    print(f"HumanEval-Infilling, model {engine.info.model} ({engine.info.device}), {args.candidates} candidates, "
          f"{args.steps} steps, max {args.max_tokens} tokens, seed {args.seed}")
    if scores:
        print("| subset | problems | pass@1 top-ranked | pass@1 raw sample | shown that parse | no suggestion "
              "| mean ms | p95 ms |")
        print("|---|---|---|---|---|---|---|---|")
    for s in scores:
        print(f"| {s.subset} | {s.problems} | {s.pass_top:.1%} ({s.passed_top_count}) "
              f"| {s.pass_raw:.1%} ({s.passed_raw_count}) | {_percent(s.shown_parse_share)} ({s.shown_parsing}/{s.shown}) "
              f"| {s.no_suggestion} | {s.mean_ms:.0f} | {s.p95_ms:.0f} |")
        if s.errors:
            print(f"  {s.subset}: {s.errors} problems failed to complete (see the log / JSON records)")
    if heldout_results is not None:
        from .heldout import table

        print(f"\nHeld-out files ({args.heldout}), exact match of the suggestion with the removed text:")
        print(table(heldout_results))
    if repo_results is not None:
        from .repo_heldout import table as repo_table

        print(f"\nRepository-level held-out check ({args.repo_heldout}): holes at names defined in a sibling file, "
              f"without repository context / with it read only to finish a typed name (names.py; what "
              f"\"auto\" gives a checkpoint that declares no layout) / with it in the prompt (forced on); "
              f"cold p50/p95, warm = the same request again:")
        print(repo_table(repo_results))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0
