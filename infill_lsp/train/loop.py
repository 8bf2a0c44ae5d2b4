"""`infill-lsp train`: a small DiffusionGemma for code infilling, from scratch or fine-tuned.

Seeded, driven by a TOML config, logging to stderr and `train_log.jsonl`; writes a
checkpoint the engine loads as-is (weights, config, tokenizer), a model card with the corpus
manifest, and the loss curve.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

import msgspec
import numpy as np
import torch

from ..progress import Progress
from .corpus import Corpus, collect_multilanguage, collect_repository
from .holes import HoleSampler, holes_loss
from . import repo
from .objective import ExampleBuilder, collate, infill_loss, sample_split
from .shards import Document, TokenData, duplicates, heldout_paths, read_heldout
from .workers import BatchWorkers, default_workers

log = logging.getLogger(__name__)


class ModelShape(msgspec.Struct, frozen=True):
    hidden_size: int = 256
    intermediate_size: int = 512
    layers: int = 6
    heads: int = 4
    kv_heads: int = 1
    head_dim: int = 64
    experts: int = 4
    top_k: int = 2
    moe_intermediate_size: int = 256
    sliding_window: int = 512
    full_attention_every: int = 3


class DataConfig(msgspec.Struct, frozen=True):
    vocab_size: int = 8192
    sequence_tokens: int = 512  # clean tokens encoded once per sequence
    holes_per_sequence: int = 16  # canvas rows cut from each sequence
    max_middle: int = 32
    suffix_head: int = 16
    suffix_window: int = 0  # tokens after the hole in the prompt ([SEP] + window, cut at a line's end); 0 = none
    # Repository context before the window (train/repo.py, the engine's path-comment layout), at most this
    # many tokens on top of `sequence_tokens`; 0 = none. Needs shards built with it (`infill-lsp corpus`).
    repo_context_tokens: int = 0
    repo_context_dropout: float = 0.3  # share of sequences trained without their context
    repo_anchor_share: float = 0.3  # share of holes at a use of a name the context defines (where there is one)
    max_corpus_bytes: int = 120_000_000
    # A factor on how often each language of the shards is drawn (by default in proportion to the square
    # root of its token count, so small languages are not drowned; shards.TokenData): python = 2.0 draws
    # Python twice as often, 0 never; a language left out keeps 1.
    language_weights: dict[str, float] = {}
    prefix_tokens: int = 512  # the one-hole-per-example objective ("single") only
    objective: str = "holes"  # "holes" (many per sequence) or "single" (one per example: the old baseline)


class OptimConfig(msgspec.Struct, frozen=True):
    steps: int = 3000  # the learning-rate schedule's length (cosine to 10%); a run may stop earlier
    batch_size: int = 8  # sequences per step ("holes"), or examples per step ("single")
    lr: float = 1e-3
    warmup: int = 200
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    max_minutes: float = 14.0  # this command's time budget; `--resume` continues
    log_every: int = 25
    checkpoint_minutes: float = 5.0
    self_condition_p: float = 0.5


class TrainConfig(msgspec.Struct, frozen=True):
    seed: int = 0
    model: ModelShape = ModelShape()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()


def load_config(path: Path | None) -> TrainConfig:
    return msgspec.toml.decode(path.read_bytes(), type=TrainConfig) if path else TrainConfig()


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE: indentation, newlines and any byte round-trip exactly."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<eos>", "<bos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=sys.stderr.isatty())  # its own bar on a terminal
    log.info("training a %d-token byte-level BPE on %d files (%s characters)", vocab_size, len(texts),
             f"{sum(map(len, texts)):,}")
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")


def same_tokenizer(a, b) -> bool:
    """Whether two tokenizers give every text the same ids (vocabulary, merges, special tokens,
    normalisation and pre-tokenisation). Shards hold ids, not text, so weights may train only on
    shards written with their own tokenizer: with another (a `corpus` run that trained one) every id
    means other text to them."""
    def spec(tokenizer) -> str:
        data = json.loads(tokenizer.backend_tokenizer.to_str())
        added = sorted((t["id"], t["content"]) for t in data.get("added_tokens") or [])
        return json.dumps([data.get("model"), added, data.get("normalizer"), data.get("pre_tokenizer")],
                          sort_keys=True)
    return spec(a) == spec(b)


def build_model(shape: ModelShape, vocab_size: int, canvas_length: int):
    from transformers import (DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion, DiffusionGemmaTextConfig,
                              Gemma4VisionConfig)

    layer_types = ["full_attention" if (i + 1) % shape.full_attention_every == 0 else "sliding_attention"
                   for i in range(shape.layers)]
    layer_types[-1] = "full_attention"
    text = DiffusionGemmaTextConfig(
        vocab_size=vocab_size, hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
        head_dim=shape.head_dim, global_head_dim=shape.head_dim, sliding_window=shape.sliding_window,
        num_experts=shape.experts, top_k_experts=shape.top_k, moe_intermediate_size=shape.moe_intermediate_size,
        layer_types=layer_types, max_position_embeddings=16384, pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )
    vision = Gemma4VisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=1,
                                num_key_value_heads=1, head_dim=16, position_embedding_size=64)
    config = DiffusionGemmaConfig(text_config=text, vision_config=vision, canvas_length=canvas_length)
    return DiffusionGemmaForBlockDiffusion(config)


def examples(corpus: Corpus, builder: ExampleBuilder, rng: random.Random):
    """Endless (prompt, canvas) examples for the one-hole objective; files drawn by length."""
    weights = [len(t) for t in corpus.texts]
    while True:
        text = rng.choices(corpus.texts, weights=weights, k=1)[0]
        split = sample_split(text, rng)
        if split is not None and (example := builder.build(split, rng)) is not None:
            yield example


def write_loss_curve(out: Path, history: list[dict]) -> None:
    (out / "loss.csv").write_text("step,loss\n" + "".join(f"{h['step']},{h['loss']:.5f}\n" for h in history))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: wrote loss.csv only")
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([h["step"] for h in history], [h["loss"] for h in history])
    ax.set_xlabel("step")
    ax.set_ylabel("infill cross-entropy")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "loss_curve.png", dpi=120)
    plt.close(fig)


def loss_curve_markdown(out: Path) -> str:
    """The card's loss curve: the PNG shown (above the evaluation tables), or where the data is."""
    if (out / "loss_curve.png").exists():
        return ("\n## Training loss\n![Training loss (infill cross-entropy, log scale) by step](loss_curve.png)\n\n"
                "Data: `loss.csv`.\n")
    return ("The loss data is `loss.csv` (no `loss_curve.png`: matplotlib, in the `train` extra, was not "
            "installed).\n")


