"""`infill-lsp bench --random-weights CONFIG [--fast | --compare]`: the real architecture's latency.

Builds the model from a published config with random weights (engine/random_weights.py) and times
what the LSP runs for a completion (`pipeline.complete`: context window, tokenization, the encoded
prefix with its reuse across keystrokes, canvas and clamping, token healing, the denoising loop,
validation and ranking) over a grid: prompt tokens x middle tokens x denoising steps x candidates.
Each cell types one more character per request at the cursor, as an editor does, so the encoded
prefix is reused the way it is while typing; a cold prefill (nothing reused) is timed per prompt
size as well. Engine starts are timed too: the first, then a second in the same process.

`--compare` holds one FastEngine and answers every request twice on the same weights: through
transformers' loop (the reference) and through the static fast path, side by side.
`--agreement N` compares the two paths' tokens on N seeded requests: final tokens of whole
requests, and one pass at a time on the reference's own inputs (teacher-forced), next to the
reference's agreement with itself when only its batch size changes (the floor that bf16 allows).
"""

from __future__ import annotations

import gc
import json
import platform
import statistics
import time
from pathlib import Path

import msgspec

from . import pipeline
from .bench import big_python_file, percentile
from .config import Settings
from .types import Budget, InfillRequest

TYPED = "total * scale + value if values else default_value_for_an_empty_sequence"


def _ints(text: str) -> list[int]:
    return [int(x) for x in str(text).split(",") if x.strip()]


class _Path:
    """One of the engine's two request paths, shaped as an Engine for `pipeline.complete`."""

    def __init__(self, engine, infill, name: str):
        self.engine, self.infill, self.name = engine, infill, name
        self.info = msgspec.structs.replace(engine.info, backend=name)

    def close(self) -> None:
        pass


def make_engine(args, settings: Settings, prefix_tokens: int, progress=None):
    """The engine the bench measures: random weights (--random-weights) or a checkpoint (--model)."""
    fast = bool(getattr(args, "fast", False) or getattr(args, "compare", False))
    kwargs = dict(device=settings.device, dtype=settings.dtype, prefix_tokens=prefix_tokens,
                  suffix_head_tokens=settings.suffix_tokens, progress=progress)
    if fast:
        kwargs["graphs"] = getattr(args, "graphs", "auto")
        if getattr(args, "middles", ""):
            kwargs["capture_middles"] = tuple(_ints(args.middles))
    if getattr(args, "random_weights", ""):
        from .engine.random_weights import random_weights_engine

        return random_weights_engine(args.random_weights, fast=fast, layers=getattr(args, "layers", 0) or None,
                                     **kwargs)
    from .engine import default_model

    model = settings.model or default_model()
    if fast:
        from .engine.fast import FastEngine

        return FastEngine(model, **kwargs)
    from .engine.transformers_backend import TransformersEngine

    return TransformersEngine(model, **kwargs)


def fast_engine_from_settings(settings: Settings):
    """`bench --fast` with --model: the FastEngine for the fixture-holes table."""
    from .engine import default_model
    from .engine.fast import FastEngine

    cfg = settings.engine_config()
    return FastEngine(settings.model or default_model(), device=cfg.device, dtype=cfg.dtype,
                      prefix_tokens=cfg.prefix_tokens, suffix_head_tokens=cfg.suffix_head_tokens)


def _free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def time_starts(args, settings: Settings, prefix_tokens: int, count: int):
    """Start the engine `count` times in this process; returns (last engine, start records)."""
    starts = []
    engine = None
    for k in range(max(1, count)):
        if engine is not None:
            engine.close()
            engine = None
            _free_memory()
        marks: list[tuple[float, str, int]] = []
        t0 = time.perf_counter()

        def progress(message: str, percent: int | None, marks=marks, t0=t0) -> None:
            marks.append((time.perf_counter() - t0, message, percent))

        engine = make_engine(args, settings, prefix_tokens, progress)
        total = time.perf_counter() - t0
        stages: dict[str, float] = {}
        for (at, message, _), nxt in zip(marks, [*marks[1:], (total, "", 100)]):
            # one stage per kind: "capturing decoder pass 3/8" and "reading weights: 1.2 of 3.4 GB" each count once
            key = message.split(" ")[0] if message.startswith("capturing") else message.split(":")[0]
            stages[key] = stages.get(key, 0.0) + nxt[0] - at
        starts.append({"start": k + 1, "seconds": total, "stages": stages})
    return engine, starts


