"""A fast denoising step behind the same Engine interface (transformers' loop stays the reference).

`FastEngine` answers exactly as `TransformersEngine` does (same tokenization, prompt window,
encoded-prefix reuse across keystrokes, canvas, clamping, token healing, sampling rule, stopping
rule, scores), but each denoising step runs a static-shape decoder pass:

- The encoded prefix's keys and values are copied into preallocated per-layer buffers (full
  attention layers: one slot per prompt position; sliding-window layers: the last
  `sliding_window - 1` positions, what transformers' sliding cache keeps). Nothing is repeated
  across rows: all rows' canvases are folded into one query sequence that reads the shared prefix
  once, and a block mask keeps each row to its own canvas.
- Shapes come from a small fixed set: rows padded to a bucket (1/4/8 by default), the canvas
  width to a multiple of 16, the prefix to a bucket. The mask and positions are computed inside
  the pass from three numbers (prompt length, sliding prefix length, real width), so one captured
  pass serves every request of its bucket.
- On CUDA each bucket's pass is captured once as a CUDA graph (at engine start, with progress,
  and lazily for a bucket first seen later). Without graphs (a CPU) nothing needs fixed shapes:
  each pass runs at the request's own rows, width and prompt length, each row attending to the
  valid prefix slots and its own canvas with no mask (less work than the folded, masked batch).
- The vocabulary head, sampling, entropies and the self-conditioning input run on the free
  (middle) positions only; clamped positions' self-conditioning input is their token's embedding.
- A row that has stopped (stable and confident) leaves the batch: the remaining rows move into a
  smaller bucket, so finished rows stop costing compute. Random numbers are still drawn for the
  whole request, in the reference's order and shapes, so a seeded request gives the same
  candidates as the reference.

The sampler's arithmetic (bias, one softmax for argmax/sample/entropy, acceptance, stopping rule,
self-conditioning input) mirrors `denoise.denoise` line for line; tests/test_fast_engine.py checks
that seeded requests give the reference's candidates, so a change to one belongs in the other.
One deliberate difference: with bf16 weights the next step's soft embeddings are one bf16 product
(float32 accumulation) instead of a float32 copy of the whole embedding matrix per step.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import Counter, deque
from dataclasses import dataclass

import msgspec
import torch
import torch.nn.functional as F

from ..types import EngineTimings, InfillRequest, InfillResult
from .cancel import NEVER, CancelToken
from .canvas import CanvasBatch
from .denoise import (BLOCKED, DenoiseOutput, DenoiseSettings, accepted_positions, blank_so_far, distribution,
                      forbid_blank_end, rule_out_noise, sample_inverse_cdf, vocabulary_head)
from .transformers_backend import Progress, TransformersEngine

log = logging.getLogger(__name__)

ROW_BUCKETS = (1, 4, 8)
WIDTH_STEP = 16
# Prompt sizes a pass is shaped for: a power of two plus room for the BOS token and a little more, so a
# full `contextTokens` window (1024 tokens + BOS) lands in the 1088 bucket, not the next power of two.
PREFIX_BUCKETS = tuple(2**k + 64 for k in range(8, 16))
PREFIX_ALIGN = 64


def rms_norm(norm, x: torch.Tensor) -> torch.Tensor:
    """DiffusionGemmaRMSNorm.forward as one fused kernel (float32 inside, as there): the module's
    half-dozen small ops per call are a large share of a small model's pass on a CPU."""
    weight = norm.weight.float() if norm.with_scale else None
    return F.rms_norm(x.float(), (x.shape[-1],), weight, _norm_eps(norm)).type_as(x)


def _norm_eps(norm) -> float:
    """The norm's epsilon: transformers 5.25 renamed the attribute `eps` to `variance_epsilon`."""
    eps = getattr(norm, "variance_epsilon", None)
    return norm.eps if eps is None else eps


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


def row_bucket(rows: int, buckets: tuple[int, ...] = ROW_BUCKETS) -> int:
    for bucket in buckets:
        if rows <= bucket:
            return bucket
    return _round_up(rows, buckets[-1])


@dataclass
class _Captured:
    graph: object  # torch.cuda.CUDAGraph
    canvas: torch.Tensor  # (R, Wb) long, static input
    soft: torch.Tensor  # (R, Wb, H) static input
    lens: torch.Tensor  # (3,) long: prompt length, sliding prefix length, real canvas width
    hidden: torch.Tensor  # (R, Wb, H) static output


class _Replay:
    """A stand-in for a CUDA graph off the GPU (tests): replay() recomputes the pass from the static
    inputs into the static output, so the buffer handling around real graphs runs on a CPU too."""

    def __init__(self, run, canvas, soft, lens, prefix: int, hidden):
        self.run, self.args, self.hidden = run, (canvas, soft, lens, prefix), hidden

    def replay(self) -> None:
        self.hidden.copy_(self.run(*self.args))


