"""Many holes per sequence: the training objective, vectorised (as in BD3-LM's training).

The engine at inference (engine/canvas.py, engine/transformers_backend.py) encodes
`[BOS] + prefix` causally, backs off the last prefix token (token healing), and denoises rows
`[middle slot of m tokens | suffix head, clamped, then end marker and padding]` that attend to
the encoded prefix and bidirectionally to themselves.

Training one hole per example spends almost all compute on prefixes. Here a clean token
sequence is encoded ONCE (causal, as at inference) and K holes are cut from it. Hole k starting
at token s_k gets its own canvas row, laid out by the engine's own `build_canvas`, which attends
to the clean keys before s_k (exactly the prompt `[BOS] + tokens[1:s_k]` the engine would have
encoded: a causal encoder's keys at positions < s_k do not depend on later tokens) and to
itself. The mask is block-causal: row k sees keys [0, s_k) of its sequence, then its canvas.
Positions continue after the hole's prompt (s_k, s_k+1, ...), as the decoder does at inference.

Cutting at token boundaries is the token-healing cut: at inference the prompt stops before the
backed-off last token and the middle restarts it, so the middle's first token is a whole token
of the file's own tokenization, as here. Self-conditioning is trained as at inference: a no-grad
first pass, its logits (divided by a temperature from the sampler's schedule) fed back, with
clamped positions one-hot on their known token (the engine's logits processor makes them so).
The vocabulary head runs only on the supervised (free) positions, its soft-capped cross-entropy
fused chunk by chunk (vocab_loss.py).

Suffix window (`suffix_window: N`, the layout in engine/transformers_backend.py): at inference
the prompt is `[BOS] + prefix + [SEP] + <= N tokens after the cursor, cut at a line's end`. Here
hole k gets a window block `[SEP] + window_k` (canvas.suffix_window over the clean tokens after
its middle, the rule the engine applies to the text after the cursor) at positions s_k, s_k+1, ...
One extra encoder pass runs all holes' blocks as a batch of rows: block k attends to the clean
keys [0, s_k) of its sequence and causally to itself, exactly the causal encoding of that prompt.
Row k's canvas then attends to [clean keys before s_k | its block's real keys | its canvas], at
positions continuing after the block. The cost is that pass (rows x (N + 1) tokens against
sequence + N + 1 keys) and the longer keys of the decoder passes.

Repository context (`repo_context_tokens: N`, the engine's `_prompt` with `request.context`): a
document drawn with its context (shards.Document, built by train/repo.py) becomes `[BOS] + context
chunks + its own header + the document's window`, the chunks fitted to N tokens by the engine's own
rule (repo_context.fit: the least relevant go first), each chunk's ids tokenized on its own as the
engine tokenizes them, so every hole's prompt is token for token the engine's for that context.
The window keeps its `sequence_tokens - 1` (the checkpoint's prefix budget): the context comes on
top, so the encoded sequence is up to N + `sequence_tokens` long. Holes start only in the window
(their prompt holds the whole context), a share of them (`anchor_share`) at a use of a name the
context defines, and a share of sequences (`context_dropout`) go without context, so the model
still completes files whose context is empty.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from .. import repo_context
from ..engine.canvas import build_canvas, middle_lengths, suffix_window
from ..engine.denoise import vocabulary_head
from .shards import Document
from .vocab_loss import softcapped_cross_entropy


@dataclass
class HoleBatch:
    encoder_ids: torch.Tensor  # (B, N) clean sequences, right-padded
    row_sequence: torch.Tensor  # (R,) which sequence each canvas row belongs to
    row_start: torch.Tensor  # (R,) s_k: the hole's first token (= its prompt length)
    canvas: torch.Tensor  # (R, W) clean canvas rows
    free: torch.Tensor  # (R, W) bool: middle slot positions (noised, supervised)
    window: torch.Tensor | None = None  # (R, N + 1) [SEP] + suffix window per row, right-padded (layout N > 0)
    window_length: torch.Tensor | None = None  # (R,) real tokens of each row's window block (SEP included)

    def to(self, device) -> "HoleBatch":
        return HoleBatch(*(t.to(device) if t is not None else None
                           for t in (self.encoder_ids, self.row_sequence, self.row_start, self.canvas, self.free,
                                     self.window, self.window_length)))

    def select(self, rows: torch.Tensor) -> "HoleBatch":
        """These canvas rows, in this order (the encoded sequences are shared, unchanged)."""
        return HoleBatch(self.encoder_ids, self.row_sequence[rows], self.row_start[rows], self.canvas[rows],
                         self.free[rows], None if self.window is None else self.window[rows],
                         None if self.window_length is None else self.window_length[rows])

    @property
    def supervised_tokens(self) -> int:
        return int(self.free.sum())


class HoleSampler:
    """Cuts editor-like holes out of token sequences and lays them out as engine canvas rows."""

    def __init__(self, tokenizer, *, sequence_tokens: int = 512, max_middle: int = 32, suffix_head: int = 16,
                 holes_per_sequence: int = 16, suffix_window: int = 0, repo_context_tokens: int = 0,
                 context_dropout: float = 0.3, anchor_share: float = 0.3):
        self.sequence_tokens = sequence_tokens
        self.suffix_window = suffix_window
        self.repo_context_tokens = repo_context_tokens
        self.context_dropout = context_dropout  # share of sequences with a context that go without it
        self.anchor_share = anchor_share  # share of holes at a use of a name the context defines, where there is one
        self.max_middle = max_middle
        self.suffix_head = suffix_head
        self.holes = holes_per_sequence
        self.ladder = sorted(set(middle_lengths(8, max_middle)))
        self.width = self.ladder[-1] + suffix_head  # the engine's canvas width for its longest slot
        self.bos = tokenizer.bos_token_id
        self.end = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id
        texts = tokenizer.backend_tokenizer.decode_batch([[i] for i in range(len(tokenizer))],
                                                         skip_special_tokens=False)
        self.newline = np.array(["\n" in t for t in texts], dtype=bool)

    def context(self, document: Document, rng: random.Random) -> tuple[list[int], int]:
        """The repository context this sequence gets (chunks fitted to `repo_context_tokens`, then the
        document's header: the engine's layout) and the index of its first chunk kept; none when off,
        when the document has none, or for the `context_dropout` share."""
        if not self.repo_context_tokens or not document.chunks or rng.random() < self.context_dropout:
            return [], len(document.chunks)
        ids, kept = repo_context.fit([c.tolist() for c in document.chunks], document.header.tolist(),
                                     self.repo_context_tokens)
        return ids, len(document.chunks) - kept

    def window(self, document: np.ndarray, rng: random.Random, context: Sequence[int] = ()
               ) -> tuple[list[int], bool, int]:
        """[BOS] + `context` + a window of the document; whether the document ends inside the buffer;
        where the window starts in the document.

        The buffer runs past the encoded part so middles and suffix heads near its end are real.
        """
        need = self.sequence_tokens - 1 + self.max_middle + max(self.suffix_head, self.suffix_window)
        start = 0
        if len(document) > self.sequence_tokens - 1:
            start = rng.randrange(0, len(document) - (self.sequence_tokens - 1) // 2)
        chunk = document[start:start + need]
        ends = start + need >= len(document)
        return [self.bos, *context, *chunk.tolist()], ends, start

    @staticmethod
    def _anchors(document: Document, first_chunk: int, start: int, lo: int, hi: int) -> list[int]:
        """Sequence positions in [lo, hi) where the document uses a name one of the kept chunks
        (from `first_chunk` on) defines; the window starts at document token `start`, position `lo`."""
        if not len(document.anchors):
            return []
        kept = document.anchor_chunks >= first_chunk
        positions = document.anchors[kept] - start + lo
        return positions[(positions >= lo) & (positions < hi)].tolist()

    def _hole_length(self, tokens: list[int], s: int, rng: random.Random) -> int:
        limit = min(self.max_middle - 1, len(tokens) - s)
        kind = rng.random()
        newline = self.newline
        if kind < 0.3:  # a few tokens: finish the identifier, call, operator
            return rng.randint(1, min(4, limit))
        if kind < 0.55:  # the rest of the line (the middle stops before the token holding the newline)
            n = 0
            while n < limit and not newline[tokens[s + n]]:
                n += 1
            return n
        if kind < 0.8:  # one to three whole lines: start at a newline token, stop before the k-th next one
            lines, n = rng.randint(1, 3), 1
            while n < limit and not (newline[tokens[s + n]] and (lines := lines - 1) == 0):
                n += 1
            return n if newline[tokens[s]] else rng.randint(1, limit)
        return rng.randint(1, limit)  # a random span

    def sample(self, documents: list[np.ndarray], rng: random.Random) -> HoleBatch:
        """One batch: a window of each document, `holes_per_sequence` holes in each."""
        encoder_rows, row_sequence, row_start, canvases, frees, windows = [], [], [], [], [], []
        for b, document in enumerate(documents):
            if not isinstance(document, Document):
                document = Document(document)
            context, first_chunk = self.context(document, rng)  # none (and no draw) when off
            tokens, ends, start = self.window(document.tokens, rng, context)
            lo = 1 + len(context)  # the document's first token: holes start there or later, never in the context
            encoded = min(len(tokens), lo + self.sequence_tokens - 1)
            encoder_rows.append(tokens[:encoded])
            if len(tokens) < lo + 1:
                continue
            newline_starts = [i for i in range(lo, encoded) if self.newline[tokens[i]]]
            last = min(encoded, len(tokens) - 1)  # the latest a hole may start
            anchors = self._anchors(document, first_chunk, start, lo, last + 1) if context else []
            for _ in range(self.holes):
                if anchors and rng.random() < self.anchor_share:
                    s = rng.choice(anchors)
                elif newline_starts and rng.random() < 0.3:
                    s = rng.choice(newline_starts)
                else:
                    s = rng.randrange(lo, last + 1)
                s = min(s, len(tokens) - 1)
                length = max(1, self._hole_length(tokens, s, rng)) if s < len(tokens) else 0
                middle = tokens[s:s + length]
                slots = [m for m in self.ladder if m >= len(middle) + 1]
                m = rng.choice(slots)
                after = s + len(middle)
                suffix = tokens[after:after + self.suffix_head]
                if not ends and len(suffix) < self.suffix_head:
                    continue  # the buffer ran out before the document did: this suffix would lie
                batch = build_canvas([m], suffix, self.suffix_head, self.end, self.pad, width=self.width)
                canvas = batch.known[0]
                canvas[:m] = torch.tensor(middle + [self.end] + [self.pad] * (m - len(middle) - 1))
                canvases.append(canvas)
                frees.append(batch.free[0])
                row_sequence.append(b)
                row_start.append(s)
                if self.suffix_window:  # the text goes on past what the buffer holds unless the document ends in it
                    ahead = tokens[after:after + self.suffix_window + 1]
                    windows.append([self.end, *suffix_window(ahead, self.suffix_window, self.newline,
                                                             continues=not ends)])
        width = max(len(r) for r in encoder_rows)
        encoder_ids = torch.full((len(encoder_rows), width), self.pad, dtype=torch.long)
        for b, row in enumerate(encoder_rows):
            encoder_ids[b, :len(row)] = torch.tensor(row)
        window = window_length = None
        if self.suffix_window:
            window = torch.full((len(windows), self.suffix_window + 1), self.pad, dtype=torch.long)
            for k, block in enumerate(windows):
                window[k, :len(block)] = torch.tensor(block)
            window_length = torch.tensor([len(block) for block in windows])
        return HoleBatch(encoder_ids=encoder_ids, row_sequence=torch.tensor(row_sequence),
                         row_start=torch.tensor(row_start), canvas=torch.stack(canvases), free=torch.stack(frees),
                         window=window, window_length=window_length)


def _rows_cache(cache, rows: torch.Tensor, length: int, limit: int | None = None):
    """The encoded sequences' KV cache gathered per canvas row (a view the decoder reads, never writes),
    only its first `limit` keys when given."""
    from ..engine.transformers_backend import _snapshot

    view = _snapshot(cache)
    for layer in view.layers:
        if layer.keys.shape[-2] != length:
            raise ValueError("training sequences must fit the sliding window (config sliding_window > sequence)")
        layer.keys = layer.keys[..., :limit, :].index_select(0, rows)
        layer.values = layer.values[..., :limit, :].index_select(0, rows)
    return view


def block_causal_mask(row_start: torch.Tensor, length: int, width: int, dtype: torch.dtype) -> torch.Tensor:
    """(R, 1, W, N + W) additive mask: row k sees encoded keys [0, s_k) and its whole canvas."""
    keys = torch.arange(length, device=row_start.device)
    visible = torch.cat([keys[None, :] < row_start[:, None],
                         torch.ones((row_start.shape[0], width), dtype=torch.bool, device=row_start.device)], dim=1)
    mask = torch.zeros(visible.shape, dtype=dtype, device=row_start.device)
    mask.masked_fill_(~visible, torch.finfo(dtype).min)
    return mask[:, None, None, :].expand(-1, 1, width, -1)


def _additive(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    mask = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
    return mask.masked_fill_(~visible, torch.finfo(dtype).min)


def window_masks(row_start: torch.Tensor, window_length: torch.Tensor, length: int, block: int, width: int,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Additive masks of the suffix-window layout, for keys [N encoded | block | canvas]:
    (R, 1, block, N + block) for the window pass (keys before s_k, then causal within the block),
    (R, 1, W, N + block + W) for the canvas (keys before s_k, the block's real tokens, its canvas)."""
    device = row_start.device
    before = torch.arange(length, device=device)[None, :] < row_start[:, None]  # (R, N)
    own = torch.arange(block, device=device)
    causal = own[None, :] <= own[:, None]  # (block, block)
    rows = row_start.shape[0]
    encoder = torch.cat([before[:, None, :].expand(-1, block, -1), causal[None].expand(rows, -1, -1)], dim=2)
    real = own[None, :] < window_length[:, None]  # (R, block)
    decoder = torch.cat([before, real, torch.ones((rows, width), dtype=torch.bool, device=device)], dim=1)
    return _additive(encoder, dtype)[:, None], _additive(decoder, dtype)[:, None, None, :].expand(-1, 1, width, -1)