def write_model_card(out: Path, config: TrainConfig, sources: list[dict], history: list[dict], params: int,
                     init: str | None, state: dict, excluded: int = 0, extra: str = "") -> None:
    rows = "\n".join(f"| {m['package']} | {m['version']} | {m['license']} | {m['files']} | {m['bytes']:,} |"
                     for m in sources)
    final = history[-1]["loss"] if history else float("nan")
    (out / "README.md").write_text(f"""# infill-lsp code-infill model

A DiffusionGemma-architecture block-diffusion model ({params:,} parameters) trained by
`infill-lsp train` for fill-in-the-middle: canvas = [middle + end marker/padding | suffix head],
uniform-noise corruption of the middle, cross-entropy on the middle, self-conditioning as at
inference, many holes per encoded sequence. {"Started from " + init + "." if init else "Trained from scratch."}

Training: {state.get('step', 0):,} steps, {state.get('tokens_seen', 0):,} sequence tokens encoded,
{state.get('supervised_tokens', 0):,} supervised (middle-slot) tokens, {state.get('minutes', 0.0):.0f} minutes
on {state.get('device', '?')}. Final training loss {final:.4f}; held-out loss {state.get('heldout_loss', float('nan')):.4f}.
Files dropped because they contain a HumanEval signature: {excluded}.
{loss_curve_markdown(out)}
{extra}
## Config
```json
{json.dumps(msgspec.to_builtins(config), indent=2)}
```

## Corpus manifest
| package | version | license | files | bytes |
|---|---|---|---|---|
{rows}
""")


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def infill_layout(config: TrainConfig, name: str = "") -> dict:
    """What the engine must reproduce at inference, stored in the checkpoint's config.json.

    `suffix_window` is written only when it is on, so a checkpoint trained without it keeps the
    layout (and the config.json) it always had."""
    layout = {"name": name, "prefix_tokens": config.data.sequence_tokens - 1, "suffix_head": config.data.suffix_head,
              "max_middle": config.data.max_middle, "canvas": "[middle + end + pad | suffix head, end, pad]",
              "prompt": "[bos] + prefix tokens, last token backed off (token healing)"}
    if config.data.suffix_window:
        layout["suffix_window"] = config.data.suffix_window
        layout["prompt"] += (f"; then [eos] + the first <= {config.data.suffix_window} tokens after the cursor, "
                             "cut after the last whole line when the text goes on")
    if config.data.repo_context_tokens:
        layout["repo_context"] = repo.LAYOUT
        layout["repo_context_tokens"] = config.data.repo_context_tokens
        layout["prompt"] = layout["prompt"].replace(
            "[bos] + ", f"[bos] + <= {config.data.repo_context_tokens} tokens of repository context "
            "(chunks after a path comment, then the file's own path comment) + ", 1)
    return layout


