"""Canvas construction for bidirectional block infilling.

One request becomes a batch of canvas rows that share the encoded prefix (the KV cache).
Row i is laid out as

    [ m_i free positions (the middle, denoised) | head of the suffix, clamped ]

so every row sees the code after the cursor bidirectionally while its middle is denoised.
Rows differ in middle length m_i (and in noise), which is how one batched pass proposes
completions of several lengths; a model trained with an end marker may also stop early
inside its slot. When the suffix is short (end of file) the clamped tail continues with the
end marker and then padding, which tells the model the file ends there.

Token healing: the cursor can sit inside a token (`ret|`). The last prompt token is backed
off and the first free position is constrained to vocabulary entries that start with its
text, so `ret` can become `return` instead of being followed by a token that assumes a
word boundary.

Suffix window (a checkpoint whose `infill_layout` declares `suffix_window: N`): the prompt also
holds the first <= N tokens of the text after the cursor, cut after the last whole line when the
text goes on (`suffix_window` below, shared by the engine and training); see
engine/transformers_backend.py for where it goes.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import torch


def middle_lengths(candidates: int, max_middle: int, min_middle: int = 4) -> list[int]:
    """Slot lengths for the rows: a geometric ladder max, max/2, ... cycled over the rows.

    Short slots serve the common single-line completion; the longest slot serves blocks.
    Repeated lengths get different noise, so they are still distinct samples.
    """
    max_middle = max(1, max_middle)
    ladder = [max_middle]
    while ladder[-1] // 2 >= min_middle:
        ladder.append(ladder[-1] // 2)
    return [ladder[i % len(ladder)] for i in range(max(1, candidates))]


@dataclass
class CanvasBatch:
    """Everything the denoising loop needs to know about the rows of one request."""

    known: torch.Tensor  # (B, L) long: token to clamp where `clamped`, anything elsewhere
    clamped: torch.Tensor  # (B, L) bool: positions forced to `known` on every step
    free: torch.Tensor  # (B, L) bool: the middle positions (not clamped)
    lengths: list[int]  # m_i per row

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.known.shape)  # type: ignore[return-value]


def build_canvas(
    lengths: list[int],
    suffix_ids: list[int],
    suffix_head: int,
    end_id: int,
    pad_id: int,
    width: int | None = None,
) -> CanvasBatch:
    """Lay out the rows: [m_i free | suffix head clamped, then end marker, then padding].

    The width defaults to the longest slot plus the suffix head; training passes the width of
    the full ladder so a single row looks exactly as it does inside an inference batch.
    """
    canvas_len = width or max(lengths) + max(1, suffix_head)
    tail = list(suffix_ids[: canvas_len]) + [end_id]
    tail += [pad_id] * (canvas_len - len(tail) + 1)
    known = torch.full((len(lengths), canvas_len), pad_id, dtype=torch.long)
    clamped = torch.zeros((len(lengths), canvas_len), dtype=torch.bool)
    for row, m in enumerate(lengths):
        known[row, m:] = torch.tensor(tail[: canvas_len - m], dtype=torch.long)
        clamped[row, m:] = True
    return CanvasBatch(known=known, clamped=clamped, free=~clamped, lengths=list(lengths))


def suffix_window(ids: list[int], limit: int, newline, continues: bool) -> list[int]:
    """The first <= `limit` ids of the text after the cursor; when that text goes on past them
    (`continues`, or more than `limit` ids given), cut after the last id holding a newline, so the
    model never sees half a line it would take for the line's end. A first line longer than the
    whole window is kept as it is (cut mid-line: better than nothing). `newline[id]`: the id's text
    holds a newline."""
    window = list(ids[:limit])
    if continues or len(ids) > limit:
        ends = [i for i, token in enumerate(window) if newline[token]]
        if ends:
            window = window[:ends[-1] + 1]
    return window


class TokenHealer:
    """Finds the vocabulary entries that start with a given text, by binary search.

    The table is the decoded text of every token id, built once per tokenizer.
    """

    def __init__(self, token_texts: list[str]):
        order = sorted(range(len(token_texts)), key=token_texts.__getitem__)
        self._sorted_texts = [token_texts[i] for i in order]
        self._sorted_ids = torch.tensor(order, dtype=torch.long)
        self.vocab_size = len(token_texts)

    def ids_starting_with(self, text: str) -> torch.Tensor:
        lo = bisect.bisect_left(self._sorted_texts, text)
        hi = bisect.bisect_left(self._sorted_texts, text + "\U0010ffff")
        return self._sorted_ids[lo:hi]

    def allowed_mask(self, text: str) -> torch.Tensor:
        """(V,) bool: tokens whose text starts with `text` (always includes the backed-off token)."""
        mask = torch.zeros(self.vocab_size, dtype=torch.bool)
        mask[self.ids_starting_with(text)] = True
        return mask