@dataclass
class RowKeys:
    """What every canvas row attends to: a KV cache (`index` picks each row's entry; None: one entry
    per row already), the decoder's additive mask over its `length` keys and the canvas, and the
    canvas' positions."""

    source: object
    index: torch.Tensor | None
    length: int
    mask: torch.Tensor
    positions: torch.Tensor
    row_start: torch.Tensor | None = None  # set when a row's keys are its sequence's first s_k: a group may cut them

    def cache(self, rows: torch.Tensor | None = None):
        if self.index is None:
            return _rows_cache(self.source, rows, self.length) if rows is not None else self.source
        return _rows_cache(self.source, self.index if rows is None else self.index[rows], self.length)

    def masks(self, rows: torch.Tensor | None = None) -> dict:
        mask = self.mask if rows is None else self.mask[rows]
        return {"full_attention": mask, "sliding_attention": mask}

    def group(self, rows: torch.Tensor) -> dict:
        """The decoder's key inputs for these rows. Where the keys are a prefix of the sequence, only
        the first max(s_k) are gathered: the keys every row of the group masks out are not copied
        or attended at all (the same values: a masked key adds exp(-inf) = 0)."""
        if self.row_start is None:
            return {"past_key_values": self.cache(rows), "decoder_attention_mask": self.masks(rows),
                    "decoder_position_ids": self.positions[rows]}
        limit = int(self.row_start[rows].max())
        mask = block_causal_mask(self.row_start[rows], limit, self.mask.shape[-2], self.mask.dtype)
        return {"past_key_values": _rows_cache(self.source, self.index[rows], self.length, limit),
                "decoder_attention_mask": {"full_attention": mask, "sliding_attention": mask},
                "decoder_position_ids": self.positions[rows]}


