#!/usr/bin/env python3
"""What 10x and 100x the training tokens would give, read off a run's held-out loss curve.

    .venv/bin/python scripts/loss_extrapolation.py [MODEL_DIR] [--from-step 280] [--to-step 2100]

Fits L(D) = E + A * D**-alpha (D: supervised tokens) to the held-out losses a run recorded at its
checkpoints (`training_state.json` beside shipped weights), over one stretch of steps whose held-out
loss means the same thing (same held-out documents and prompt layout: a stretch ends where a
fine-tune's `heldout_loss_start` jumps). The floor E is not pinned down by a few million tokens, so
the fit is repeated for fixed floors and the spread printed with it: read the table as a range.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def fit(tokens: np.ndarray, losses: np.ndarray, floor: float) -> tuple[float, float, float]:
    """(A, alpha, rms error) of the least-squares line through log(L - floor) against log(D)."""
    slope, intercept = np.polyfit(np.log(tokens), np.log(losses - floor), 1)
    predicted = floor + np.exp(intercept + slope * np.log(tokens))
    return float(np.exp(intercept)), float(-slope), float(np.sqrt(np.mean((predicted - losses) ** 2)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, nargs="?", default=ROOT / "infill_lsp" / "models" / "infill-small")
    parser.add_argument("--from-step", type=int, default=280)
    parser.add_argument("--to-step", type=int, default=2100)
    args = parser.parse_args()
    history = json.loads((args.model / "training_state.json").read_text())["history"]
    points = [(h["supervised_tokens"], h["heldout_loss"]) for h in history
              if "heldout_loss" in h and h.get("supervised_tokens") and args.from_step <= h["step"] <= args.to_step]
    if len(points) < 3:
        raise SystemExit(f"{len(points)} held-out points between steps {args.from_step} and {args.to_step}")
    tokens, losses = np.array([p[0] for p in points], float), np.array([p[1] for p in points])
    floors = np.arange(0.0, losses.min() - 0.005, 0.01)
    best = min(floors, key=lambda e: fit(tokens, losses, e)[2])
    last = tokens.max()
    print(f"{len(points)} held-out losses, steps {args.from_step}-{args.to_step}, "
          f"{tokens.min() / 1e6:.2f}M-{last / 1e6:.2f}M supervised tokens, loss {losses.max():.3f} -> {losses.min():.3f}")
    print("| floor E | alpha | rms error | loss at 1x | 10x | 100x |")
    print("|---|---|---|---|---|---|")
    for floor in sorted({0.0, 0.5, round(float(best), 2), 1.0}):
        if floor >= losses.min():
            continue
        scale, alpha, error = fit(tokens, losses, floor)
        at = [floor + scale * (last * k) ** -alpha for k in (1, 10, 100)]
        mark = " (best fit)" if abs(floor - best) < 1e-9 else ""
        print(f"| {floor:.2f}{mark} | {alpha:.3f} | {error:.4f} | {at[0]:.3f} | {at[1]:.3f} | {at[2]:.3f} |")


if __name__ == "__main__":
    main()
