"""The training objective is what the engine does at inference, made differentiable.

Inference (engine/canvas.py): prompt = tokens(prefix) with its last token backed off (token
healing), canvas row = [middle slot of m tokens | suffix head, clamped]; the middle is denoised
from uniform noise, may end with the end marker and padding, and is read up to the marker.

Training mirrors it exactly: sample a (prefix, middle, suffix) split of a file, build that
canvas with the true middle + end marker + padding in a slot m from the same ladder, corrupt
the middle positions with uniform noise at a random rate, and take the cross-entropy on the
middle positions. Half of the batches first run a no-grad pass whose logits feed the model's
self-conditioning input, as every step after the first does at inference.
DiffusionGemma returns no loss; this module is it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..engine.canvas import build_canvas, middle_lengths


@dataclass
class Split:
    prefix: str
    middle: str
    suffix: str


def sample_split(text: str, rng: random.Random, max_middle_chars: int = 160) -> Split | None:
    """One hole the way editors make them: whole lines, the rest of a line, a random span, end of file."""
    if len(text) < 8:
        return None
    kind = rng.random()
    lines = text.splitlines(keepends=True)
    if kind < 0.35 and len(lines) > 2:  # one to three whole lines (cursor at the start of a line)
        start = rng.randrange(len(lines))
        count = rng.randint(1, 3)
        begin = sum(len(line) for line in lines[:start])
        end = begin + sum(len(line) for line in lines[start:start + count])
    elif kind < 0.65:  # the rest of a line after the cursor, possibly followed by the line end
        cut = rng.randrange(len(text))
        newline = text.find("\n", cut)
        begin, end = cut, (len(text) if newline < 0 else newline)
    elif kind < 0.9:  # a random character span
        begin = rng.randrange(len(text))
        end = begin + rng.randint(1, max_middle_chars)
    else:  # end of file: the suffix is empty
        begin, end = rng.randrange(len(text)), len(text)
    end = min(end, begin + max_middle_chars, len(text))
    if end <= begin:
        return None
    return Split(text[:begin], text[begin:end], text[end:])


@dataclass
class Example:
    prompt: list[int]  # tokens the encoder sees (prefix window, last token backed off)
    canvas: list[int]  # clean canvas: [middle + end + pad | suffix head]
    free: list[bool]  # the middle slot positions (noised, supervised)


class ExampleBuilder:
    """Tokenizes a split and lays it out as the engine would."""

    def __init__(self, tokenizer, prefix_tokens: int = 512, max_middle: int = 32, suffix_head: int = 16):
        self.tokenizer = tokenizer
        self.prefix_tokens = prefix_tokens
        self.ladder = sorted(set(middle_lengths(8, max_middle)))
        self.suffix_head = suffix_head
        self.bos = tokenizer.bos_token_id
        self.end = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def build(self, split: Split, rng: random.Random) -> Example | None:
        prefix_ids = self.encode(split.prefix)
        healed = ""
        if prefix_ids:  # token healing, as at inference: the middle restarts the last prefix token
            healed = self.tokenizer.decode(prefix_ids[-1:])
            if split.prefix.endswith(healed):
                prefix_ids = prefix_ids[:-1]
            else:
                healed = ""
        middle_ids = self.encode(healed + split.middle)
        slots = [m for m in self.ladder if m >= len(middle_ids) + 1]
        if not slots:
            return None
        m = rng.choice(slots)
        prompt = ([self.bos] if self.bos is not None else []) + prefix_ids[-self.prefix_tokens:]
        suffix_ids = self.encode(split.suffix[: self.suffix_head * 16])[: self.suffix_head]
        batch = build_canvas([m], suffix_ids, self.suffix_head, self.end, self.pad,
                             width=self.ladder[-1] + self.suffix_head)
        canvas = batch.known[0].tolist()
        canvas[:m] = middle_ids + [self.end] + [self.pad] * (m - len(middle_ids) - 1)
        return Example(prompt=prompt or [self.pad], canvas=canvas, free=batch.free[0].tolist())


@dataclass
class Batch:
    prompt: torch.Tensor  # (B, P) left-padded
    prompt_mask: torch.Tensor  # (B, P) bool
    canvas: torch.Tensor  # (B, L) clean
    free: torch.Tensor  # (B, L) bool

    def to(self, device) -> "Batch":
        return Batch(*(t.to(device) for t in (self.prompt, self.prompt_mask, self.canvas, self.free)))


def collate(examples: list[Example], pad_id: int) -> Batch:
    width = max(len(e.prompt) for e in examples)
    canvas_width = max(len(e.canvas) for e in examples)
    prompt = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.bool)
    canvas = torch.full((len(examples), canvas_width), pad_id, dtype=torch.long)
    free = torch.zeros((len(examples), canvas_width), dtype=torch.bool)
    for i, e in enumerate(examples):
        prompt[i, width - len(e.prompt):] = torch.tensor(e.prompt)
        mask[i, width - len(e.prompt):] = True
        canvas[i, : len(e.canvas)] = torch.tensor(e.canvas)
        free[i, : len(e.free)] = torch.tensor(e.free)
    return Batch(prompt, mask, canvas, free)


def infill_loss(model, batch: Batch, generator: torch.Generator | None = None,
                self_condition: bool = False) -> torch.Tensor:
    """Cross-entropy on the middle slot of noised canvases, conditioned on the encoded prompt."""
    vocab = model.config.text_config.vocab_size
    device = batch.canvas.device
    rows = batch.canvas.shape[0]
    encoded = model.model.encoder(input_ids=batch.prompt, attention_mask=batch.prompt_mask, use_cache=True)
    cache = encoded.past_key_values
    decoder_mask = torch.cat([batch.prompt_mask, torch.ones_like(batch.canvas, dtype=torch.bool)], dim=1)

    rate = torch.rand((rows, 1), device=device, generator=generator).clamp(min=0.05)
    noise = torch.randint(0, vocab, batch.canvas.shape, device=device, generator=generator)
    corrupt = (torch.rand(batch.canvas.shape, device=device, generator=generator) < rate) & batch.free
    noisy = torch.where(corrupt, noise, batch.canvas)

    self_conditioning = None
    if self_condition:
        with torch.no_grad():
            first = model(decoder_input_ids=noisy, past_key_values=cache, decoder_attention_mask=decoder_mask)
            self_conditioning = first.logits.detach().to(model.dtype)
    out = model(decoder_input_ids=noisy, past_key_values=cache, decoder_attention_mask=decoder_mask,
                self_conditioning_logits=self_conditioning)
    logits = out.logits[batch.free]
    return F.cross_entropy(logits.float(), batch.canvas[batch.free])