def row_keys(model, batch: HoleBatch) -> RowKeys:
    """Encode the clean sequences once (causal: pads only trail) and, with a suffix window, every
    row's window block on top of its sequence's keys (one more encoder pass over all rows)."""
    device = batch.canvas.device
    rows, width = batch.canvas.shape
    length = batch.encoder_ids.shape[1]
    encoded = model.model.encoder(input_ids=batch.encoder_ids, use_cache=True).past_key_values
    offsets = torch.arange(width, device=device)[None, :]
    if batch.window is None:
        mask = block_causal_mask(batch.row_start, length, width, model.dtype)
        return RowKeys(encoded, batch.row_sequence, length, mask, batch.row_start[:, None] + offsets,
                       row_start=batch.row_start)
    block = batch.window.shape[1]
    encoder_mask, mask = window_masks(batch.row_start, batch.window_length, length, block, width, model.dtype)
    cache = _rows_cache(encoded, batch.row_sequence, length)
    cache = model.model.encoder(input_ids=batch.window, past_key_values=cache, use_cache=True,
                                attention_mask={"full_attention": encoder_mask, "sliding_attention": encoder_mask},
                                position_ids=batch.row_start[:, None] + torch.arange(block, device=device)[None, :]
                                ).past_key_values
    if any(layer.keys.shape[-2] != length + block for layer in cache.layers):
        raise ValueError("training sequences and the suffix window must fit the sliding window "
                         "(config sliding_window > sequence_tokens + suffix_window + 1)")
    positions = (batch.row_start + batch.window_length)[:, None] + offsets
    return RowKeys(cache, None, length + block, mask, positions)


