#!/usr/bin/env python3
"""Ship a training run's latest checkpoint as the package's default model.

    .venv/bin/python scripts/ship_model.py RUN_DIR [--name infill-small] [--eval results.md]
                                         [--decoding '{"t_max": 0.4, "t_min": 0.1}']

Writes infill_lsp/models/NAME/: fp16 safetensors (<= 16 MB), config (with the infill layout the
engine reads, and with --decoding the sampler settings chosen on held-out holes, `infill_decoding`), tokenizer, the model card (config, corpus manifest, tokens seen, loss curve, the
evaluation tables from --eval), loss.csv / loss_curve.png and training_state.json (the record a
later `infill-lsp train --resume` continues from when its local checkpoint is gone).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import msgspec
import torch

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 16 * 1024 * 1024


def main() -> None:
    from transformers import AutoTokenizer, DiffusionGemmaForBlockDiffusion

    from infill_lsp.train.loop import TrainConfig, write_loss_curve, write_model_card

    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path)
    parser.add_argument("--name", default="infill-small")
    parser.add_argument("--out", type=Path, default=None,
                        help="write here instead of infill_lsp/models/NAME (e.g. training/infill-small-next: "
                        "a run kept between working days that `train --resume` continues from)")
    parser.add_argument("--eval", type=Path, help="markdown with the evaluation tables for the model card")
    parser.add_argument("--decoding", type=json.loads, default=None,
                        help="JSON: the sampler settings the engine uses for this checkpoint (infill_decoding)")
    args = parser.parse_args()
    state = torch.load(args.run / "state.pt", weights_only=False, map_location="cpu")
    config = msgspec.convert(state["config"], TrainConfig)
    model = DiffusionGemmaForBlockDiffusion.from_pretrained(args.run / "model", dtype=torch.float32)
    model.load_state_dict(state["model"])  # the state is at least as new as the export beside it
    tokenizer = AutoTokenizer.from_pretrained(args.run / "model")
    model.config.infill_layout = {**model.config.infill_layout, "name": args.name}
    if args.decoding:
        model.config.infill_decoding = args.decoding
    dest = args.out.resolve() if args.out else ROOT / "infill_lsp" / "models" / args.name
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    model.to(torch.float16).save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    (dest / "generation_config.json").unlink(missing_ok=True)
    size = (dest / "model.safetensors").stat().st_size
    if size > LIMIT:
        raise SystemExit(f"{size:,} bytes of weights: over the 16 MiB limit for shipped weights")
    shards = Path(state["shards"]) if state.get("shards") else None
    manifest = json.loads((shards / "manifest.json").read_text()) if shards else {"sources": []}
    history, totals = state["history"], state["totals"]
    write_loss_curve(dest, history)
    extra = ""
    if args.eval:  # right below the loss curve
        extra += "\n## Evaluation\n" + args.eval.read_text() + "\n"
    if shards:
        extra += "\n## Training data (tokens by language)\n" + "\n".join(
            f"- {language}: {count:,}" for language, count in sorted(manifest["tokens"].items())) + "\n"
    write_model_card(dest, config, manifest["sources"], history, sum(p.numel() for p in model.parameters()),
                     state.get("init"), totals, manifest.get("excluded_for_humaneval", 0), extra)
    (dest / "training_state.json").write_text(json.dumps({"config": state["config"], "totals": totals, "history": history}))
    print(f"shipped {args.run} as {dest} ({size:,} bytes of fp16 weights, step {totals['step']})")


if __name__ == "__main__":
    main()