class StaticDecoder:
    """The decoder pass over bucketed static shapes, reading the prefix from preallocated buffers."""

    def __init__(self, model, *, device: str, prefix_capacity: int, row_buckets=ROW_BUCKETS,
                 graphs: bool = False, compile: bool = False, drop_finished: bool = True,
                 emulate_graphs: bool = False, exact: bool = True):
        self.model = model
        self.decoder = model.model.decoder
        self.config = model.config.text_config
        self.device = torch.device(device)
        self.dtype = model.dtype
        self.vocab = self.config.vocab_size
        self.hidden_size = self.config.hidden_size
        self.row_buckets = tuple(sorted(row_buckets))
        self.emulate_graphs = emulate_graphs and self.device.type != "cuda"
        self.graphs_enabled = (graphs and self.device.type == "cuda") or self.emulate_graphs
        # torch.compile fuses the pass's small kernels (inductor, one compile per bucket, on first use);
        # the graphs are still captured here, around the compiled pass.
        self.compiled = compile and self.device.type == "cuda"
        self._pass = torch.compile(self.forward, dynamic=False, fullgraph=True) if self.compiled else self.forward
        self.drop_finished = drop_finished
        # Without graphs or compile nothing needs a fixed shape: each pass runs at the request's own
        # rows, width and prompt length, with per-row attention and no mask (a CPU does less work).
        self.exact = exact and not self.graphs_enabled and not self.compiled
        self.window = self.config.sliding_window
        self.layers = list(self.decoder.layers)
        self.sliding = [layer.self_attn.is_sliding for layer in self.layers]
        self._graphs: dict[tuple[int, int, int], _Captured] = {}
        self._pool = None
        self.capture_error = ""  # why graphs were given up, if they were
        self.stats: Counter[str] = Counter()
        self.bucket_trace: deque[tuple[int, int, int]] = deque(maxlen=4096)  # (rows, width, prefix) per pass
        self._allocate(prefix_capacity)

    # -- buffers -------------------------------------------------------------------------------
    def _allocate(self, prefix_capacity: int) -> None:
        self.prefix_capacity = _round_up(max(prefix_capacity, 1), PREFIX_ALIGN)
        self.sliding_capacity = min(self.prefix_capacity, self.window - 1)
        self.keys, self.values = [], []
        with torch.inference_mode():
            for layer, sliding in zip(self.layers, self.sliding):
                attn = layer.self_attn
                kv_heads = attn.k_proj.out_features // attn.head_dim
                slots = self.sliding_capacity if sliding else self.prefix_capacity
                shape = (1, kv_heads, slots, attn.head_dim)
                self.keys.append(torch.zeros(shape, dtype=self.dtype, device=self.device))
                self.values.append(torch.zeros(shape, dtype=self.dtype, device=self.device))
        self._graphs.clear()  # captured passes read the old buffers
        self._pool = None

    def prefix_bucket(self, length: int) -> int:
        for bucket in PREFIX_BUCKETS:
            if length <= bucket < self.prefix_capacity:
                return bucket
        return self.prefix_capacity

    def prefix_buckets(self) -> list[int]:
        return [b for b in PREFIX_BUCKETS if b < self.prefix_capacity] + [self.prefix_capacity]

    @torch.inference_mode()
    def load_prefix(self, cache) -> int:
        """Copy the encoder's KV cache (batch 1) into the static buffers; returns the prompt length."""
        length = int(cache.get_seq_length())
        if length > self.prefix_capacity:
            log.info("growing the static prefix from %d to %d slots", self.prefix_capacity, length)
            self._allocate(length)
        for i, layer in enumerate(cache.layers):
            keys, values = layer.keys, layer.values
            n = keys.shape[-2]
            self.keys[i][:, :, :n].copy_(keys[:1])
            self.values[i][:, :, :n].copy_(values[:1])
        self.prompt_length = length
        self.sliding_length = min(length, self.window - 1)
        return length

    # -- the pass ------------------------------------------------------------------------------
    def _masks(self, lens: torch.Tensor, rows: int, width: int, prefix: int) -> dict[bool, torch.Tensor]:
        """(queries, keys) bool masks per layer kind: valid prefix slots, and the row's own canvas."""
        n = rows * width
        query_row = torch.arange(n, device=self.device) // width
        masks = {}
        for sliding, extent, valid in ((True, min(prefix, self.sliding_capacity), lens[1]),
                                       (False, prefix, lens[0])):
            slot = torch.arange(extent + n, device=self.device)
            canvas_slot = slot - extent
            in_canvas = canvas_slot >= 0
            own_row = (canvas_slot.div(width, rounding_mode="floor"))[None, :] == query_row[:, None]
            real_column = (canvas_slot.remainder(width) < lens[2]) & in_canvas
            masks[sliding] = ((slot < valid) & ~in_canvas)[None, :] | (own_row & real_column[None, :])
        return masks

    def _attention(self, index: int, attn, x, cos, sin, mask, prefix_extent: int):
        rows, width, _ = x.shape
        n = rows * width
        heads, dim = attn.config.num_attention_heads, attn.head_dim
        kv_heads = attn.k_proj.out_features // dim
        groups = heads // kv_heads
        from transformers.models.diffusion_gemma.modeling_diffusion_gemma import apply_rotary_pos_emb

        q = rms_norm(attn.q_norm, attn.q_proj(x).view(rows, width, heads, dim))
        q = apply_rotary_pos_emb(q, cos, sin, unsqueeze_dim=2)
        k = attn.k_proj(x).view(rows, width, kv_heads, dim)
        v = attn.v_proj(x).view(rows, width, kv_heads, dim) if attn.v_proj is not None else k
        k = apply_rotary_pos_emb(rms_norm(attn.k_norm, k), cos, sin, unsqueeze_dim=2)
        v = rms_norm(attn.v_norm, v)
        if self.exact:
            return attn.o_proj(self._row_attention(index, q, k, v, attn.scaling, prefix_extent))
        keys = torch.cat([self.keys[index][:, :, :prefix_extent], k.reshape(1, n, kv_heads, dim).transpose(1, 2)], 2)
        values = torch.cat([self.values[index][:, :, :prefix_extent], v.reshape(1, n, kv_heads, dim).transpose(1, 2)],
                           2)
        # Query heads sharing a key/value head go into the query length: (1, kv_heads, groups * n, dim).
        q = q.reshape(n, kv_heads, groups, dim).permute(1, 2, 0, 3).reshape(1, kv_heads, groups * n, dim)
        full_mask = mask[None].expand(groups, -1, -1).reshape(1, 1, groups * n, mask.shape[-1])
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=full_mask, scale=attn.scaling)
        out = out.reshape(kv_heads, groups, n, dim).permute(2, 0, 1, 3).reshape(rows, width, heads * dim)
        return attn.o_proj(out)

    def _row_attention(self, index: int, q, k, v, scale: float, valid: int) -> torch.Tensor:
        """Exact shapes (no graphs): each row reads the valid prefix slots and its own canvas, so
        the attention needs no mask and computes no blocked scores. q (R, W, heads, D), k and v
        (R, W, kv_heads, D) -> (R, W, heads * D)."""
        rows, width, heads, dim = q.shape
        kv_heads = k.shape[2]
        groups = heads // kv_heads
        # Query heads sharing a key/value head go into the query length: (R, kv_heads, groups * W, D).
        q = q.reshape(rows, width, kv_heads, groups, dim).permute(0, 2, 3, 1, 4).reshape(
            rows, kv_heads, groups * width, dim)
        prefix_keys = self.keys[index][:, :, :valid].expand(rows, -1, -1, -1)
        prefix_values = self.values[index][:, :, :valid].expand(rows, -1, -1, -1)
        keys = torch.cat([prefix_keys, k.transpose(1, 2)], 2)
        values = torch.cat([prefix_values, v.transpose(1, 2)], 2)
        out = F.scaled_dot_product_attention(q, keys, values, scale=scale)
        return out.reshape(rows, kv_heads, groups, width, dim).permute(0, 3, 1, 2, 4).reshape(rows, width, heads * dim)

    def _layer(self, index: int, layer, x, cos, sin, mask, prefix_extent: int):
        """DiffusionGemmaDecoderTextLayer.forward with the static attention."""
        residual = x
        h = rms_norm(layer.input_layernorm, x)
        h = self._attention(index, layer.self_attn, h, cos, sin, mask, prefix_extent)
        x = residual + rms_norm(layer.post_attention_layernorm, h)
        residual = x
        dense = rms_norm(layer.post_feedforward_layernorm_1, layer.mlp(rms_norm(layer.pre_feedforward_layernorm, x)))
        flat = residual.reshape(-1, residual.shape[-1])
        _, weights, experts = layer.router(flat)
        sparse = layer.experts(rms_norm(layer.pre_feedforward_layernorm_2, flat), experts, weights).reshape(residual.shape)
        sparse = rms_norm(layer.post_feedforward_layernorm_2, sparse)
        x = residual + rms_norm(layer.post_feedforward_layernorm, dense + sparse)
        return x * layer.layer_scalar

    def forward(self, canvas: torch.Tensor, soft: torch.Tensor, lens: torch.Tensor, prefix: int) -> torch.Tensor:
        """Hidden states (R, Wb, H) of one decoder pass; every shape depends only on (R, Wb, prefix)."""
        rows, width = canvas.shape
        decoder = self.decoder
        x = decoder.self_conditioning(decoder.embed_tokens(canvas), soft)
        positions = (lens[0] + torch.arange(width, device=self.device))[None]
        embeddings = {kind: decoder.rotary_emb(x, positions, kind) for kind in decoder.unique_layer_types}
        if self.exact:  # the valid slots themselves: the prompt, or what the sliding layers keep of it
            masks, extents = {True: None, False: None}, (self.sliding_length, self.prompt_length)
        else:
            masks, extents = self._masks(lens, rows, width, prefix), (min(prefix, self.sliding_capacity), prefix)
        for i, layer in enumerate(self.layers):
            cos, sin = embeddings[self.config.layer_types[i]]
            x = self._layer(i, layer, x, cos, sin, masks[self.sliding[i]], extents[0] if self.sliding[i] else extents[1])
        return rms_norm(decoder.norm, x)

    def _capture(self, rows: int, width: int, prefix: int) -> _Captured:
        canvas = torch.zeros((rows, width), dtype=torch.long, device=self.device)
        soft = torch.zeros((rows, width, self.hidden_size), dtype=self.dtype, device=self.device)
        lens = torch.tensor([1, 1, width], dtype=torch.long, device=self.device)
        if self.emulate_graphs:
            hidden = self._pass(canvas, soft, lens, prefix)
            self.stats["graphs_captured"] += 1
            return _Captured(_Replay(self._pass, canvas, soft, lens, prefix, hidden), canvas, soft, lens, hidden)
        stream = torch.cuda.Stream(device=self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):  # warm up (kernel selection, workspaces) off the capture
            for _ in range(2):
                self._pass(canvas, soft, lens, prefix)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            hidden = self._pass(canvas, soft, lens, prefix)
        if self._pool is None:
            self._pool = graph.pool()
        self.stats["graphs_captured"] += 1
        return _Captured(graph, canvas, soft, lens, hidden)

    def _capture_or_give_up(self, shape: tuple[int, int, int]) -> None:
        """Capture one bucket; if capture fails, say why once and run every pass eagerly from now on."""
        try:
            self._graphs[shape] = self._capture(*shape)
        except Exception as exc:  # noqa: BLE001 - any capture failure: the eager static pass still answers
            if self.device.type == "cuda":
                try:
                    torch.cuda.synchronize(self.device)
                except Exception:  # noqa: BLE001 - a sticky device error will surface on the next pass
                    pass
            self.graphs_enabled = False
            self._graphs.clear()
            self.capture_error = f"{type(exc).__name__}: {exc}"
            self.stats["graph_capture_failed"] += 1
            log.warning("fast engine: capturing the decoder pass %s failed, running it without graphs: %s",
                        shape, self.capture_error)

    @torch.inference_mode()
    def capture(self, shapes: list[tuple[int, int, int]], progress: Progress | None = None) -> None:
        """Capture the passes for these (rows, width, prefix) buckets (CUDA only; no-op elsewhere)."""
        for k, shape in enumerate(shapes):
            if not self.graphs_enabled:
                return
            if shape not in self._graphs:
                if progress:  # the count is in the message; the percent is the weights' bytes only
                    progress(f"capturing decoder pass {k + 1}/{len(shapes)}", None)
                self._capture_or_give_up(shape)

    def step(self, canvas: torch.Tensor, soft: torch.Tensor, width: int) -> torch.Tensor:
        """One pass for the active rows: canvas (a, width), soft (a, width, H) -> hidden (a, width, H)."""
        active = canvas.shape[0]
        if self.exact:
            self.bucket_trace.append((active, width, self.prompt_length))
            lens = torch.tensor([self.prompt_length, self.sliding_length, width], dtype=torch.long)
            return self._pass(canvas, soft.to(self.dtype), lens.to(self.device), self.prompt_length)
        rows, padded = row_bucket(active, self.row_buckets), _round_up(width, WIDTH_STEP)
        prefix = self.prefix_bucket(self.prompt_length)
        shape = (rows, padded, prefix)
        self.bucket_trace.append(shape)
        if self.graphs_enabled and shape not in self._graphs:
            self._capture_or_give_up(shape)  # a bucket first seen now: capture it once
            self.stats["graphs_captured_late"] += 1
        captured = self._graphs.get(shape)
        if captured is not None:
            inputs_canvas, inputs_soft, lens = captured.canvas, captured.soft, captured.lens
        else:
            inputs_canvas = torch.zeros((rows, padded), dtype=torch.long, device=self.device)
            inputs_soft = torch.zeros((rows, padded, self.hidden_size), dtype=self.dtype, device=self.device)
            lens = torch.empty(3, dtype=torch.long, device=self.device)
        inputs_canvas[:active, :width] = canvas
        inputs_soft[:active, :width] = soft
        if active < rows:  # pad rows: isolated by the mask, any finite input will do
            inputs_soft[active:].zero_()
        lens.copy_(torch.tensor([self.prompt_length, self.sliding_length, width], dtype=torch.long))
        if captured is not None:
            captured.graph.replay()
            hidden = captured.hidden
        else:
            hidden = self._pass(inputs_canvas, inputs_soft, lens, prefix)
        return hidden[:active, :width]

    # -- the denoising loop --------------------------------------------------------------------
    @torch.inference_mode()
    def denoise(self, batch: CanvasBatch, settings: DenoiseSettings, *, first_token_allowed=None,
                banned_bias: torch.Tensor | None = None, blank_tokens: torch.Tensor | None = None,
                stop_ids: tuple[int, ...] = (), cancel: CancelToken = NEVER,
                generator: torch.Generator | None = None) -> DenoiseOutput:
        """`denoise.denoise` over the static pass; finished rows leave the batch (see the module docstring)."""
        device, vocab = self.device, self.vocab
        model, decoder = self.model, self.decoder
        known = batch.known.to(device)
        clamped = batch.clamped.to(device)
        free = batch.free.to(device)
        rows, width = known.shape
        free_count = free.sum(-1).clamp(min=1)
        blank = blank_tokens.to(device) if blank_tokens is not None and stop_ids else None
        heal_bias = None
        if first_token_allowed is not None:
            heal_bias = torch.where(first_token_allowed.to(device), 0.0, BLOCKED)
        is_first = free.clone()
        is_first[:, 1:] = False

        def noise() -> torch.Tensor:
            return torch.randint(0, vocab, (rows, width), device=device, generator=generator)

        canvas = torch.where(clamped, known, noise())
        renoised = free.clone()  # positions whose token is noise (denoise.py)
        argmax = canvas.clone()
        # Self-conditioning input, as denoise.py builds it: soft embeddings softmax(logits) @ E (float32),
        # a clamped position's one-hot distribution being its own embedding; zeros before the first pass.
        embed = decoder.embed_tokens
        soft = embed(known).float()
        first_soft = torch.zeros((rows, width, self.hidden_size), dtype=self.dtype, device=device)
        history = torch.full((max(settings.stability, 1), rows, width), -1, dtype=torch.long, device=device)
        token_logprobs = torch.zeros((rows, width), device=device)
        in_pass = torch.arange(rows, device=device)  # the rows this pass computes
        live = torch.ones(rows, dtype=torch.bool, device=device)  # per row in the pass: not finished yet
        steps_run = 0
        straggler_left = None  # steps the last unfinished row has left (settings.straggler_steps)
        marks = []  # (before the pass, after it) per step: where a step's time goes

        for remaining in range(settings.steps, 0, -1):
            cancel.raise_if_cancelled(steps_run=steps_run, steps_left=remaining)
            a_free, a_known, a_clamped = free[in_pass], known[in_pass], clamped[in_pass]
            marks.append(self._mark())
            hidden = self.step(canvas[in_pass], first_soft[in_pass] if steps_run == 0 else soft[in_pass], width)
            marks.append(self._mark())
            steps_run += 1
            temperature = settings.t_min + (settings.t_max - settings.t_min) * remaining / settings.steps
            processed = vocabulary_head(model, hidden[a_free], temperature)
            if banned_bias is not None:
                processed += banned_bias
            if heal_bias is not None:
                processed[is_first[in_pass][a_free]] += heal_bias
            if settings.ignore_noise:
                rule_out_noise(processed, canvas[in_pass][a_free], renoised[in_pass][a_free])
            if blank is not None:
                forbid_blank_end(processed, blank_so_far(argmax[in_pass], a_free, blank), stop_ids)

            best, shifted, total, probs = distribution(processed)  # one softmax, as in denoise.py
            uniform = torch.rand((rows, width, 1), device=device, generator=generator)[in_pass][a_free]
            new_argmax = a_known.clone()
            new_argmax[a_free] = best

            entropy = torch.zeros(a_free.shape, device=device)
            entropy[a_free] = (total.squeeze(-1).log() - (probs * shifted).sum(-1)).clamp(min=0.0)
            accepted = accepted_positions(entropy, a_free, settings, steps_run)
            sampled = a_known.clone()  # only accepted positions keep a sample: draw those alone
            kept = accepted[a_free]
            sampled[accepted] = sample_inverse_cdf(probs[kept], uniform[kept])
            new_canvas = torch.where(accepted, sampled, noise()[in_pass])
            new_canvas = torch.where(a_clamped, a_known, new_canvas)

            # Rows that finished earlier keep what they had; the rest move on.
            moving = in_pass[live]
            canvas[moving] = new_canvas[live]
            renoised[moving] = (a_free & ~accepted)[live]
            argmax[moving] = new_argmax[live]
            past = history[:, in_pass]
            stable = (past == new_argmax[None]).all(-1).all(0)
            past = torch.roll(past, -1, 0)
            past[-1] = new_argmax
            history[:, moving] = past[:, live]
            confident = entropy.sum(-1) / free_count[in_pass] < settings.confidence
            done = stable & confident & live

            last = remaining == 1 or straggler_left == 1
            final = live if last else done
            if last or bool(done.any()):  # the score: each row's final tokens under its last logits
                position_final = final[:, None].expand_as(a_free)[a_free]
                picked = torch.log_softmax(shifted[position_final] * temperature, -1).gather(
                    -1, new_argmax[a_free][position_final][:, None]).squeeze(-1)
                logprob = torch.zeros_like(entropy)
                logprob[final[:, None] & a_free] = picked
                token_logprobs[in_pass[final]] = logprob[final]
            live = live & ~done
            if straggler_left is not None:
                straggler_left -= 1
            elif settings.straggler_steps > 0 and rows > 1 and int(live.sum()) == 1:
                straggler_left = settings.straggler_steps
            if last or not bool(live.any()):
                break
            self.stats["rows_finished_early"] += int(done.sum())

            # Self-conditioning input of the next pass: the soft embeddings of this pass's distributions.
            # float32 weights: the reference's float32 product; bf16: one bf16 product with float32
            # accumulation (the float32 copy of a 262,144 x 2,816 embedding would cost ~3 GB per step).
            position_live = live[:, None].expand_as(a_free)[a_free]
            mixed = probs if bool(position_live.all()) else probs[position_live]
            if embed.weight.dtype == torch.float32:
                product = mixed @ embed.weight
            else:
                product = (mixed.to(embed.weight.dtype) @ embed.weight).float()
            next_soft = soft[in_pass[live]]
            next_soft[a_free[live]] = product * embed.scalar_embed_scale
            soft[in_pass[live]] = next_soft
            if self.drop_finished:  # finished rows leave the pass: a smaller bucket, less work
                in_pass, live = in_pass[live], live[live]
        marks.append(self._mark())
        out = DenoiseOutput(tokens=argmax.cpu(), token_logprobs=token_logprobs.cpu(), steps=steps_run)
        self._account(marks)
        return out

    def _mark(self):
        """A point in time on the device's stream (a CUDA event; the host clock elsewhere)."""
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _account(self, marks: list) -> None:
        """Add the request's pass time and the rest of its steps (head, sampling, bookkeeping) to stats."""
        def elapsed(a, b) -> float:
            return a.elapsed_time(b) if self.device.type == "cuda" else (b - a) * 1e3

        if self.device.type == "cuda":
            marks[-1].synchronize()
        passes = sum(elapsed(marks[i], marks[i + 1]) for i in range(0, len(marks) - 1, 2))
        total = elapsed(marks[0], marks[-1])
        self.stats["passes"] += (len(marks) - 1) // 2
        self.stats["pass_ms"] += passes
        self.stats["between_passes_ms"] += total - passes