def self_conditioning_input(embed, canvas: torch.Tensor, chosen_rows: torch.Tensor, free: torch.Tensor,
                            probs: torch.Tensor) -> torch.Tensor:
    """The decoder's self-conditioning input softmax(logits) @ E, built where it is not trivial.

    What transformers computes from `self_conditioning_logits` (rows, width, V): a clamped position's
    logits are one-hot on its known token, so its soft embedding is that token's embedding; a row not
    chosen is zeros; only the chosen rows' free positions (`probs`, (F, V), in row-major order) need
    the product with the embedding matrix. The same values and gradients (the embedding matrix gets
    its gradient through both paths) without a (rows, width, V) tensor and a product over every slot:
    a third of the positions, and none of the 400 MB that 256 rows x 48 slots x 8,192 logits take.
    """
    base = embed(canvas) * chosen_rows[:, None, None].to(embed.weight.dtype)
    mixed = (probs @ embed.weight) * embed.embed_scale.to(embed.weight.dtype)
    return base.index_put((chosen_rows[:, None] & free,), mixed.to(base.dtype))


_FORCE_GQA = "TRANSFORMERS_SDPA_FORCE_GQA"  # read by transformers' sdpa_attention at every call


@contextmanager
def grouped_query_sdpa(device: torch.device):
    """On the CPU, let sdpa read the key/value heads as they are (`enable_gqa`) although a mask is given.

    transformers asks for that only without a mask (CUDA's fused kernels need it so) and otherwise
    copies keys and values once per query head (repeat_kv): in training that is a (rows, keys,
    heads, head_dim) copy per layer and pass, and its zero-filled gradient, ~10% of a CPU step.
    The CPU kernel takes grouped heads with a mask; the values are the same.
    """
    if device.type != "cpu" or os.environ.get(_FORCE_GQA) is not None:
        yield
        return
    os.environ[_FORCE_GQA] = "1"
    try:
        yield
    finally:
        os.environ.pop(_FORCE_GQA, None)


