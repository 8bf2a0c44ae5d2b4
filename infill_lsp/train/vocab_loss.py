"""The vocabulary head's cross-entropy, computed chunk by chunk with its gradient in one pass.

The loss is mean CE(cap * tanh(hidden @ W^T / cap), target): DiffusionGemma's head with logit
soft-capping (engine/denoise.vocabulary_head). Done as separate autograd ops it allocates and
walks (F, V) float tensors a dozen times (divide, tanh, multiply, log-softmax, their backwards, the
one-hot fill): with 8,192 tokens and ~5k supervised positions that was ~30% of a CPU training step,
all of it memory traffic. Here each chunk of rows is projected, soft-capped, normalised and turned
into its gradient while it is still in cache, and the (F, V) logits never exist at once.
The forward returns the loss and keeps d loss / d hidden and d loss / d W for the backward, which
only scales them (the loss is a leaf of the graph: nothing else uses these logits).
"""

from __future__ import annotations

import torch


class _SoftcappedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, cap: float | None,
                chunk: int) -> torch.Tensor:
        rows, device = hidden.shape[0], hidden.device
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=device)
        total = torch.zeros((), dtype=torch.float32, device=device)
        # Two (chunk, V) buffers for the whole call, every step in place: no allocation per chunk.
        buffer = torch.empty((min(chunk, rows), weight.shape[0]), dtype=torch.float32, device=device)
        slope = torch.empty_like(buffer) if cap else None
        one = torch.ones((), device=device)
        for start in range(0, rows, chunk):
            h = hidden[start:start + chunk]
            target = targets[start:start + chunk, None]
            logits = buffer[:h.shape[0]]
            if h.dtype == weight.dtype == torch.float32:
                torch.mm(h, weight.T, out=logits)
            else:
                logits.copy_(h @ weight.T)
            if cap:  # z = cap * tanh(x / cap); dz/dx = 1 - tanh^2
                logits.mul_(1.0 / cap).tanh_()
                torch.addcmul(one, logits, logits, value=-1.0, out=slope[:h.shape[0]])
                logits.mul_(cap)
            target_logit = logits.gather(1, target)
            peak = logits.amax(-1, keepdim=True)
            exp_sum = logits.sub_(peak).exp_().sum(-1, keepdim=True)
            total += (peak + exp_sum.log() - target_logit).sum()
            grad = logits.div_(exp_sum)  # softmax, minus one at the target: d CE / d z
            grad.scatter_add_(1, target, torch.full(target.shape, -1.0, device=device))
            if cap:
                grad.mul_(slope[:h.shape[0]])
            grad = grad.to(h.dtype)
            grad_hidden[start:start + chunk] = grad @ weight
            grad_weight.addmm_(grad.T.float(), h.float())
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.rows, ctx.weight_dtype = rows, weight.dtype
        return total / max(rows, 1)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_output / max(ctx.rows, 1)
        return (grad_hidden * scale.to(grad_hidden.dtype), (grad_weight * scale).to(ctx.weight_dtype),
                None, None, None)


def softcapped_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                             cap: float | None, chunk: int = 256) -> torch.Tensor:
    """mean CE(cap * tanh(hidden @ weight^T / cap), targets) over the rows of `hidden` (F, H);
    the same value and gradients as vocabulary_head + F.cross_entropy."""
    return _SoftcappedCrossEntropy.apply(hidden, weight, targets, cap, chunk)
