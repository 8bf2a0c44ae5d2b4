"""`infill-lsp`: serve (the language server), engine (the shared model daemon),
complete (one completion on a file, for a first look), bench (latency table)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

# OpenMP threads that spin while they wait thrash when the CPU is shared (an editor, a build, a
# second server): measured on 2 cores beside one busy process, a 16-step completion took 9.1 s
# with spinning threads and 0.48 s with sleeping ones. Set before torch is imported; the
# environment still wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# ... but a short spin (GNU OpenMP: 20,000 iterations, tens of microseconds) keeps a request's
# threads awake between its many small operations: two threads then beat one on an idle machine
# (146-162 vs 216 ms p50 for the automatic request on 2 cores), and the engine drops to one thread
# for requests while other processes use the CPU (transformers_backend.OthersCpu).
os.environ.setdefault("GOMP_SPINCOUNT", "20000")

from . import __version__

QUIET_COMMANDS = {"bench", "complete", "eval", "doctor"}
HUMANEVAL = str(Path(__file__).resolve().parent.parent.parent / "shared" / "fim_data" / "humaneval-infilling")


def _engine_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="", help="checkpoint directory or hub id in the local HF cache "
                        "(default: google/diffusiongemma-26B-A4B-it); never downloaded")
    parser.add_argument("--engine", default="", metavar="ADDRESS",
                        help="use a running engine instead of loading a model: a vLLM server running DiffusionGemma "
                        "(http(s)://HOST:PORT) or `infill-lsp engine` (its Unix socket path, or its --http URL)")
    parser.add_argument("--engine-api-key", default="", metavar="KEY",
                        help="bearer token for an --engine server started with --api-key "
                        "(default: $INFILL_ENGINE_API_KEY)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    parser.add_argument("--context-tokens", type=int, default=1024, help="prefix tokens sent to the model")
    parser.add_argument("--fast", action=argparse.BooleanOptionalAction, default=None,
                        help="static-shape decoder pass (CUDA graphs on a GPU), same candidates as transformers' "
                        "eager loop (default: on a CPU, where it is faster; off on a GPU)")


def _settings(args: argparse.Namespace):
    import os

    from .config import Settings

    if getattr(args, "engine_api_key", ""):  # the HTTP engine backend reads it from there
        os.environ["INFILL_ENGINE_API_KEY"] = args.engine_api_key
    return Settings(model=args.model, engine_address=args.engine, device=args.device, dtype=args.dtype,
                    context_tokens=args.context_tokens, fast=getattr(args, "fast", None))


def cmd_serve(args: argparse.Namespace) -> int:
    from .lsp.server import build_server

    server = build_server(_settings(args))
    if args.tcp:
        host, _, port = args.tcp.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        if host not in ("127.0.0.1", "localhost", "::1"):
            logging.getLogger("infill_lsp").warning(
                "--tcp %s: LSP has no authentication; anyone who can reach this port can read what is sent "
                "and use the model (see SECURITY.md)", args.tcp)
        server.start_tcp(host, int(port))
    else:
        server.start_io()
    return 0


def cmd_engine(args: argparse.Namespace) -> int:
    import os

    from .engine import load_engine
    from .engine.daemon import default_socket_path, parse_http, serve

    settings = _settings(args)
    config = settings.engine_config()
    if config.address:
        print("infill-lsp engine loads a model itself; --engine is for serve/complete", file=sys.stderr)
        return 2
    path = Path(args.socket) if args.socket else default_socket_path()
    api_key = (args.api_key or os.environ.get("INFILL_ENGINE_API_KEY", "")).strip() or None
    if args.http:
        parse_http(args.http)  # a typo fails before the model loads
        if not api_key:
            print("infill-lsp engine: --http needs --api-key KEY (or INFILL_ENGINE_API_KEY): any user of this "
                  "machine could use a TCP port without one (`openssl rand -hex 32` makes a key; the Unix "
                  "socket is owner-only and needs none)", file=sys.stderr)
            return 2
    if args.max_steps < 1:
        print("infill-lsp engine: --max-steps must be at least 1", file=sys.stderr)
        return 2
    engine = load_engine(config, progress=lambda message, percent: logging.info(
        "%s%s", "" if percent is None else f"{percent:3d}% ", message))
    try:
        serve(engine, path, http=args.http or None, api_key=api_key, max_steps=args.max_steps)
    except KeyboardInterrupt:
        pass
    return 0


def _read_target(target: str) -> tuple[Path, int, int]:
    """FILE:LINE:COL, 1-based like compiler messages."""
    try:
        file, line, col = target.rsplit(":", 2)
        return Path(file), int(line), int(col)
    except ValueError:
        raise SystemExit(f"expected FILE:LINE:COL (1-based), got {target!r}") from None


def cmd_complete(args: argparse.Namespace) -> int:
    from . import context, pipeline, syntax
    from .engine import load_engine
    from .types import Budget

    path, line, col = _read_target(args.target)
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise SystemExit(f"cannot read {path}: {exc}") from None
    cursor = context.cursor_at(text, line - 1, col - 1, context.UTF32)
    if cursor is None:
        raise SystemExit(f"{path} has no line {line}")
    settings = _settings(args)
    engine = load_engine(settings.engine_config())
    language = args.language or syntax.language_for(None, str(path)) or ""
    budget = Budget(candidates=args.candidates, max_middle_tokens=args.max_tokens, steps=args.steps)
    result = pipeline.complete(engine, text, cursor.offset, language_id=language, path=str(path),
                               settings=settings, budget=budget, seed=args.seed)
    t = result.timings
    print(f"{path}:{line}:{col}  language={language or '?'}  model={engine.info.model} "
          f"({engine.info.backend}, {engine.info.device}, {engine.info.dtype})")
    if not result.items:
        print("no suggestion passed validation" + ("" if args.verbose else " (use -v to see the raw candidates)"))
    for rank, item in enumerate(result.items, 1):
        state = "valid" if item.valid else "INVALID"
        if not item.checked:
            state = "unchecked"
        if item.truncated:
            state += ", truncated"
        print(f"#{rank}  score={item.score:+.3f}  {state}")
        for row in item.text.split("\n"):
            print(f"    | {row}")
    if args.verbose:
        print("raw candidates from the engine:")
        for candidate in result.raw:
            print(f"    {candidate.score:+.3f} {candidate.text!r}")
    print(f"timings (ms): tokenize {t.tokenize_ms:.1f}  encode {t.encode_ms:.1f}  denoise {t.denoise_ms:.1f} "
          f"({t.steps} steps)  validate {t.validate_ms:.1f}  rank {t.rank_ms:.1f}  total {t.total_ms:.1f}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    return run_bench(args, _settings(args))


def cmd_train(args: argparse.Namespace) -> int:
    from .train.loop import load_config, train

    config = load_config(Path(args.config)) if args.config else None  # None: the run's own (see `train`)
    overrides = {key: value for key, value in (("steps", args.steps), ("max_minutes", args.minutes)) if value}
    out = Path(args.resume or args.out or "")
    if not str(out):
        raise SystemExit("give --out DIR (a new run) or --resume DIR (continue one)")
    history = train(config, out, init=args.init or None, data=Path(args.data) if args.data else None,
                    shards=Path(args.shards) if args.shards else None, resume=bool(args.resume),
                    device=args.device, humaneval_dir=Path(args.humaneval) if args.humaneval else None,
                    optim_overrides=overrides, data_workers=args.data_workers)
    print(f"wrote {out}: final loss {history[-1]['loss']:.4f} at step {history[-1]['step']}")
    before, after = history[-1].get("heldout_loss_start"), history[-1].get("heldout_loss")
    if before is not None and after is not None:
        print(f"held-out loss: {before:.4f} before this run, {after:.4f} after")
    return 0


def cmd_corpus(args: argparse.Namespace) -> int:
    import random

    from .engine import SHIPPED_MODEL
    from .train.corpus import collect_multilanguage
    from .train.loop import train_tokenizer
    from .train.shards import is_heldout, write_shards

    # Shards hold token ids: by default those of the shipped model, so `train --init` from it (and
    # `train --resume` once a run's own state is gone) can read them. `new` trains a tokenizer.
    source = args.tokenizer or (str(SHIPPED_MODEL) if (SHIPPED_MODEL / "tokenizer.json").exists() else "new")
    corpus = collect_multilanguage(Path(args.humaneval) if args.humaneval else None, args.max_bytes)
    if source != "new":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
        logging.info("tokenizing with %s's tokenizer (`--tokenizer new` trains one)", source)
    else:  # a byte-level BPE trained on a sample of the training files (never the held-out ones)
        rng = random.Random(0)
        texts = [t for t, p in zip(corpus.texts, corpus.paths) if not is_heldout(p)]
        rng.shuffle(texts)
        sample, size = [], 0
        for text in texts:
            if size > args.tokenizer_bytes:
                break
            sample.append(text)
            size += len(text)
        tokenizer = train_tokenizer(sample, args.vocab_size)
    manifest = write_shards(corpus, tokenizer, Path(args.out), context_tokens=args.context_tokens)
    print(f"wrote {args.out}: {len(manifest['shards'])} shards, tokens by language {manifest['tokens']}, "
          f"{manifest['heldout_files']} held-out files, {manifest['duplicates_dropped']} exact duplicates left out")
    if "repo_context" in manifest:
        ctx = manifest["repo_context"]
        print(f"repository context: {ctx['with_context']} of {ctx['documents']} documents, "
              f"{ctx['mean_tokens']} tokens on average (at most {ctx['tokens']})")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import main as doctor

    return doctor(_settings(args).engine_config(), as_json=args.json)


def cmd_eval(args: argparse.Namespace) -> int:
    from . import evaluate

    return evaluate.run(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="infill-lsp", description=__doc__)
    parser.add_argument("--version", action="version", version=f"infill-lsp {__version__}")
    parser.add_argument("--log-level", default=None,
                        help="DEBUG, INFO, WARNING, ERROR (logs go to stderr; default INFO for serve, engine, train "
                        "and corpus, WARNING for the rest unless -v)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the language server (stdio, or --tcp)")
    _engine_args(serve)
    transport = serve.add_mutually_exclusive_group()
    transport.add_argument("--stdio", action="store_true",
                           help="talk over stdin/stdout (the default; clients such as vscode-languageclient pass it)")
    transport.add_argument("--tcp", metavar="HOST:PORT", help="listen on TCP instead of stdio")
    serve.set_defaults(func=cmd_serve)

    engine = sub.add_parser("engine", help="run the resident model daemon (vLLM's HTTP API on an owner-only Unix socket)")
    _engine_args(engine)
    engine.add_argument("--socket", help="socket path (default: $XDG_RUNTIME_DIR/infill-lsp/engine.sock)")
    engine.add_argument("--http", metavar="HOST:PORT", default="",
                        help="also serve the HTTP API on TCP (HOST defaults to 127.0.0.1; PORT alone is fine)")
    engine.add_argument("--api-key", default="", help="bearer token TCP clients must send, needed with --http "
                        "(default: $INFILL_ENGINE_API_KEY; the Unix socket is owner-only and needs none)")
    engine.add_argument("--max-steps", type=int, default=256, metavar="N",
                        help="most denoising steps one request may ask for; more are cut to N, as vLLM's "
                             "max_denoising_steps (default: 256)")
    engine.set_defaults(func=cmd_engine)

    complete = sub.add_parser("complete", help="print ranked completions at FILE:LINE:COL (1-based)")
    _engine_args(complete)
    complete.add_argument("target", metavar="FILE:LINE:COL")
    complete.add_argument("--language", default="", help="LSP languageId (default: from the extension)")
    complete.add_argument("-n", "--candidates", type=int, default=4)
    complete.add_argument("--max-tokens", type=int, default=32)
    complete.add_argument("--steps", type=int, default=16)
    complete.add_argument("--seed", type=int, default=None)
    complete.add_argument("-v", "--verbose", action="store_true", help="also print the raw engine candidates")
    complete.set_defaults(func=cmd_complete)

    bench = sub.add_parser("bench", help="latency table over the fixtures (p50/p95 per stage)")
    _engine_args(bench)
    bench.add_argument("--holes", default="", help="holes.json (default: the repo's fixtures/holes.json)")
    bench.add_argument("--candidates", default="1,4,8", help="comma-separated candidate counts")
    bench.add_argument("--max-tokens", type=int, default=32)
    bench.add_argument("--steps", type=int, default=16)
    bench.add_argument("--repeat", type=int, default=5, help="runs per hole and candidate count")
    bench.add_argument("--big-file-lines", type=int, default=5000,
                       help="also time LSP overhead in a generated file of this many lines (0: skip)")
    bench.add_argument("--clients", default="", metavar="N,N,...",
                       help="load mode: this many simulated editors typing against --engine at once, one round per "
                       "count (e.g. 1,2,4,8); prints completed/cancelled requests, p50/p95 latency and throughput")
    bench.add_argument("--seconds", type=float, default=15.0, help="load mode: how long each round types")
    bench.add_argument("--keystroke-ms", type=float, default=150.0,
                       help="load mode: mean time between an editor's keystrokes (each one sends a request)")
    bench.add_argument("--fuzz", type=int, default=0, metavar="N",
                       help="instead: fuzz `infill-lsp serve` over stdio with N messages, print deaths/hangs/"
                       "tracebacks (needs hypothesis, in the test extra); see docs/reliability.md")
    bench.add_argument("--seed", type=int, default=1, help="--fuzz, --storm: seed of the generated traffic")
    bench.add_argument("--storm", type=float, default=0, metavar="SECONDS",
                       help="instead: a simulated typist (edits, requests, cancels, accepts, opens/closes across "
                            "--files documents) against one `infill-lsp serve` for SECONDS; prints answers, "
                            "latency idle vs storm, memory")
    bench.add_argument("--rate", type=float, default=50.0, help="--storm: requests per second (Poisson)")
    bench.add_argument("--files", type=int, default=200, help="--storm: files in the generated workspace")
    bench.add_argument("--random-weights", default="", metavar="CONFIG",
                       help="instead: the architecture of this config (a path, or a name in infill_lsp/configs, "
                       "e.g. diffusiongemma-26B-A4B-it) with random weights and a synthetic tokenizer of its "
                       "vocabulary size; grid of --prompt-tokens x --middles x --step-counts x --candidates")
    bench.add_argument("--compare", action="store_true",
                       help="--random-weights: the reference loop and the fast path side by side on the same weights")
    bench.add_argument("--prompt-tokens", default="1024,2048", help="--random-weights: prompt sizes, in tokens")
    bench.add_argument("--middles", default="32,64", help="--random-weights: longest middles, in tokens")
    bench.add_argument("--step-counts", default="8,16", help="--random-weights: denoising step budgets")
    bench.add_argument("--starts", type=int, default=2, help="--random-weights: engine starts to time (first, second)")
    bench.add_argument("--layers", type=int, default=0,
                       help="--random-weights: keep only the first N layers (the real shapes in less memory)")
    bench.add_argument("--graphs", default="auto", choices=["auto", "cuda", "compile", "none"],
                       help="--fast/--compare: CUDA graphs of the decoder pass (auto: on a GPU with bf16), "
                       "compile: torch.compile the pass first (slow first requests), none: the static pass eagerly")
    bench.add_argument("--agreement", type=int, default=0, metavar="N",
                       help="--random-weights with --fast/--compare: compare the fast path's tokens with the "
                       "reference's on N seeded requests (whole requests and teacher-forced passes)")
    bench.add_argument("--json", help="also write the results here")
    bench.set_defaults(func=cmd_bench)

    train = sub.add_parser("train", help="train (or with --init, fine-tune) a small DiffusionGemma infill model")
    train.add_argument("--config", help="TOML training config (default: the built-in small config)")
    train.add_argument("--out", default="", help="checkpoint directory to write")
    train.add_argument("--init", default="", help="start from this checkpoint (fine-tuning)")
    train.add_argument("--data", default="", help="train on this repository's source files (fine-tuning)")
    train.add_argument("--shards", default="", help="train on the tokenized shards `infill-lsp corpus` wrote")
    train.add_argument("--resume", default="", metavar="DIR", help="continue the run in DIR from its last checkpoint")
    train.add_argument("--data-workers", type=int, default=None, metavar="N",
                       help="processes sampling batches from --shards ahead of the step (default: none on a CPU, "
                            "up to 8 on a GPU)")
    train.add_argument("--steps", type=int, default=0, help="override the config's step count")
    train.add_argument("--minutes", type=float, default=0, help="override the config's time budget")
    train.add_argument("--device", default="auto")
    train.add_argument("--humaneval", default=HUMANEVAL, help="HumanEval-Infilling data; files containing its "
                       "signatures are left out")
    train.set_defaults(func=cmd_train)

    corpus = sub.add_parser("corpus", help="collect permissively licensed code on this machine into token shards")
    corpus.add_argument("--out", required=True, help="shard directory to write")
    corpus.add_argument("--max-bytes", type=int, default=120_000_000)
    corpus.add_argument("--tokenizer", default="",
                        help="the checkpoint whose tokenizer writes the shards (default: the shipped model's, so its "
                        "weights can train on them); `new`: train a byte-level BPE on the corpus")
    corpus.add_argument("--vocab-size", type=int, default=8192, help="with --tokenizer new")
    corpus.add_argument("--tokenizer-bytes", type=int, default=30_000_000,
                        help="with --tokenizer new: text the tokenizer is trained on")
    corpus.add_argument("--context-tokens", type=int, default=512,
                        help="store each file's repository context (definitions from its package) up to this many "
                        "tokens, for `data.repo_context_tokens` training; 0: none")
    corpus.add_argument("--humaneval", default=HUMANEVAL)
    corpus.set_defaults(func=cmd_corpus)

    doctor = sub.add_parser("doctor", help="check what would serve (model, device, engine, grammars) and say why not")
    _engine_args(doctor)
    doctor.add_argument("--json", action="store_true", help="machine-readable, for editors' health checks")
    doctor.set_defaults(func=cmd_doctor)

    try:
        from . import evaluate
    except ImportError:  # evaluator not installed in this checkout
        evaluate = None
    if evaluate is not None:
        ev = sub.add_parser("eval", help="HumanEval-Infilling: pass@1 of the top suggestion and of a raw sample")
        evaluate.add_arguments(ev)
        ev.set_defaults(func=cmd_eval)

    for command in (bench, doctor, *([ev] if evaluate is not None else [])):
        command.add_argument("-v", "--verbose", action="store_true", help="also show logs")
    args = parser.parse_args(argv)
    if args.log_level is None:  # results-only commands are quiet unless -v; servers and training log progress
        quiet = args.command in QUIET_COMMANDS and not getattr(args, "verbose", False)
        args.log_level = "WARNING" if quiet else "INFO"
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("pygls", "transformers", "httpx", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    if args.log_level.upper() != "DEBUG":
        try:  # no "Loading weights" / "Writing model shards" bars between a command's results
            from transformers.utils import logging as transformers_logging

            transformers_logging.disable_progress_bar()
            transformers_logging.set_verbosity_error()
        except ImportError:
            pass
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a newcomer's first command: say what went wrong, no traceback
        if args.log_level.upper() == "DEBUG":
            raise
        print(f"infill-lsp {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
