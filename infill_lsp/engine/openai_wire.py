"""The HTTP wire format shared by the vLLM backend and the resident engine: vLLM 0.33's shapes.

Only the subset infill-lsp sends and reads. Every field name and meaning below is vLLM's
(checked against the vllm==0.33.0 wheel):

- request body: `vllm/entrypoints/openai/completion/protocol.py`, `CompletionRequest`
  (`vllm_xargs` becomes `SamplingParams.extra_args` in `CompletionRequest.to_sampling_params`);
- DiffusionGemma's per-request arguments: checked by `validate_diffusion_sampling_params` in
  `vllm/utils/diffusion.py` (called from `InputProcessor._validate_params`,
  `vllm/v1/engine/input_processor.py`) and applied by `DiffusionSampler.add_request` in
  `vllm/model_executor/models/diffusion_gemma.py`; `validate_diffusion_xargs` below is a port
  of the former, with the same messages, so the resident engine rejects what vLLM rejects;
- responses: `CompletionResponse`, `CompletionResponseChoice`, `CompletionLogProbs` (same
  file), `ModelList`/`ModelCard`/`ErrorResponse` (`vllm/entrypoints/serve/engine/protocol.py`),
  `TokenizeResponse` (`vllm/entrypoints/serve/tokenize/protocol.py`).
"""

from __future__ import annotations

import time
import uuid

import msgspec

from ..types import ContextChunk

CANVAS_LENGTH = "diffusion_canvas_length"  # canvas width for this request (<= the served canvas)
MAX_STEPS = "diffusion_max_steps"  # denoising step cap (clamped to the served max_denoising_steps)
SEED_CANVAS = "diffusion_seed_canvas"  # token ids the canvas starts from (exactly the width)
PINNED = "diffusion_pinned"  # canvas positions held at the seed on every step
READ_ONLY = "diffusion_read_only"  # one canvas is the whole output: emit on convergence, no commit
DIFFUSION_XARGS = (CANVAS_LENGTH, MAX_STEPS, SEED_CANVAS, PINNED, READ_ONLY)
# infill-lsp's own engine only (never sent to vLLM): the parts of the InfillRequest a canvas read
# cannot carry, so the engine builds its checkpoint's own prompt (`OwnRequest`).
OWN_REQUEST = "infill_lsp_request"


class ErrorInfo(msgspec.Struct):
    message: str
    type: str
    code: int
    param: str | None = None


class ErrorResponse(msgspec.Struct):
    error: ErrorInfo


class ModelCard(msgspec.Struct):
    id: str
    object: str = "model"
    created: int = msgspec.field(default_factory=lambda: int(time.time()))
    owned_by: str = "vllm"
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None
    permission: list[dict] = msgspec.field(default_factory=list)


class OwnModelCard(ModelCard):
    """`infill-lsp engine`'s card: vLLM's, plus the prompt layout of the checkpoint it serves
    (`EngineInfo`'s repo_context, repo_context_tokens, suffix_window), so a client turns repository
    context on and sizes it for that checkpoint as the in-process engine would."""

    infill_layout: dict | None = None


class OwnRequest(msgspec.Struct, frozen=True):
    """`vllm_xargs[OWN_REQUEST]`: the document's whole suffix window (the canvas pins only its
    head), its path and language, and the repository context, chunk by chunk; the prompt ids then
    hold BOS and the prefix window only."""

    suffix: str = ""
    path: str = ""
    language: str = ""
    context: tuple[ContextChunk, ...] = ()


class OwnTimings(msgspec.Struct):
    """An own-engine answer's extension (`infill_lsp_timings`): what the engine's prompt held."""

    prompt_tokens: int = 0
    context_tokens: int = 0
    context_chunks: int = 0


class ModelList(msgspec.Struct):
    data: list[ModelCard]
    object: str = "list"


class TokenizeResponse(msgspec.Struct):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class CompletionLogProbs(msgspec.Struct):
    text_offset: list[int] = msgspec.field(default_factory=list)
    token_logprobs: list[float | None] = msgspec.field(default_factory=list)
    tokens: list[str] = msgspec.field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = msgspec.field(default_factory=list)


class CompletionChoice(msgspec.Struct):
    index: int
    text: str
    logprobs: CompletionLogProbs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    token_ids: list[int] | None = None
    prompt_token_ids: list[int] | None = None


class Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class CompletionResponse(msgspec.Struct):
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    id: str = msgspec.field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex}")
    object: str = "text_completion"
    created: int = msgspec.field(default_factory=lambda: int(time.time()))
    infill_lsp_timings: OwnTimings | None = None  # infill-lsp's engine only; vLLM's answers lack it


def error_body(message: str, code: int, err_type: str = "BadRequestError", param: str | None = None) -> bytes:
    return msgspec.json.encode(ErrorResponse(ErrorInfo(message=message, type=err_type, code=code, param=param)))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_diffusion_xargs(extra: dict, canvas_length: int | None, vocab_size: int) -> str | None:
    """vLLM's `validate_diffusion_sampling_params` (vllm/utils/diffusion.py): the first failed
    check's message, or None. Same checks, same order, same messages."""
    width = extra.get(CANVAS_LENGTH)
    if width is not None and not (_is_int(width) and width > 0 and (canvas_length is None or width <= canvas_length)):
        return "diffusion_canvas_length must be a positive integer no larger than the served canvas."
    expected_len = width or canvas_length
    seed = extra.get(SEED_CANVAS)
    if seed is not None:
        if not (isinstance(seed, list) and all(_is_int(t) for t in seed)):
            return "diffusion_seed_canvas must be a list of token ids."
        if not all(0 <= t < vocab_size for t in seed):
            return f"diffusion_seed_canvas ids must be in [0, {vocab_size})."
        if expected_len is not None and len(seed) != expected_len:
            return f"diffusion_seed_canvas must hold exactly {expected_len} ids, got {len(seed)}."
    pins = extra.get(PINNED)
    if pins is not None:
        if not (isinstance(pins, list) and all(_is_int(p) for p in pins)):
            return "diffusion_pinned must be a list of canvas positions."
        if seed is None:
            return "diffusion_pinned needs a diffusion_seed_canvas to hold."
        if not all(p >= 0 and (expected_len is None or p < expected_len) for p in pins):
            return "diffusion_pinned positions must lie inside the canvas."
    cap = extra.get(MAX_STEPS)
    if cap is not None and not (_is_int(cap) and cap > 0):
        return "diffusion_max_steps must be a positive integer."
    read_only = extra.get(READ_ONLY)
    if read_only is not None and not (isinstance(read_only, (bool, int)) and read_only in (0, 1)):
        return "diffusion_read_only must be a boolean (or 0/1)."
    return None
