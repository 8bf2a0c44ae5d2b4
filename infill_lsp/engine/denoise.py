"""The denoising loop: a batch of canvas rows refined in parallel against one encoded prefix.

This mirrors `DiffusionGemmaGenerationMixin.generate()` in transformers (uniform-noise
canvas, linear temperature schedule, entropy-bound acceptance, self-conditioning on the
previous step's logits, stop when stable and confident) for a single block, with what
infilling needs and `generate()` lacks:

- clamped positions (the suffix head) are forced on every step, so they survive unchanged;
- the first middle position can be restricted (token healing);
- acceptance, the stopping rule and the score look only at the free (middle) positions;
- each row stops on its own, and cancellation is checked between steps;
- a per-request `torch.Generator`, so a seeded request is reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .canvas import CanvasBatch
from .cancel import NEVER, CancelToken


BLOCKED = -1e4  # additive bias where a token may not go (finite, so 0 * bias stays 0 in the entropy)
EXP_FLOOR = -87.0  # e**-87 = 1.6e-38, still a normal float32 (see `distribution`)


@dataclass
class DenoiseSettings:
    steps: int = 16
    t_max: float = 0.8  # temperature at the first step (transformers' default schedule)
    t_min: float = 0.4  # temperature at the last step
    entropy_bound: float = 0.1  # entropy-bound sampler (arXiv:2505.24857), as in transformers
    stability: int = 1  # argmax unchanged for this many steps ...
    confidence: float = 0.005  # ... and mean free-position entropy below this: the row is done
    # Also accept, at step i of n, at least the i/n share of each row's free positions (lowest entropy
    # first), so the whole slot is committed by the last step. A small model's entropies rarely pass
    # the bound: without this a long slot ends as the argmax of a still-noisy canvas (the same junk
    # for every request with one seed). Off for the real model, whose confident rows stop early.
    linear_commit: bool = False
    # A renoised position's token is a uniform draw that says nothing about the answer, yet a model
    # that learned to copy clean tokens (its training canvases keep part of the middle) may copy it:
    # a small model then shows the same junk for every prompt with one seed. The loop knows which
    # positions it renoised, so their current token is ruled out there (the answer is that token
    # with probability 1/vocabulary).
    ignore_noise: bool = True
    # Once every row but one has finished, the last gets at most this many more steps (0: no limit).
    # A request waits for its slowest row, which on the small model runs a median 3 steps past the
    # third (a third of the held-out holes); cut off, it keeps its current argmax, scored as at the step limit.
    straggler_steps: int = 0


@dataclass
class DenoiseOutput:
    tokens: torch.Tensor  # (B, L) final argmax canvas (clamped positions hold their known tokens)
    token_logprobs: torch.Tensor  # (B, L) log-probability of each final token (temperature 1)
    steps: int  # decoder passes run


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1).nan_to_num(0.0)


def distribution(processed: torch.Tensor):
    """One softmax over (F, V) that serves the argmax, the sample, the entropy and the soft embeddings.

    Returns (argmax, logits minus their max, partition function, probabilities); the entropy is
    log(partition) - sum(probs * shifted).
    Works in place: `processed` becomes `shifted` (two fewer (F, V) tensors per step on a CPU).
    The exponent is floored at EXP_FLOOR: e**x for x below about -88 underflows float32, and a CPU's
    vectorised exp takes a slow path there (12x on 2-core AVX2, 5 ms a step at low temperatures,
    where most of the vocabulary sits hundreds below the top). Floored, such a token weighs
    1.6e-38 instead of 0: eight thousand of them add 1e-34 to a partition function >= 1.
    """
    best, top = first_argmax(processed, with_max=True)
    shifted = processed.sub_(top)
    weights = shifted.clamp(min=EXP_FLOOR).exp_()
    total = weights.sum(-1, keepdim=True)
    return best, shifted, total, weights.div_(total)


ARGMAX_GROUP = 128


def first_argmax(values: torch.Tensor, with_max: bool = False):
    """(F,) index of each row's first maximum of (F, V): what `values.max(-1)` returns, in two levels
    (with `with_max`, also the (F, 1) maxima, read off the group maxima: no second pass over V).

    A CPU's max-with-index over a row is a scalar loop (1.3 ms for 128 x 8,192 on 2-core AVX2);
    the maximum of each group of 128 is vectorised, so finding the first group holding the row's
    maximum, then the first maximum inside it, costs a quarter of that and picks the same index.
    """
    rows, vocab = values.shape
    if vocab % ARGMAX_GROUP or vocab <= ARGMAX_GROUP:
        top, index = values.max(-1, keepdim=True)
        return (index.squeeze(-1), top) if with_max else index.squeeze(-1)
    groups = values.view(rows, vocab // ARGMAX_GROUP, ARGMAX_GROUP)
    group_max = groups.amax(-1)
    group = group_max.argmax(-1)
    inside = groups[torch.arange(rows, device=values.device), group].argmax(-1)
    index = group * ARGMAX_GROUP + inside
    return (index, group_max.amax(-1, keepdim=True)) if with_max else index


def sample_inverse_cdf(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """(F,) one token per row of `probs` (F, V), one uniform (F, 1) each: the first token whose
    cumulative probability reaches it. Exact, and an order of magnitude cheaper on a CPU than
    torch.multinomial or an exponential race; a binary search instead of a (F, V) comparison."""
    return torch.searchsorted(probs.cumsum(-1), uniform).squeeze(-1).clamp(max=probs.shape[-1] - 1)


def vocabulary_head(model, hidden: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """DiffusionGemmaForBlockDiffusion's head (projection + logit soft-capping) on chosen positions
    only, divided by the sampling `temperature` (at inference, in the soft-capping's last pass)."""
    logits = model.lm_head(hidden).float()
    cap = model.final_logit_softcapping
    if torch.is_grad_enabled():  # training: out of place, autograd keeps tanh's output
        logits = torch.tanh(logits / cap) * cap if cap else logits
        return logits / temperature if temperature != 1.0 else logits
    if not cap:
        return logits.div_(temperature) if temperature != 1.0 else logits
    return logits.div_(cap).tanh_().mul_(cap / temperature)  # no new (F, V) tensors


def rule_out_noise(raw: torch.Tensor, noise_tokens: torch.Tensor, renoised: torch.Tensor) -> None:
    """In place: the free positions' logits `raw` (F, V) lose their current noise token (F,) where
    `renoised` (F,) bool; every free position is noise before the first step."""
    index = renoised.nonzero().squeeze(-1)
    raw[index, noise_tokens[index]] = BLOCKED


def accepted_positions(entropy: torch.Tensor, free: torch.Tensor, settings: DenoiseSettings,
                       step: int) -> torch.Tensor:
    """(R, W) bool: the free positions whose sample is kept at `step` (1-based); the rest are renoised.

    Entropy-bound acceptance: the lowest-entropy tokens whose summed entropy (minus the largest)
    stays under the bound; with `linear_commit`, at least ceil(free * step / steps) of them.
    """
    sorted_entropy, order = torch.sort(entropy.masked_fill(~free, math.inf), dim=-1)
    sorted_entropy = sorted_entropy.masked_fill(torch.isinf(sorted_entropy), 0.0)
    take = (torch.cumsum(sorted_entropy, -1) - sorted_entropy) <= settings.entropy_bound
    if settings.linear_commit:
        quota = torch.ceil(free.sum(-1, keepdim=True) * (step / settings.steps))
        take |= torch.arange(take.shape[-1], device=take.device)[None] < quota
    return torch.zeros_like(take).scatter(-1, order, take) & free


def blank_so_far(previous: torch.Tensor, free: torch.Tensor, blank: torch.Tensor) -> torch.Tensor:
    """(F,) bool, one per free position in `tensor[free]` order: is every free position before it in
    its row blank (a whitespace-only token, `blank` (V,)) in `previous` (B, L), the last step's argmax?
    True at a row's first free position (nothing before it). A free slot is a prefix of its row."""
    run = torch.cumprod((blank[previous] & free).to(torch.int32), dim=1)
    before = torch.ones_like(run)
    before[:, 1:] = run[:, :-1]
    return before.bool()[free]


def forbid_blank_end(raw: torch.Tensor, stops_here: torch.Tensor, stop_ids: tuple[int, ...]) -> None:
    """In place: the free positions' logits `raw` (F, V) lose the end marker and padding where
    `stops_here` (F,): a row may not end a middle that is nothing but whitespace.

    Such a row shows nothing (the ranking drops whitespace), yet it was a small model's favourite
    answer at the start of a line: the token of a line break and indentation, then the end marker
    (606 of 828 rows on a sample of HumanEval single-line). Made to go on, the row writes the line."""
    index = stops_here.nonzero().squeeze(-1)
    for stop in stop_ids:
        raw[index, stop] = BLOCKED


@torch.inference_mode()
def denoise(
    model,
    cache,
    batch: CanvasBatch,
    settings: DenoiseSettings,
    *,
    first_token_allowed: torch.Tensor | None = None,
    banned_tokens: torch.Tensor | None = None,
    blank_tokens: torch.Tensor | None = None,
    stop_ids: tuple[int, ...] = (),
    cancel: CancelToken = NEVER,
    generator: torch.Generator | None = None,
) -> DenoiseOutput:
    """Run up to `settings.steps` decoder passes over the rows of `batch`.

    `model` is a DiffusionGemmaForBlockDiffusion; `cache` holds the prefix, already repeated to
    the batch size. `first_token_allowed` (V,) bool restricts free position 0 (token healing);
    `banned_tokens` (V,) bool are never produced in the middle (control tokens). With `blank_tokens`
    (V,) bool (whitespace-only tokens), a row's `stop_ids` (end marker, padding) may not follow a
    middle that is only whitespace so far, by the last step's argmax (`forbid_blank_end`).

    The vocabulary head, sampling and entropies run on the free positions only (flattened to
    (F, V)): a clamped position's distribution is one-hot on its known token by construction, so
    computing it would be wasted work on a large vocabulary.
    """
    device = cache.layers[0].keys.device
    vocab = model.config.text_config.vocab_size
    known = batch.known.to(device)
    clamped = batch.clamped.to(device)
    free = batch.free.to(device)
    rows, width = known.shape
    free_rows = free.nonzero()[:, 0]  # (F,) the row of each free position
    blank = blank_tokens.to(device) if blank_tokens is not None and stop_ids else None

    # Additive bias on the free positions where a token may not go (control tokens; token healing). A large
    # finite negative rather than -inf: exp() still gives exactly 0, and 0 * bias stays 0 in the entropy.
    bias = torch.zeros((int(free.sum()), vocab), device=device)
    if banned_tokens is not None:
        bias[:, banned_tokens.to(device)] = BLOCKED
    if first_token_allowed is not None:
        first = free.clone()
        first[:, 1:] = False
        bias[first[free], :] += torch.where(first_token_allowed.to(device), 0.0, BLOCKED)

    def noise() -> torch.Tensor:
        return torch.randint(0, vocab, (rows, width), device=device, generator=generator)

    # Self-conditioning: the decoder turns the previous step's distribution into soft embeddings,
    # softmax(logits) @ E. A clamped position's distribution is one-hot, i.e. its own embedding, and a
    # free position's is the `probs` the sampler computes anyway, so the soft embeddings are built
    # here (one (F, V) @ (V, H) product, no (B, L, V) tensor) and handed to the decoder's
    # self-conditioning block by a forward pre-hook.
    embed = model.model.decoder.embed_tokens
    soft = embed(known).float()  # (B, L, H): clamped positions stay as they are
    soft_ready = False

    def inject(module, args):
        return (args[0], soft.to(args[0].dtype)) if soft_ready else None

    canvas = torch.where(clamped, known, noise())
    renoised = free.clone()  # (B, L) positions whose token is noise: all free ones before the first step
    argmax = canvas
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    history = torch.full((max(settings.stability, 1), rows, width), -1, dtype=torch.long, device=device)
    free_count = free.sum(-1).clamp(min=1)
    logits = None  # (F, V) logits (temperature 1, shifted) of the free positions at each row's last step
    steps_run = 0
    straggler_left = None  # steps the last unfinished row has left (settings.straggler_steps)

    hook = model.model.decoder.self_conditioning.register_forward_pre_hook(inject)
    try:
        for remaining in range(settings.steps, 0, -1):
            cancel.raise_if_cancelled(steps_run=steps_run, steps_left=remaining)
            hidden = model.model(decoder_input_ids=canvas, past_key_values=cache).last_hidden_state
            steps_run += 1
            temperature = settings.t_min + (settings.t_max - settings.t_min) * remaining / settings.steps
            processed = vocabulary_head(model, hidden[free], temperature) + bias
            if settings.ignore_noise:
                rule_out_noise(processed, canvas[free], renoised[free])
            if blank is not None:
                forbid_blank_end(processed, blank_so_far(argmax, free, blank), stop_ids)

            best, shifted, total, probs = distribution(processed)
            uniform = torch.rand((rows, width, 1), device=device, generator=generator)[free]
            new_argmax = known.clone()
            new_argmax[free] = best

            # Entropy-bound acceptance over the free positions: accept the lowest-entropy tokens whose
            # summed entropy (minus the largest) stays under the bound; renoise the rest.
            entropy = torch.zeros((rows, width), device=device)
            entropy[free] = (total.squeeze(-1).log() - (probs * shifted).sum(-1)).clamp(min=0.0)
            accepted = accepted_positions(entropy, free, settings, steps_run)
            # Only accepted positions keep their sample: draw those (same uniforms, same tokens).
            sampled = known.clone()
            kept = accepted[free]
            sampled[accepted] = sample_inverse_cdf(probs[kept], uniform[kept])
            new_canvas = torch.where(accepted, sampled, noise())
            new_canvas = torch.where(clamped, known, new_canvas)

            # Finished rows keep what they had; the rest move on.
            keep = finished[:, None]
            canvas = torch.where(keep, canvas, new_canvas)
            renoised = torch.where(keep, renoised, free & ~accepted)
            argmax = torch.where(keep, argmax, new_argmax)
            keep_free = finished[free_rows][:, None]
            raw = shifted * temperature  # the logits at temperature 1, up to a shift (the score's softmax ignores it)
            logits = raw if logits is None else torch.where(keep_free, logits, raw)
            moving = ~keep_free.squeeze(-1)
            weight = embed.weight  # in its own dtype: a float32 copy of a 262k-row table each step would dominate
            soft[free & ~keep] = (probs[moving].to(weight.dtype) @ weight).float() * embed.scalar_embed_scale
            soft_ready = True

            stable = (history == argmax[None]).all(-1).all(0)
            history = torch.roll(history, -1, 0)
            history[-1] = argmax
            confident = entropy.sum(-1) / free_count < settings.confidence
            finished |= stable & confident
            if bool(finished.all()):
                break
            if straggler_left is not None:
                straggler_left -= 1
                if straggler_left == 0:
                    break
            elif settings.straggler_steps > 0 and rows > 1 and int((~finished).sum()) == 1:
                straggler_left = settings.straggler_steps
    finally:
        hook.remove()

    token_logprobs = torch.zeros((rows, width), device=device)
    token_logprobs[free] = torch.log_softmax(logits, -1).gather(-1, argmax[free][:, None]).squeeze(-1)
    return DenoiseOutput(tokens=argmax.cpu(), token_logprobs=token_logprobs.cpu(), steps=steps_run)