class FastEngine(TransformersEngine):
    """TransformersEngine whose denoising steps run `StaticDecoder` (same answers, fewer launches).

    `row_buckets`: batch sizes a pass is shaped for; `capture_middles`: the longest middles whose
    canvas widths are captured at start (other widths are captured when first seen);
    `graphs`: "auto" (CUDA graphs on a GPU with bf16 weights), "cuda", "compile" (torch.compile the
    pass, then capture it; compiles on first use of each bucket), "none" (the static pass, eagerly),
    "emulate" (tests: the graph buffer handling with an eager replay, on any device);
    `drop_finished`: finished rows leave the batch (False keeps them, as the reference loop does);
    `exact_shapes`: without graphs, passes run at each request's own shapes (False: the buckets,
    as graphs would).
    Progress: the reference load's (a percent while the weights are read, measured in bytes), then
    graph capture (its count in the message, no percent), then "ready" at 100.
    """

    def __init__(self, model: str, *, row_buckets: tuple[int, ...] = ROW_BUCKETS,
                 capture_middles: tuple[int, ...] = (32, 64), graphs: str = "auto", drop_finished: bool = True,
                 exact_shapes: bool = True, progress: Progress | None = None, **kwargs):
        report = progress or (lambda message, percent: None)
        self._exact_shapes = exact_shapes
        self._row_buckets = tuple(row_buckets)
        self._capture_middles = tuple(capture_middles)
        self._graphs_mode = graphs
        self._drop_finished = drop_finished
        self._static: StaticDecoder | None = None

        def base_progress(message: str, percent: int | None) -> None:  # "ready" once the graphs are captured
            if message != "ready":
                report(message, percent)

        super().__init__(model, progress=base_progress, **kwargs)  # its warm-up request already runs the fast path
        self.info = msgspec.structs.replace(self.info, backend="transformers-fast")
        static = self._static_decoder()
        if static.graphs_enabled and not static.compiled:  # compiled passes are captured on first use
            static.capture(self.capture_shapes(), report)
            self.infill(InfillRequest(prefix="def f(x):\n    return", suffix="\n"), NEVER)  # replay once
        report("ready", 100)

    def _static_decoder(self) -> StaticDecoder:
        if self._static is None:
            if self._graphs_mode not in ("auto", "cuda", "compile", "none", "emulate"):
                raise ValueError(f"graphs={self._graphs_mode!r}: use auto, cuda, compile or none")
            if self._graphs_mode == "auto":
                graphs = self.device.startswith("cuda")
            else:
                graphs = self._graphs_mode in ("cuda", "compile")
            if graphs and self.dtype != torch.bfloat16:
                # torch's grouped_mm has a synchronisation-free kernel for bf16 only (other dtypes take a
                # fallback that reads the group sizes on the host), so no graph can hold the experts.
                log.warning("fast engine: CUDA graphs need bfloat16 weights (got %s); running the static "
                            "passes without graphs", self.dtype)
                graphs = False
            if graphs:
                # The experts must run without host synchronisation to be captured: grouped_mm does.
                text_config = self.model.config.text_config
                if getattr(text_config, "_experts_implementation", None) not in ("grouped_mm", "batched_mm"):
                    text_config._experts_implementation = "grouped_mm"
            # BOS, the window, [SEP] + suffix window, and repository context where a request may bring it
            # (the layout's own cap): a prompt never outgrows the buffers, so no capture waits on a request.
            prompt = self.prefix_tokens + 1 + (self.suffix_window + 1 if self.suffix_window else 0)
            prompt += self.context_limit if self.repo_context_layout else 0
            self._static = StaticDecoder(self.model, device=self.device, prefix_capacity=prompt,
                                         row_buckets=self._row_buckets, graphs=graphs,
                                         compile=graphs and self._graphs_mode == "compile",
                                         emulate_graphs=self._graphs_mode == "emulate", exact=self._exact_shapes,
                                         drop_finished=self._drop_finished)
            self._banned_bias = None  # (V,) additive: BLOCKED on control tokens, as the reference's bias
            if bool(self.banned.any()):
                self._banned_bias = torch.where(self.banned, BLOCKED, 0.0).to(self.device)
        return self._static

    def capture_shapes(self) -> list[tuple[int, int, int]]:
        """The buckets captured at start: row buckets x the widths of the configured middles x prefixes."""
        static = self._static_decoder()
        widths = sorted({_round_up(m + max(1, self.suffix_head_tokens), WIDTH_STEP) for m in self._capture_middles})
        return [(r, w, p) for p in static.prefix_buckets() for w in widths for r in static.row_buckets]

    @property
    def static(self) -> StaticDecoder:
        return self._static_decoder()

    def _sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)

    def _infill(self, request: InfillRequest, cancel: CancelToken) -> InfillResult:
        static = self._static_decoder()
        timings = EngineTimings()
        t0 = time.perf_counter()
        prompt_ids, healed, lengths, batch, allowed, settings = self._prepare(request)
        timings.prompt_tokens = len(prompt_ids)
        t1 = time.perf_counter()
        timings.tokenize_ms = (t1 - t0) * 1e3

        cancel.raise_if_cancelled()
        cache = self._encode(prompt_ids)
        static.load_prefix(cache)
        self._sync()
        t2 = time.perf_counter()
        timings.encode_ms = (t2 - t1) * 1e3

        seed = request.seed if request.seed is not None else random.randrange(2**63)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        out = static.denoise(batch, settings, first_token_allowed=allowed, banned_bias=self._banned_bias,
                             blank_tokens=self.blank, stop_ids=self.stop_ids, cancel=cancel, generator=generator)
        self._sync()
        timings.denoise_ms = (time.perf_counter() - t2) * 1e3
        timings.steps = out.steps
        return InfillResult(candidates=self._decode_rows(out.tokens, out.token_logprobs, lengths, healed),
                            timings=timings)

    def reference_infill(self, request: InfillRequest, cancel: CancelToken = NEVER) -> InfillResult:
        """The same request through transformers' loop (the reference), on the same weights."""
        with self._lock:
            return TransformersEngine._infill(self, request, cancel)

    @torch.inference_mode()
    def compare(self, request: InfillRequest) -> tuple[DenoiseOutput, DenoiseOutput, CanvasBatch]:
        """(reference, fast) denoising outputs of one seeded request on the same encoded prefix."""
        from .denoise import denoise

        with self._lock:
            static = self._static_decoder()
            prompt_ids, _, lengths, batch, allowed, settings = self._prepare(request)
            seed = request.seed if request.seed is not None else 0
            cache = self._encode(prompt_ids)
            static.load_prefix(cache)
            fast = static.denoise(batch, settings, first_token_allowed=allowed, banned_bias=self._banned_bias,
                                  blank_tokens=self.blank, stop_ids=self.stop_ids,
                                  generator=torch.Generator(device=self.device).manual_seed(seed))
            cache.batch_repeat_interleave(len(lengths))
            reference = denoise(self.model, cache, batch, settings, first_token_allowed=allowed,
                                banned_tokens=self.banned, blank_tokens=self.blank, stop_ids=self.stop_ids,
                                generator=torch.Generator(device=self.device).manual_seed(seed))
        return reference, fast, batch

    @torch.inference_mode()
    def step_agreement(self, request: InfillRequest) -> dict:
        """Teacher-forced comparison: every pass of both paths on the reference trajectory's inputs.

        Returns argmax agreement over the free positions of each step, the largest logit difference,
        and a floor: the reference against itself when only its batch size changes (the first half
        of the rows alone), which is what bf16 arithmetic allows any reordering of the work.
        """
        with self._lock:
            static = self._static_decoder()
            prompt_ids, _, lengths, batch, _, settings = self._prepare(request)
            rows = len(lengths)
            half = max(1, rows // 2)
            cache = self._encode(prompt_ids)
            static.load_prefix(cache)
            cache.batch_repeat_interleave(rows)
            half_cache = self._encode(prompt_ids)
            half_cache.batch_repeat_interleave(half)
            device, model = self.device, self.model
            decoder = model.model.decoder
            vocab = model.config.text_config.vocab_size
            known, clamped, free = batch.known.to(device), batch.clamped.to(device), batch.free.to(device)
            width = known.shape[1]
            generator = torch.Generator(device=device).manual_seed(request.seed or 0)
            canvas = torch.where(clamped, known, torch.randint(0, vocab, known.shape, device=device,
                                                                generator=generator))
            conditioning = None
            embed, scale = decoder.embed_tokens.weight, decoder.embed_tokens.embed_scale.to(model.dtype)
            out = {"agree": 0, "total": 0, "floor_agree": 0, "floor_total": 0, "max_logit_diff": 0.0}
            for remaining in range(settings.steps, 0, -1):
                reference = model.model(decoder_input_ids=canvas, past_key_values=cache,
                                        self_conditioning_logits=conditioning).last_hidden_state
                if conditioning is None:
                    soft = torch.zeros_like(reference)
                else:
                    soft = (torch.softmax(conditioning, -1, dtype=torch.float32).to(embed.dtype) @ embed) * scale
                fast = static.step(canvas, soft, width)
                ref_logits = vocabulary_head(model, reference[free])
                fast_logits = vocabulary_head(model, fast[free])
                out["agree"] += int((ref_logits.argmax(-1) == fast_logits.argmax(-1)).sum())
                out["total"] += ref_logits.shape[0]
                out["max_logit_diff"] = max(out["max_logit_diff"], float((ref_logits - fast_logits).abs().max()))
                alone = model.model(decoder_input_ids=canvas[:half], past_key_values=half_cache,
                                    self_conditioning_logits=None if conditioning is None else conditioning[:half]
                                    ).last_hidden_state
                alone_logits = vocabulary_head(model, alone[free[:half]])
                in_batch = vocabulary_head(model, reference[:half][free[:half]])
                out["floor_agree"] += int((alone_logits.argmax(-1) == in_batch.argmax(-1)).sum())
                out["floor_total"] += alone_logits.shape[0]
                # Move along the reference: sample every free position at this step's temperature.
                temperature = settings.t_min + (settings.t_max - settings.t_min) * remaining / settings.steps
                processed = ref_logits / temperature
                uniform = torch.rand((processed.shape[0], 1), device=device, generator=generator)
                sampled = sample_inverse_cdf(torch.softmax(processed, -1), uniform)
                canvas = known.clone()
                canvas[free] = sampled
                conditioning = torch.full((*known.shape, vocab), -math.inf, device=device, dtype=model.dtype)
                conditioning.scatter_(-1, known[..., None], 0.0)
                conditioning[free] = processed.to(model.dtype)
            return out
