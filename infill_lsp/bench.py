"""`infill-lsp bench`: where the time goes, per pipeline stage, p50/p95.
(`--clients 1,2,4,8` with `--engine` is the load mode instead: `infill_lsp/loadbench.py`.)

Two tables:
1. the pipeline over every hole in fixtures/holes.json, for 1, 4 and 8 candidates;
2. LSP overhead: a real `infill-lsp serve` subprocess driven over stdio with a 5,000-line
   file; overhead = a time minus the model's own time (the engine's tokenize, encode and
   denoise as the server reports it in `infill/stats`), for two times: the editor's round trip
   (pygls client: request encoded and written -> reply read and decoded; so JSON-RPC parsing and
   encoding on both ends, both pipes, a didChange the server may still be applying, windowing,
   validation, ranking, building the reply) and the server's handler (the inlineCompletion
   handler from entry, params already parsed, to the reply object built, before it is encoded:
   no JSON-RPC parsing or encoding, no pipe).

Each table prints what each of its figures covers (`PIPELINE_COLUMNS`, `LSP_ROWS`).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from . import context, pipeline
from .config import Settings
from .progress import Progress, progress
from .types import Budget

STAGES = ("tokenize_ms", "encode_ms", "denoise_ms", "validate_ms", "rank_ms", "total_ms")
# The pipeline table's columns: (heading, timing, what exactly it covers).
PIPELINE_COLUMNS = (
    ("tokenize", "tokenize_ms", "engine: the prompt tokenized and the canvas rows laid out"),
    ("encode", "encode_ms", "engine: the prefix's encoder pass (its KV cache), repeated over the rows"),
    ("denoise", "denoise_ms", "engine: the denoising steps (decoding the rows to text is in total only)"),
    ("clean+validate", "validate_ms", "the candidates cleaned, then validated with tree-sitter (and CPython)"),
    ("rank", "rank_ms", "ordering and dropping (empty, duplicate, invalid)"),
    ("non-model", "overhead_ms", "context window + clean+validate + rank"),
    ("total", "total_ms", "pipeline.complete, context window to ranked items (no LSP, no JSON-RPC)"),
)
# The LSP overhead table's rows: (label, what the time covers); overhead = that time minus the model's.
LSP_ROWS = (
    ("editor round trip", "pygls client over stdio, request encoded and written -> reply read and decoded: "
     "JSON-RPC parsing and encoding on both ends, both pipes, the handler"),
    ("server handler", "inlineCompletion handler, entry (params already parsed) -> reply object built: "
     "no JSON-RPC parsing or encoding, no pipe"),
)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def default_holes() -> Path:
    return Path(__file__).resolve().parent.parent / "fixtures" / "holes.json"


def load_holes(path: Path) -> list[tuple[str, int, str, str]]:
    """(text, offset, language, path) per hole; LINE:COL are 1-based code points."""
    holes = []
    for hole in json.loads(path.read_text()):
        file = path.parent / hole["file"]
        text = file.read_text()
        cursor = context.cursor_at(text, hole["line"] - 1, hole["col"] - 1, context.UTF32)
        if cursor is None:
            raise ValueError(f"{file}:{hole['line']} does not exist")
        holes.append((text, cursor.offset, hole.get("language", ""), str(file)))
    return holes


def pipeline_table(engine, holes, counts: list[int], args, settings: Settings) -> list[dict]:
    rows = []
    bar = Progress(len(counts) * (min(len(holes), 1) + args.repeat * len(holes)), desc="pipeline", unit="requests")
    for count in counts:
        budget = Budget(candidates=count, max_middle_tokens=args.max_tokens, steps=args.steps)
        samples: dict[str, list[float]] = {stage: [] for stage in (*STAGES, "overhead_ms")}
        steps = []
        for text, offset, language, path in holes[:1]:  # warm-up, not counted
            pipeline.complete(engine, text, offset, language_id=language, path=path, settings=settings,
                              budget=budget, seed=0)
            bar.update(1, candidates=count)
        for run in range(args.repeat):
            for text, offset, language, path in holes:
                result = pipeline.complete(engine, text, offset, language_id=language, path=path,
                                           settings=settings, budget=budget, seed=run)
                for stage in STAGES:
                    samples[stage].append(getattr(result.timings, stage))
                samples["overhead_ms"].append(result.timings.overhead_ms)
                steps.append(result.timings.steps)
                bar.update(1, candidates=count)
        row = {"candidates": count, "n": len(samples["total_ms"]), "mean_steps": statistics.mean(steps)}
        for stage, values in samples.items():
            row[stage] = {"p50": percentile(values, 50), "p95": percentile(values, 95)}
        rows.append(row)
    bar.close()
    return rows


def print_pipeline_table(rows: list[dict]) -> None:
    print("\npipeline latency (ms, p50 / p95) over the fixture holes")
    header = f"| {'cand':>4} | {'n':>4} | {'steps':>5} | " + " | ".join(f"{n:>15}" for n, _, _ in PIPELINE_COLUMNS) + " |"
    print(header)
    print("|" + "|".join("---" for _ in range(3 + len(PIPELINE_COLUMNS))) + "|")
    for row in rows:
        cells = [f"{row[k]['p50']:7.1f} / {row[k]['p95']:5.1f}" for _, k, _ in PIPELINE_COLUMNS]
        print(f"| {row['candidates']:>4} | {row['n']:>4} | {row['mean_steps']:5.1f} | " + " | ".join(cells) + " |")
    for name, _, covers in PIPELINE_COLUMNS:
        print(f"  {name}: {covers}")


def print_lsp_table(overhead: dict) -> None:
    print(f"\nLSP overhead, {overhead['lines']}-line file, {overhead['candidates']} candidates, n={overhead['n']}: "
          f"each time minus the model's own (the engine's tokenize + encode + denoise, from infill/stats)")
    print("| measured | overhead p50 | overhead p95 | time p50 | time p95 |")
    print("|---|---|---|---|---|")
    (editor, _), (server, _) = LSP_ROWS
    print(f"| {editor} | {overhead['overhead_p50']:.2f} ms | {overhead['overhead_p95']:.2f} ms | "
          f"{overhead['roundtrip_p50']:.1f} ms | {overhead['roundtrip_p95']:.1f} ms |")
    print(f"| {server} | {overhead['server_overhead_p50']:.2f} ms | {overhead['server_overhead_p95']:.2f} ms | "
          f"{overhead['handler_p50']:.1f} ms | {overhead['handler_p95']:.1f} ms |")
    for name, covers in LSP_ROWS:
        print(f"  {name}: {covers}")


def big_python_file(lines: int) -> tuple[str, int, int]:
    """A plausible 5,000-line module and a cursor in its middle (line, character)."""
    block = [
        "def function_{i}(values, scale={i}):",
        '    """Scale and sum the values."""',
        "    total = 0",
        "    for value in values:",
        "        total += value * scale",
        "    return total",
        "",
    ]
    out: list[str] = []
    i = 0
    while len(out) < lines:
        out.extend(line.format(i=i) for line in block)
        i += 1
    out = out[:lines]
    middle = (lines // 2) // len(block) * len(block) + 5  # a "    return total" line
    out[middle] = "    return "
    return "\n".join(out) + "\n", middle, len(out[middle])


async def lsp_overhead(args, settings: Settings, candidates: int = 8) -> dict:
    from lsprotocol import types

    text, line, character = big_python_file(args.big_file_lines)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big_module.py"
        path.write_text(text)
        uri = path.as_uri()
        client = editor_client("infill-bench")
        # stderr is a pipe nobody reads: keep the server quiet so it never fills up
        command = [sys.executable, "-m", "infill_lsp", "--log-level", "ERROR", "serve"]
        if settings.engine_address:
            command += ["--engine", settings.engine_address]
        else:
            command += ["--model", settings.model, "--device", settings.device, "--dtype", settings.dtype]
        await client.start_io(*command)
        try:
            options = {"candidates": candidates, "invokedCandidates": candidates, "maxTokens": args.max_tokens,
                       "steps": args.steps, "invokedSteps": args.steps}
            await client.initialize_async(types.InitializeParams(
                capabilities=types.ClientCapabilities(), initialization_options=options))
            client.initialized(types.InitializedParams())
            client.text_document_did_open(types.DidOpenTextDocumentParams(
                types.TextDocumentItem(uri=uri, language_id="python", version=1, text=text)))
            params = types.InlineCompletionParams(
                text_document=types.TextDocumentIdentifier(uri),
                position=types.Position(line, character),
                context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
            )
            for _ in range(6000):  # wait for the model to load
                stats = _plain(await client.protocol.send_request_async("infill/stats", {}))
                if stats["engineReady"] or stats["engineError"]:
                    break
                await asyncio.sleep(0.1)
            if not stats["engineReady"]:
                raise RuntimeError(f"the server could not load the engine: {stats['engineError']}")
            overheads, totals, server_side, handler = [], [], [], []
            for run in progress(range(args.repeat * 6 + 1), desc="LSP overhead", unit="requests"):
                # One keystroke elsewhere, so each request sees a new document version.
                client.text_document_did_change(types.DidChangeTextDocumentParams(
                    text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=run + 2),
                    content_changes=[types.TextDocumentContentChangePartial(
                        range=types.Range(types.Position(0, 0), types.Position(0, 0)), text="#\n" if run % 2 == 0 else "")],
                ))
                if run % 2 == 0:
                    params.position = types.Position(params.position.line + 1, character)
                start = time.perf_counter()
                await client.text_document_inline_completion_async(params)
                elapsed = (time.perf_counter() - start) * 1e3
                last = _plain(await client.protocol.send_request_async("infill/stats", {}))["lastTimings"]
                model_ms = last["tokenize_ms"] + last["encode_ms"] + last["denoise_ms"]
                if run:  # the first one warms caches
                    overheads.append(elapsed - model_ms)
                    server_side.append(last["handler_ms"] - model_ms)
                    handler.append(last["handler_ms"])
                    totals.append(elapsed)
            await client.shutdown_async(None)
            client.exit(None)
        finally:
            server = client._server
            if server is not None and server.returncode is None:
                await asyncio.sleep(0.5)
                if server.returncode is None:
                    server.kill()
            await client.stop()
    return {"lines": args.big_file_lines, "candidates": candidates, "n": len(overheads),
            "overhead_p50": percentile(overheads, 50), "overhead_p95": percentile(overheads, 95),
            "roundtrip_p50": percentile(totals, 50), "roundtrip_p95": percentile(totals, 95),
            "server_overhead_p50": percentile(server_side, 50), "server_overhead_p95": percentile(server_side, 95),
            "handler_p50": percentile(handler, 50), "handler_p95": percentile(handler, 95)}


def editor_client(name: str):
    """A pygls client that takes the server's notifications as an editor would (status, log lines,
    messages) instead of logging a warning for each one."""
    from lsprotocol import types
    from pygls.lsp.client import LanguageClient

    client = LanguageClient(name, "1")
    for method in ("infill/status", types.WINDOW_LOG_MESSAGE, types.WINDOW_SHOW_MESSAGE, types.PROGRESS):
        client.feature(method)(lambda *args: None)
    return client


def _plain(value):
    """pygls hands custom-method results back as namedtuples; the bench wants dicts."""
    if hasattr(value, "_asdict"):
        return {k: _plain(v) for k, v in value._asdict().items()}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def run_bench(args, settings: Settings) -> int:
    if getattr(args, "fuzz", 0):  # robustness instead of latency: infill_lsp/lsp/fuzz.py
        from .lsp.fuzz import TINY_MODEL, fuzz_main

        return fuzz_main(args.fuzz, args.seed, model=settings.model or TINY_MODEL, json_path=args.json)
    if getattr(args, "storm", 0):  # a simulated typist against one server: infill_lsp/storm.py
        from .storm import storm_main

        return storm_main(args, settings)
    if getattr(args, "clients", ""):  # load mode: N simulated editors against one running engine
        from .loadbench import run_load

        return run_load(args, settings)
    if getattr(args, "random_weights", ""):  # the real architecture, random weights: infill_lsp/archbench.py
        from .archbench import run_arch_bench

        return run_arch_bench(args, settings)
    from .engine import load_engine

    counts = [int(c) for c in args.candidates.split(",") if c.strip()]
    holes = load_holes(Path(args.holes) if args.holes else default_holes())
    if getattr(args, "fast", False) and not settings.engine_address:  # the static fast decoder path
        from .archbench import fast_engine_from_settings

        engine = fast_engine_from_settings(settings)
    else:
        engine = load_engine(settings.engine_config())
    import torch

    print(f"model {engine.info.model} ({engine.info.backend}, {engine.info.device}, {engine.info.dtype}); "
          f"torch threads {torch.get_num_threads()}; {len(holes)} holes x {args.repeat} runs; "
          f"max {args.max_tokens} tokens, {args.steps} steps")
    rows = pipeline_table(engine, holes, counts, args, settings)
    print_pipeline_table(rows)
    report = {"model": engine.info.model, "device": engine.info.device, "pipeline": rows}
    engine.close()
    if args.big_file_lines:
        overhead = asyncio.run(lsp_overhead(args, settings))
        report["lsp_overhead"] = overhead
        print_lsp_table(overhead)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0
