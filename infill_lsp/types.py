"""Plain data flowing between the pipeline stages: lsp -> context -> engine -> syntax -> rank.

Every stage takes and returns these msgspec Structs, so the same values cross the engine
socket (msgpack) unchanged and tests can build them by hand.
"""

from __future__ import annotations

import msgspec


class Budget(msgspec.Struct, frozen=True):
    """How much model work one request may spend."""

    candidates: int = 4
    max_middle_tokens: int = 32
    steps: int = 16


class ContextChunk(msgspec.Struct, frozen=True):
    """A piece of another file (or a far part of this one) put before the prefix (repo_context.py)."""

    path: str  # workspace-relative, "/"-separated: the chunk's header in the prompt
    text: str
    start_line: int = 0  # 0-based, the chunk's first line in its document
    end_line: int = 0  # the line after its last


class InfillRequest(msgspec.Struct, frozen=True):
    """What the engine is asked: fill the gap between `prefix` and `suffix`.

    Both are already windowed by `context`; the engine never sees the whole file. `context`:
    repository context, least relevant first, laid out before the prefix in the engine's layout
    (repo_context.py), with `path` (the document's own) as the last header; empty = none.
    """

    prefix: str
    suffix: str
    language: str = ""
    budget: Budget = Budget()
    seed: int | None = None
    context: tuple[ContextChunk, ...] = ()
    path: str = ""


class Candidate(msgspec.Struct, frozen=True):
    """One filled middle with the model's own confidence in it."""

    text: str
    score: float  # mean log-probability of the middle tokens (and end marker); higher is better
    tokens: int = 0


class EngineTimings(msgspec.Struct):
    tokenize_ms: float = 0.0
    encode_ms: float = 0.0
    denoise_ms: float = 0.0
    steps: int = 0
    prompt_tokens: int = 0
    context_tokens: int = 0  # of prompt_tokens, how many are repository context
    context_chunks: int = 0  # how many of the request's context chunks (the last ones) fitted


class InfillResult(msgspec.Struct):
    candidates: list[Candidate]
    timings: EngineTimings = msgspec.field(default_factory=EngineTimings)


class EngineInfo(msgspec.Struct, frozen=True):
    model: str
    backend: str
    device: str = "cpu"
    dtype: str = "float32"
    # the repository-context layout the checkpoint declares ("" = none: under "auto" only names.py reads it)
    repo_context: str = ""
    repo_context_tokens: int = 0  # the most context tokens it was trained with (0: no cap of its own)
    suffix_window: int = 0  # tokens after the cursor the prompt holds (the checkpoint's layout; 0 = none)
    threads: int = 0  # torch's CPU threads the engine chose (engine/transformers_backend.py); 0: not on a CPU