def check_fits(config: TrainConfig, sliding_window: int) -> None:
    """A training sequence (context, window, suffix window) must fit the model's sliding window: the
    vectorised holes read every encoded key (holes.py)."""
    data = config.data
    length = data.sequence_tokens + data.repo_context_tokens + (data.suffix_window + 1 if data.suffix_window else 0)
    if data.objective == "holes" and length > sliding_window:
        raise ValueError(f"sequence_tokens + repo_context_tokens (+ suffix_window + 1) = {length} tokens do not fit "
                         f"the model's sliding window ({sliding_window})")
    if data.repo_context_tokens and data.objective != "holes":
        raise ValueError("repo_context_tokens needs the many-holes objective (data.objective = \"holes\")")


def export_checkpoint(model, tokenizer, out: Path, dtype: torch.dtype) -> None:
    """Write a checkpoint the engine loads (weights, config, tokenizer), swapped in atomically."""
    staging = out.with_name(out.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    original = next(model.parameters()).dtype
    model.to(dtype)
    try:
        model.save_pretrained(staging)
    finally:
        model.to(original)
    tokenizer.save_pretrained(staging)
    if out.exists():
        for item in staging.iterdir():
            os.replace(item, out / item.name)
        staging.rmdir()
    else:
        os.replace(staging, out)


@torch.no_grad()
def heldout_loss(model, sampler: HoleSampler, documents: list, seed: int = 1234, batches: int = 4) -> float:
    """The objective on held-out documents with fixed holes and noise (comparable across runs)."""
    if not documents:
        return float("nan")
    was_training = model.training
    model.eval()
    rng = random.Random(seed)
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    losses = []
    for _ in range(batches):
        batch = sampler.sample(rng.choices(documents, k=8), rng).to(device)
        losses.append(holes_loss(model, batch, generator, self_condition_p=0.0).item())
    model.train(was_training)
    return sum(losses) / len(losses)


def _tokenize_documents(texts: list[str], tokenizer) -> list[np.ndarray]:
    out = []
    for start in range(0, len(texts), 256):
        for ids in tokenizer(texts[start:start + 256], add_special_tokens=False)["input_ids"]:
            if len(ids) >= 8:
                out.append(np.asarray(ids, dtype=np.int64))
    return out


def _corpus_documents(corpus: Corpus, indices: list[int], tokenizer, context_tokens: int) -> list[Document]:
    """The training documents of an in-memory corpus (a repository to fine-tune on), with their
    repository context when the config trains with it (the held-out files lend no definitions)."""
    choices = repo.choose(corpus, tokenizer, context_tokens, set(indices)) if context_tokens else {}
    texts = [corpus.texts[i] for i in indices]
    pairs = repo.tokenize(texts, tokenizer, [choices.get(i) for i in indices])
    return [Document.of(ids, context) for ids, context in pairs if len(ids) >= 8]


# A run that trained further than the shipped weights but did not ship (it did not win on the held-out
# numbers yet), kept between working days outside the package: fp16 weights and their record, written
# by `scripts/ship_model.py RUN --name infill-small-next --out training/infill-small-next`.
KEPT_RUN = Path(__file__).resolve().parents[2] / "training" / "infill-small-next"


def resume_point(shipped: Path, kept: Path = KEPT_RUN) -> Path | None:
    """Where `train --resume` continues when its local state is gone: of the shipped weights and the
    kept run, the one that has trained further (its training record's step)."""
    def step(path: Path) -> int:
        try:
            return int(json.loads((path / "training_state.json").read_text())["totals"]["step"])
        except (OSError, ValueError, KeyError, TypeError):
            return -1

    return max((p for p in (shipped, kept) if (p / "config.json").exists()), key=step, default=None)


def hole_sampler(data: DataConfig, tokenizer) -> HoleSampler:
    """The many-holes objective's sampler, shaped by the config's data section."""
    return HoleSampler(tokenizer, sequence_tokens=data.sequence_tokens, max_middle=data.max_middle,
                       suffix_head=data.suffix_head, holes_per_sequence=data.holes_per_sequence,
                       suffix_window=data.suffix_window, repo_context_tokens=data.repo_context_tokens,
                       context_dropout=data.repo_context_dropout, anchor_share=data.repo_anchor_share)


def train(config: TrainConfig | None, out: Path, *, init: str | None = None, data: Path | None = None,
          shards: Path | None = None, resume: bool = False, device: str = "auto",
          humaneval_dir: Path | None = None, corpus: Corpus | None = None,
          optim_overrides: dict | None = None, data_workers: int | None = None) -> list[dict]:
    """Train (or fine-tune with `init`, or continue with `resume`) and write a loadable checkpoint to `out`.

    `config=None` means the run's own: a resumed run keeps the config it started with, and a run that
    continues from the shipped weights (its local state gone) takes the config they were trained
    with, so the learning-rate schedule and data shape do not change under it. `optim_overrides`
    (steps, max_minutes from the command line) apply on top either way. `steps` is the schedule's
    total, the initial weights' own steps included; when those weights are already at or past it
    (a fine-tune of the shipped model with the default config), it counts from their step instead.

    `out/state.pt` (weights, optimizer, schedule, data RNG, history) is rewritten atomically every
    `checkpoint_minutes`, and `out/model/` holds the latest exported checkpoint, so a run that is
    stopped loses at most a few minutes and `resume=True` continues it.

    `data_workers`: processes sampling the many-holes batches from shards ahead of the step
    (train/workers.py); None = none on a CPU, up to 8 on a GPU.
    """
    from transformers import AutoTokenizer, DiffusionGemmaForBlockDiffusion

    from ..engine.transformers_backend import resolve_device

    device = resolve_device(device)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "state.pt"
    state = torch.load(state_path, weights_only=False) if resume and state_path.exists() else None
    if resume and state is None:
        from ..engine import SHIPPED_MODEL

        point = resume_point(SHIPPED_MODEL)
        if init is None and point is not None:
            init = str(point)  # the local run is gone: continue from the weights that trained furthest
        log.info("no %s to resume from: starting %s", state_path, f"from {init}" if init else "from scratch")
    carried_path = Path(init) / "training_state.json" if init else None
    carried = json.loads(carried_path.read_text()) if carried_path and carried_path.exists() else None
    if state is not None:
        config = msgspec.convert(state["config"], TrainConfig)
        if shards is None and state.get("shards") and data is None and corpus is None:
            shards = Path(state["shards"])  # continue on the data the run started with
    elif config is None and resume and carried and carried.get("config"):
        config = msgspec.convert(carried["config"], TrainConfig)
        log.info("training with the config %s was trained with", init)
    config = config or TrainConfig()
    if optim_overrides:
        config = msgspec.structs.replace(config, optim=msgspec.structs.replace(config.optim, **optim_overrides))
    start_step = int(carried.get("totals", {}).get("step", 0)) if state is None and carried else 0
    if start_step >= config.optim.steps:
        # The initial weights already finished this schedule (the shipped record ends where its learning
        # rate was annealed, past the default 3000 steps): counted as a total it would train nothing, so
        # the steps count from where those weights stopped.
        log.info("the initial weights are at step %d, past this schedule's %d steps: training %d more, to step %d",
                 start_step, config.optim.steps, config.optim.steps, start_step + config.optim.steps)
        config = msgspec.structs.replace(
            config, optim=msgspec.structs.replace(config.optim, steps=start_step + config.optim.steps))
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)

    # Data: tokenized shards, or a corpus (a repository for fine-tuning, or the machine's sources) tokenized here.
    sources: list[dict] = []
    excluded = 0
    heldout_docs: list = []
    token_data = None
    tokenizer = None
    if shards is not None:
        token_data = TokenData(shards, config.data.language_weights)
        if config.data.repo_context_tokens and not token_data.repo_context:
            raise ValueError(f"{shards} holds no repository context (data.repo_context_tokens > 0): build the shards "
                             "with this version's `infill-lsp corpus`")
        tokenizer = AutoTokenizer.from_pretrained(shards)
        sources = token_data.manifest["sources"]
        excluded = token_data.manifest.get("excluded_for_humaneval", 0)
        heldout_texts = [r["text"] for r in read_heldout(shards)]
    else:
        if corpus is None:
            corpus = collect_repository(data, humaneval_dir) if data else collect_multilanguage(
                humaneval_dir, config.data.max_corpus_bytes)
        if not corpus.texts:
            raise ValueError("the corpus is empty")
        sources, excluded = msgspec.to_builtins(corpus.manifest), corpus.excluded_for_humaneval
        paths = corpus.paths or [str(i) for i in range(len(corpus.texts))]
        held = heldout_paths(paths)
        dropped = duplicates(corpus.texts, [p in held for p in paths])
        train_indices = ([i for i, p in enumerate(paths) if p not in held and i not in dropped]
                         or list(range(len(paths))))
        train_texts = [corpus.texts[i] for i in train_indices]
        heldout_texts = [t for i, (t, p) in enumerate(zip(corpus.texts, paths)) if p in held and i not in dropped]
    log.info("data: %s", f"{token_data.total_tokens:,} tokens in shards" if token_data else
             f"{len(corpus.texts)} files, {sum(m['bytes'] for m in sources):,} bytes")

    source = state["init"] if state is not None else init
    if state is not None or init:
        checkpoint = out / "model" if state is not None else Path(init)
        own = AutoTokenizer.from_pretrained(checkpoint, local_files_only=True)
        if tokenizer is not None and not same_tokenizer(tokenizer, own):
            raise ValueError(
                f"the shards in {shards} were written with another tokenizer than the weights in {checkpoint}: "
                "their token ids would mean other text to these weights. Write shards for them with "
                f"`infill-lsp corpus --tokenizer {checkpoint} --out DIR`, or train from scratch (no --init or --resume)")
        tokenizer = tokenizer or own
        model = DiffusionGemmaForBlockDiffusion.from_pretrained(checkpoint, local_files_only=True, dtype=torch.float32)
    else:
        tokenizer = tokenizer or train_tokenizer(train_texts, config.data.vocab_size)
        model = build_model(config.model, len(tokenizer), config.data.max_middle + config.data.suffix_head)
    check_fits(config, model.config.text_config.sliding_window)
    model.config.infill_layout = infill_layout(config, name=getattr(model.config, "infill_layout", {}).get("name", ""))
    model.to(device).train()
    params = sum(p.numel() for p in model.parameters())
    log.info("model: %s parameters on %s", f"{params:,}", device)

    sampler = hole_sampler(config.data, tokenizer)
    if token_data is None:
        documents = _corpus_documents(corpus, train_indices, tokenizer, config.data.repo_context_tokens)
        draw = lambda r, k: r.choices(documents, k=k)  # noqa: E731
    else:
        draw = token_data.draw
    heldout_docs = _tokenize_documents(heldout_texts[:200], tokenizer)
    builder = stream = None
    if config.data.objective == "single":
        if config.data.suffix_window:
            raise ValueError("suffix_window needs the many-holes objective (data.objective = \"holes\")")
        builder = ExampleBuilder(tokenizer, config.data.prefix_tokens, config.data.max_middle, config.data.suffix_head)
        stream = examples(corpus, builder, rng)

    optim = config.optim
    optimizer = torch.optim.AdamW(model.parameters(), lr=optim.lr, weight_decay=optim.weight_decay,
                                  betas=(0.9, 0.95), fused=device.startswith("cuda"))
    # The scheduler counts its own steps, from where this schedule began (0, or the step a fine-tune's
    # initial weights had reached), so the cosine spans those steps up to `optim.steps`, the run's total.
    horizon = {"steps": optim.steps}
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / max(1, optim.warmup))
        * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, step / horizon["steps"])))))
    generator = torch.Generator(device=device).manual_seed(config.seed)
    history: list[dict] = []
    totals = {"step": 0, "tokens_seen": 0, "supervised_tokens": 0, "minutes": 0.0, "device": device}
    if state is None and carried is not None:  # what the initial weights saw
        history, totals = carried["history"], {**totals, **carried["totals"], "device": device}
        totals.pop("heldout_loss_start", None)
        log.info("continuing the training record of %s at step %d", init, totals["step"])
        rng.seed(config.seed + totals["step"])  # new data, not the sequences those weights started on
        generator.manual_seed(config.seed + totals["step"])
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        rng.setstate(state["rng"])
        generator.set_state(state["generator"])
        history, totals = state["history"], state["totals"]
        log.info("resumed at step %d (%.1f minutes trained)", totals["step"], totals["minutes"])
    horizon["steps"] = max(1, optim.steps - (totals["step"] - schedule.last_epoch))

    def save(final: bool = False) -> None:
        totals["heldout_loss"] = heldout_loss(model, sampler, heldout_docs)
        if history:
            history[-1]["heldout_loss"] = totals["heldout_loss"]
            if "heldout_loss_start" in totals:
                history[-1]["heldout_loss_start"] = totals["heldout_loss_start"]
        _atomic_save({"config": msgspec.to_builtins(config), "model": model.state_dict(),
                      "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), "rng": rng.getstate(),
                      "generator": generator.get_state(), "history": history, "totals": totals, "init": source,
                      "shards": str(shards) if shards else None},
                     state_path)
        export_checkpoint(model, tokenizer, out / "model", torch.float32)
        log.info("checkpoint at step %d: held-out loss %.4f", totals["step"], totals["heldout_loss"])

    if state is None and heldout_docs:
        totals["heldout_loss_start"] = heldout_loss(model, sampler, heldout_docs)  # the "before" of a fine-tune
        log.info("held-out loss before this run: %.4f (%d held-out files)", totals["heldout_loss_start"],
                 len(heldout_docs))
    started = time.perf_counter()
    minutes_before = totals["minutes"]
    last_save = started
    log_file = (out / "train_log.jsonl").open("a")
    running = seen = supervised = 0
    window_started = time.perf_counter()
    bar = Progress(optim.steps, desc="train", unit="steps", initial=totals["step"],
                   deadline=time.monotonic() + optim.max_minutes * 60)
    workers = default_workers(device, data_workers) if token_data is not None and builder is None else 0
    prefetch = None
    if workers:
        log.info("sampling batches in %d worker processes", workers)
        prefetch = BatchWorkers(workers, shards, config.data, seed=config.seed, batch_size=optim.batch_size,
                                first_step=totals["step"])
    try:
        while totals["step"] < optim.steps:
            if prefetch is not None:
                batch = prefetch.next().to(device)
                count, encoded = batch.supervised_tokens, batch.encoder_ids.numel()
            elif builder is not None:
                batch = collate([next(stream) for _ in range(optim.batch_size)], tokenizer.pad_token_id).to(device)
                count, encoded = int(batch.free.sum()), int(batch.prompt_mask.sum()) + batch.canvas.numel()
            else:
                batch = sampler.sample(draw(rng, optim.batch_size), rng).to(device)
                count, encoded = batch.supervised_tokens, batch.encoder_ids.numel()
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
                if builder is not None:
                    loss = infill_loss(model, batch, generator, self_condition=rng.random() < optim.self_condition_p)
                else:
                    loss = holes_loss(model, batch, generator, optim.self_condition_p)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
            optimizer.step()
            schedule.step()
            totals["step"] += 1
            totals["tokens_seen"] += encoded
            totals["supervised_tokens"] += count
            running += loss.item()
            seen += 1
            supervised += count
            bar.update(1, loss=f"{running / seen:.4f}")
            now = time.perf_counter()
            totals["minutes"] = minutes_before + (now - started) / 60
            if totals["step"] % optim.log_every == 0:
                record = {"step": totals["step"], "loss": running / seen, "lr": schedule.get_last_lr()[0],
                          "minutes": totals["minutes"], "supervised_tokens_per_s": supervised / (now - window_started),
                          "supervised_tokens": totals["supervised_tokens"]}
                history.append(record)
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
                log.info("step %d loss %.4f lr %.2e %.1f min, %.0f supervised tokens/s", totals["step"], record["loss"],
                         record["lr"], record["minutes"], record["supervised_tokens_per_s"])
                running = seen = supervised = 0
                window_started = time.perf_counter()
            if now - last_save > optim.checkpoint_minutes * 60:
                save()
                last_save = time.perf_counter()
            if now - started > optim.max_minutes * 60:
                log.info("time budget reached at step %d", totals["step"])
                break
    finally:  # worker processes and the log end here also when a step raises (out of memory, Ctrl-C)
        bar.close()
        if prefetch is not None:
            prefetch.close()
        log_file.close()
    if seen:
        history.append({"step": totals["step"], "loss": running / seen, "lr": schedule.get_last_lr()[0],
                        "minutes": totals["minutes"]})
    save(final=True)
    model.eval()
    export_checkpoint(model, tokenizer, out, torch.float32)
    write_loss_curve(out, history)
    write_model_card(out, config, sources, history, params, source, totals, excluded)
    return history
