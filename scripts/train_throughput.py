#!/usr/bin/env python3
"""Supervised tokens/s of the two training objectives on the same model, data and machine.

    .venv/bin/python scripts/train_throughput.py [--config infill_lsp/train/configs/default.toml] [--steps 6]

"single": one hole per example behind its own prefix (the objective before many-holes training);
"holes": many holes per causally encoded sequence (block-causal mask). Both run fwd+bwd+AdamW
with self-conditioning on half the rows/batches; the first step of each is a warm-up, not timed,
then the two take turns step by step, so a machine that speeds up or slows down meanwhile (a shared
CPU does) weighs on both alike.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np
import torch

from infill_lsp.train.corpus import collect_multilanguage
from infill_lsp.train.holes import HoleSampler, holes_loss
from infill_lsp.train.loop import build_model, examples, load_config, train_tokenizer
from infill_lsp.train.objective import ExampleBuilder, collate, infill_loss

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=str(ROOT / "infill_lsp" / "train" / "configs" / "default.toml"))
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--single-batch", type=int, default=64, help="examples per step for the one-hole objective")
    parser.add_argument("--only", choices=("single", "holes"), help="time one objective (no speed-up line)")
    args = parser.parse_args()
    config = load_config(Path(args.config))
    corpus = collect_multilanguage(None, 3_000_000)
    tokenizer = train_tokenizer(corpus.texts[:400], config.data.vocab_size)
    torch.manual_seed(0)
    model = build_model(config.model, len(tokenizer), config.data.max_middle + config.data.suffix_head).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rng = random.Random(0)
    generator = torch.Generator().manual_seed(0)
    builder = ExampleBuilder(tokenizer, config.data.sequence_tokens, config.data.max_middle, config.data.suffix_head)
    stream = examples(corpus, builder, rng)
    sampler = HoleSampler(tokenizer, sequence_tokens=config.data.sequence_tokens, max_middle=config.data.max_middle,
                          suffix_head=config.data.suffix_head, holes_per_sequence=config.data.holes_per_sequence)
    documents = [np.asarray(ids) for ids in tokenizer(corpus.texts, add_special_tokens=False)["input_ids"]
                 if len(ids) >= 8]

    def timed(step):
        started = time.perf_counter()
        supervised = step()
        return supervised, time.perf_counter() - started

    def single_step():
        batch = collate([next(stream) for _ in range(args.single_batch)], tokenizer.pad_token_id)
        loss = infill_loss(model, batch, generator, self_condition=rng.random() < config.optim.self_condition_p)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return int(batch.free.sum())

    def holes_step():
        batch = sampler.sample(rng.choices(documents, k=config.optim.batch_size), rng)
        loss = holes_loss(model, batch, generator, config.optim.self_condition_p)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return batch.supervised_tokens

    params = sum(p.numel() for p in model.parameters())
    print(f"model {params:,} parameters, {torch.get_num_threads()} threads, prefix/sequence "
          f"{config.data.sequence_tokens} tokens, {config.data.holes_per_sequence} holes per sequence")
    objectives = {"single (one hole per example)": single_step, "holes (many per sequence)": holes_step}
    if args.only:
        objectives = {name: step for name, step in objectives.items() if name.startswith(args.only)}
    for step in objectives.values():
        step()  # warm-up, not timed
    totals = {name: [0, 0.0] for name in objectives}
    for _ in range(args.steps):  # the objectives take turns, so the machine's drift falls on both alike
        for name, step in objectives.items():
            supervised, elapsed = timed(step)
            totals[name][0] += supervised
            totals[name][1] += elapsed
    print("| objective | supervised tokens/s | s/step |\n|---|---|---|")
    rates = []
    for name, (supervised, elapsed) in totals.items():
        rates.append(supervised / elapsed)
        print(f"| {name} | {rates[-1]:,.0f} | {elapsed / args.steps:.2f} |")
    if len(rates) == 2:
        print(f"speed-up: {rates[1] / rates[0]:.1f}x")


if __name__ == "__main__":
    main()