def _document() -> tuple[str, int]:
    text, line, character = big_python_file(6000)
    lines = text.split("\n")
    return text, sum(len(x) + 1 for x in lines[:line]) + character


def _typed(document: str, offset: int, keystrokes: int) -> tuple[str, int]:
    typed = (TYPED * (1 + keystrokes // len(TYPED)))[:keystrokes]
    return document[:offset] + typed + document[offset:], offset + keystrokes


def _summary(samples: dict[str, list[float]]) -> dict:
    return {k: {"p50": percentile(v, 50), "p95": percentile(v, 95), "mean": statistics.mean(v) if v else float("nan")}
            for k, v in samples.items()}


def grid(engine, paths: list[_Path], args, settings: Settings, save=lambda rows, cold: None):
    """Latency rows per (path, prompt, middle, steps, candidates) and the cold prefill per prompt size.

    `save(rows, cold)` runs after every cell, so a run stopped at its time limit keeps what it measured.
    """
    document, offset = _document()
    rows, cold = [], []
    keystroke = 0
    for prompt in _ints(args.prompt_tokens):
        engine.prefix_tokens = prompt
        cell_settings = msgspec.structs.replace(settings, prefix_chars=prompt * 16, context_tokens=prompt)
        for path in paths:  # a cold prefill: nothing of the prefix reused
            times = []
            for run in range(2):
                engine._checkpoint = None
                text, at = _typed(document, offset, keystroke := keystroke + 1)
                result = pipeline.complete(path, text, at, language_id="python", settings=cell_settings,
                                           budget=Budget(candidates=1, max_middle_tokens=8, steps=1), seed=run)
                times.append(result.timings.encode_ms)
            cold.append({"path": path.name, "prompt_tokens": result.timings.prompt_tokens, "encode_ms": times[-1]})
        for middle in _ints(args.middles):
            for steps in _ints(args.step_counts):
                for count in _ints(args.candidates):
                    budget = Budget(candidates=count, max_middle_tokens=middle, steps=steps)
                    for path in paths:
                        samples: dict[str, list[float]] = {k: [] for k in (
                            "tokenize_ms", "encode_ms", "denoise_ms", "step_ms", "validate_rank_ms", "total_ms")}
                        steps_run, tokens = [], []
                        for run in range(args.repeat + 1):  # the first one warms the cell up
                            text, at = _typed(document, offset, keystroke := keystroke + 1)
                            result = pipeline.complete(path, text, at, language_id="python", settings=cell_settings,
                                                       budget=budget, seed=run)
                            t = result.timings
                            if run == 0:
                                continue
                            samples["tokenize_ms"].append(t.tokenize_ms)
                            samples["encode_ms"].append(t.encode_ms)
                            samples["denoise_ms"].append(t.denoise_ms)
                            samples["step_ms"].append(t.denoise_ms / max(t.steps, 1))
                            samples["validate_rank_ms"].append(t.validate_ms + t.rank_ms + t.context_ms)
                            samples["total_ms"].append(t.total_ms)
                            steps_run.append(t.steps)
                            tokens.append(t.prompt_tokens)
                        rows.append({"path": path.name, "prompt": prompt, "prompt_tokens": statistics.mean(tokens),
                                     "middle": middle, "steps": steps, "candidates": count, "n": len(tokens),
                                     "steps_run": statistics.mean(steps_run), **_summary(samples)})
                        r = rows[-1]
                        print(f"  measured {path.name}: prompt {r['prompt_tokens']:.0f} tok, middle {middle}, "
                              f"{steps} steps, {count} cand: total p50 {r['total_ms']['p50']:.1f} ms, "
                              f"denoise {r['denoise_ms']['p50']:.1f} ms", flush=True)
                        save(rows, cold)
    return rows, cold


def print_grid(rows: list[dict]) -> None:
    print("\nper-request latency, ms (p50 / p95), typing at the cursor (the encoded prefix is reused)")
    print("| path | prompt tok | middle | steps | cand | n | tokenize | encode | denoise | per step | "
          "validate+rank | total |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        def cell(key: str, r=r) -> str:
            return f"{r[key]['p50']:.1f} / {r[key]['p95']:.1f}"

        print(f"| {r['path']} | {r['prompt_tokens']:.0f} | {r['middle']} | {r['steps_run']:.0f}/{r['steps']} | "
              f"{r['candidates']} | {r['n']} | {r['tokenize_ms']['p50']:.1f} | {cell('encode_ms')} | "
              f"{cell('denoise_ms')} | {r['step_ms']['p50']:.1f} | {r['validate_rank_ms']['p50']:.1f} | "
              f"{cell('total_ms')} |")


def print_speedups(rows: list[dict]) -> None:
    by_cell: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        by_cell.setdefault((r["prompt"], r["middle"], r["steps"], r["candidates"]), {})[r["path"]] = r
    print("\nfast vs reference (total p50 and per-step denoise p50)")
    print("| prompt | middle | steps | cand | reference total | fast total | speed-up | reference step | fast step |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (prompt, middle, steps, count), paths in by_cell.items():
        if {"reference", "fast"} <= paths.keys():
            ref, fast = paths["reference"], paths["fast"]
            print(f"| {prompt} | {middle} | {steps} | {count} | {ref['total_ms']['p50']:.1f} | "
                  f"{fast['total_ms']['p50']:.1f} | {ref['total_ms']['p50'] / fast['total_ms']['p50']:.2f}x | "
                  f"{ref['step_ms']['p50']:.1f} | {fast['step_ms']['p50']:.1f} |")


def agreement(engine, args, count: int) -> dict:
    """Token agreement of the fast path with the reference on `count` seeded requests."""
    import torch

    document, offset = _document()
    settings = Settings()
    prompts, middles, steps_list = _ints(args.prompt_tokens), _ints(args.middles), _ints(args.step_counts)
    cands = [c for c in _ints(args.candidates) if c > 1] or [4]
    equal = total = identical_requests = 0
    forced = {"agree": 0, "total": 0, "floor_agree": 0, "floor_total": 0, "max_logit_diff": 0.0}
    for k in range(count):
        prompt = prompts[k % len(prompts)]
        engine.prefix_tokens = prompt
        text, at = _typed(document, offset, 1000 + k)
        from . import context

        win = context.window(text, at, prompt * 16, settings.suffix_chars)
        request = InfillRequest(prefix=win.prefix, suffix=win.suffix, language="python", seed=k,
                                budget=Budget(candidates=cands[k % len(cands)], max_middle_tokens=middles[k % len(middles)],
                                              steps=steps_list[k % len(steps_list)]))
        reference, fast, batch = engine.compare(request)
        same = (reference.tokens == fast.tokens) | ~batch.free
        equal += int(same[batch.free].sum())
        total += int(batch.free.sum())
        identical_requests += int(bool(same.all()))
        step = engine.step_agreement(request)
        for key in ("agree", "total", "floor_agree", "floor_total"):
            forced[key] += step[key]
        forced["max_logit_diff"] = max(forced["max_logit_diff"], step["max_logit_diff"])
        del reference, fast
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return {
        "requests": count,
        "final_token_agreement": equal / max(total, 1),
        "identical_requests": identical_requests,
        "teacher_forced_argmax_agreement": forced["agree"] / max(forced["total"], 1),
        "reference_batch_size_floor": forced["floor_agree"] / max(forced["floor_total"], 1),
        "max_logit_diff": forced["max_logit_diff"],
        "positions": total,
        "teacher_forced_positions": forced["total"],
    }


def run_arch_bench(args, settings: Settings) -> int:
    import torch
    import transformers

    prompts = _ints(args.prompt_tokens)
    settings = msgspec.structs.replace(settings, context_tokens=max(prompts))
    engine, starts = time_starts(args, settings, max(prompts), args.starts)
    fast = hasattr(engine, "reference_infill")
    if getattr(args, "compare", False):
        paths = [_Path(engine, engine.infill, "fast"), _Path(engine, engine.reference_infill, "reference")]
    else:
        paths = [_Path(engine, engine.infill, "fast" if fast else "reference")]

    model = engine.model
    text_config = model.config.text_config
    params = sum(p.numel() for p in model.parameters())
    device = engine.info.device
    gpu = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else platform.processor()
    tokenizer_note = ""
    if getattr(args, "random_weights", ""):
        from .engine.random_weights import learned_tokens

        tokenizer_note = (f"; tokenizer: synthetic byte-level BPE with {len(engine.tokenizer):,} entries "
                          f"({learned_tokens(engine.tokenizer):,} learned from this repository, the rest inert "
                          "merges), not Gemma's: timings, not text")
    print(f"model {engine.info.model}: {text_config.num_hidden_layers} layers, hidden {text_config.hidden_size}, "
          f"{text_config.num_experts} experts top-{text_config.top_k_experts}, vocab {text_config.vocab_size:,}, "
          f"{params / 1e9:.2f}B parameters, random weights={bool(getattr(args, 'random_weights', ''))}"
          f"{tokenizer_note}")
    print(f"device {device} ({gpu}), dtype {engine.info.dtype}; torch {torch.__version__}, transformers "
          f"{transformers.__version__}; paths: {', '.join(p.name for p in paths)}; {args.repeat} requests per cell")
    print("\nengine starts (s)")
    print("| start | total | stages |")
    print("|---|---|---|")
    for s in starts:
        stages = ", ".join(f"{k} {v:.1f}" for k, v in s["stages"].items() if v >= 0.05)
        print(f"| {'first' if s['start'] == 1 else 'second (same process)' if s['start'] == 2 else s['start']} | "
              f"{s['seconds']:.1f} | {stages} |")
    if fast:
        static = engine.static
        print(f"fast path: row buckets {static.row_buckets}, prefix buckets {static.prefix_buckets()}, "
              f"CUDA graphs {'on' if static.graphs_enabled else 'off'} ({static.stats['graphs_captured']} captured)"
              f"{', torch.compile' if static.compiled else ''}"
              f"{'; capture FAILED, passes run eagerly: ' + static.capture_error if static.capture_error else ''}")

    report = {"model": engine.info.model, "device": device, "gpu": gpu, "dtype": engine.info.dtype,
              "parameters": params, "torch": torch.__version__, "transformers": transformers.__version__,
              "paths": [p.name for p in paths], "starts": starts}
    if fast:
        report["graphs"] = {"enabled": engine.static.graphs_enabled, "compiled": engine.static.compiled,
                            "capture_error": engine.static.capture_error}

    def save(rows: list[dict], cold: list[dict]) -> None:
        if args.json:
            Path(args.json).write_text(json.dumps({**report, "cold_prefill": cold, "grid": rows}, indent=2,
                                                  default=str))

    rows, cold = grid(engine, paths, args, settings, save)
    print("\ncold prefill (nothing reused), encode ms")
    print("| path | prompt tokens | encode |")
    print("|---|---|---|")
    for c in cold:
        print(f"| {c['path']} | {c['prompt_tokens']} | {c['encode_ms']:.1f} |")
    print_grid(rows)
    if len(paths) > 1:
        print_speedups(rows)
    if fast and engine.static.stats["passes"]:
        stats = engine.static.stats
        print(f"\nfast path, per decoder pass over the whole run: the pass {stats['pass_ms'] / stats['passes']:.2f} ms, "
              f"the rest of the step (vocabulary head on free positions, sampling, bookkeeping) "
              f"{stats['between_passes_ms'] / stats['passes']:.2f} ms ({stats['passes']} passes, "
              f"{stats['rows_finished_early']} rows finished early)")
    report.update(cold_prefill=cold, grid=rows)
    if fast:
        report["graphs"].update(engine.static.stats)
    if getattr(args, "agreement", 0):
        if not fast:
            raise SystemExit("--agreement needs --fast or --compare")
        result = agreement(engine, args, args.agreement)
        report["agreement"] = result
        print(f"\nagreement with the reference over {result['requests']} seeded requests ({result['positions']} "
              f"middle tokens): final tokens {100 * result['final_token_agreement']:.2f}%, identical requests "
              f"{result['identical_requests']}/{result['requests']}")
        print(f"teacher-forced (each pass on the reference's own inputs, {result['teacher_forced_positions']} "
              f"positions): argmax {100 * result['teacher_forced_argmax_agreement']:.2f}%, max |logit diff| "
              f"{result['max_logit_diff']:.4f}; the reference against itself at another batch size: "
              f"{100 * result['reference_batch_size_floor']:.2f}%")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    engine.close()
    return 0
