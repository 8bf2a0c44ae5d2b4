"""`infill-lsp train`: a small DiffusionGemma for code infilling, from scratch or fine-tuned.

Seeded, driven by a TOML config, logging to stderr and `train_log.jsonl`; writes a
checkpoint the engine loads as-is (weights, config, tokenizer), a model card with the corpus
manifest, and the loss curve.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from pathlib import Path

import msgspec
import torch

from .corpus import Corpus, collect_installed, collect_repository
from .objective import ExampleBuilder, collate, infill_loss, sample_split

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
    prefix_tokens: int = 512
    max_middle: int = 32
    suffix_head: int = 16
    max_corpus_bytes: int = 400_000_000


class OptimConfig(msgspec.Struct, frozen=True):
    steps: int = 3000
    batch_size: int = 128
    lr: float = 1e-3
    warmup: int = 200
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    max_minutes: float = 14.0
    log_every: int = 25
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
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")


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
    """Endless (prompt, canvas) examples; files drawn in proportion to their length."""
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


def write_model_card(out: Path, config: TrainConfig, corpus: Corpus, history: list[dict], params: int,
                     init: str | None) -> None:
    rows = "\n".join(f"| {m.package} | {m.version} | {m.license} | {m.files} | {m.bytes:,} |"
                     for m in corpus.manifest)
    final = history[-1]["loss"] if history else float("nan")
    (out / "README.md").write_text(f"""# infill-lsp code-infill model

A DiffusionGemma-architecture block-diffusion model ({params:,} parameters) trained by
`infill-lsp train` for fill-in-the-middle: canvas = [middle + end marker/padding | suffix head],
uniform-noise corruption of the middle, cross-entropy on the middle, self-conditioning as at
inference. {"Fine-tuned from " + init + "." if init else "Trained from scratch."}

Final training loss: {final:.4f} after {history[-1]['step'] if history else 0} steps.
Files dropped because they contain a HumanEval signature: {corpus.excluded_for_humaneval}.

## Config
```json
{json.dumps(msgspec.to_builtins(config), indent=2)}
```

## Corpus manifest
| package | version | license | files | bytes |
|---|---|---|---|---|
{rows}
""")


def train(config: TrainConfig, out: Path, *, init: str | None = None, data: Path | None = None,
          device: str = "auto", humaneval_dir: Path | None = None, corpus: Corpus | None = None) -> list[dict]:
    from transformers import AutoTokenizer, DiffusionGemmaForBlockDiffusion

    from ..engine.transformers_backend import resolve_device

    device = resolve_device(device)
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    out.mkdir(parents=True, exist_ok=True)
    if corpus is None:
        corpus = collect_repository(data, humaneval_dir) if data else collect_installed(
            humaneval_dir, config.data.max_corpus_bytes)
    if not corpus.texts:
        raise ValueError("the corpus is empty")
    log.info("corpus: %d files, %d bytes, %d dropped for HumanEval", len(corpus.texts),
             sum(m.bytes for m in corpus.manifest), corpus.excluded_for_humaneval)

    if init:
        tokenizer = AutoTokenizer.from_pretrained(init, local_files_only=True)
        model = DiffusionGemmaForBlockDiffusion.from_pretrained(init, local_files_only=True, dtype=torch.float32)
    else:
        tokenizer = train_tokenizer(corpus.texts, config.data.vocab_size)
        model = build_model(config.model, len(tokenizer), config.data.max_middle + config.data.suffix_head)
    model.to(device).train()
    params = sum(p.numel() for p in model.parameters())
    log.info("model: %s parameters on %s", f"{params:,}", device)

    builder = ExampleBuilder(tokenizer, config.data.prefix_tokens, config.data.max_middle, config.data.suffix_head)
    stream = examples(corpus, builder, rng)
    optim = config.optim
    optimizer = torch.optim.AdamW(model.parameters(), lr=optim.lr, weight_decay=optim.weight_decay,
                                  betas=(0.9, 0.95), fused=device.startswith("cuda"))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / max(1, optim.warmup))
                                                 * 0.5 * (1 + math.cos(math.pi * min(1.0, step / optim.steps))))
    generator = torch.Generator(device=device).manual_seed(config.seed)
    history: list[dict] = []
    started = time.perf_counter()
    log_file = (out / "train_log.jsonl").open("w")
    running, seen = 0.0, 0
    for step in range(1, optim.steps + 1):
        batch = collate([next(stream) for _ in range(optim.batch_size)], tokenizer.pad_token_id).to(device)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
            loss = infill_loss(model, batch, generator, self_condition=rng.random() < optim.self_condition_p)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
        optimizer.step()
        schedule.step()
        running += loss.item()
        seen += 1
        elapsed = time.perf_counter() - started
        if step % optim.log_every == 0 or step == optim.steps:
            record = {"step": step, "loss": running / seen, "lr": schedule.get_last_lr()[0],
                      "minutes": elapsed / 60}
            history.append(record)
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
            log.info("step %d loss %.4f lr %.2e %.1f min", step, record["loss"], record["lr"], record["minutes"])
            running, seen = 0.0, 0
        if elapsed > optim.max_minutes * 60:
            log.info("time budget reached at step %d", step)
            if seen:
                history.append({"step": step, "loss": running / seen, "lr": schedule.get_last_lr()[0],
                                "minutes": elapsed / 60})
            break
    log_file.close()

    model.eval()
    model.to(torch.bfloat16 if device.startswith("cuda") else torch.float32)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_loss_curve(out, history)
    write_model_card(out, config, corpus, history, params, init)
    return history