def holes_loss(model, batch: HoleBatch, generator: torch.Generator | None = None,
               self_condition_p: float = 0.5) -> torch.Tensor:
    """Cross-entropy on the middle slots of all holes, against one causal encoding per sequence."""
    with grouped_query_sdpa(batch.canvas.device):
        return _holes_loss(model, batch, generator, self_condition_p)


GROUP_ROWS = 64  # canvas rows per decoder call: rows sorted by hole start, each group reads only the keys it needs


def _holes_loss(model, batch: HoleBatch, generator: torch.Generator | None, self_condition_p: float) -> torch.Tensor:
    device = batch.canvas.device
    vocab = model.config.text_config.vocab_size
    batch = batch.select(torch.argsort(batch.row_start, stable=True))
    rows, width = batch.canvas.shape
    keys = row_keys(model, batch)
    groups = torch.arange(rows, device=device).split(GROUP_ROWS)

    rate = torch.rand((rows, 1), device=device, generator=generator).clamp(min=0.05)
    noise = torch.randint(0, vocab, batch.canvas.shape, device=device, generator=generator)
    corrupt = (torch.rand(batch.canvas.shape, device=device, generator=generator) < rate) & batch.free
    noisy = torch.where(corrupt, noise, batch.canvas)
    free = batch.free
    decoder = model.model.decoder
    current = None  # the self-conditioning input of the group being decoded; None: zeros, as at the first step

    def decode(subset: torch.Tensor | None = None, soft: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states of all rows (or of the `subset` rows), group by group, in row order; `soft`
        (rows, width, H): the self-conditioning input of every row."""
        nonlocal current
        hidden = []
        for group in groups:
            if subset is not None:
                group = group[subset[group]]
            if len(group):
                current = None if soft is None else soft[group]
                hidden.append(decoder(decoder_input_ids=noisy[group], **keys.group(group)).last_hidden_state)
        return torch.cat(hidden)

    soft = None
    if self_condition_p > 0:
        chosen_rows = torch.rand(rows, device=device, generator=generator) < self_condition_p
        chosen = chosen_rows.nonzero().squeeze(-1)
        if len(chosen):
            with torch.no_grad():  # the first pass, for the chosen rows only: what the previous step would give
                sub_free = free[chosen]
                first = vocabulary_head(model, decode(chosen_rows)[sub_free])
                temperature = 0.4 + 0.4 * torch.rand((len(chosen), 1), device=device, generator=generator)
                scaled = first.div_(temperature.expand(-1, width)[sub_free][:, None]).to(model.dtype)
                probs = scaled.softmax(-1, dtype=torch.float32).to(decoder.embed_tokens.weight.dtype)
            soft = self_conditioning_input(decoder.embed_tokens, batch.canvas, chosen_rows, free, probs)
    hook = decoder.self_conditioning.register_forward_pre_hook(
        lambda module, args: (args[0], current.to(args[0].dtype)) if current is not None else None)
    try:
        hidden = decode(soft=soft)
    finally:
        hook.remove()
    return softcapped_cross_entropy(hidden[free], model.lm_head.weight, batch.canvas[free],
                                    model.final_logit_softcapping)
