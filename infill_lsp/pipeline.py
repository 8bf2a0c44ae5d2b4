"""One completion, top to bottom: context window -> engine -> clean -> validate -> rank.

Shared by the LSP handlers, `infill-lsp complete` and `infill-lsp bench`, so what the
benchmark times is what the editor gets. Runs in a worker thread (it blocks on the model).
"""

from __future__ import annotations

import time

import msgspec

from . import context, names, rank, repeats, syntax
from .config import Settings
from .engine import NEVER, CancelToken, Engine
from .rank import Ranked
from .types import Budget, Candidate, ContextChunk, InfillRequest


class StageTimings(msgspec.Struct):
    context_ms: float = 0.0
    tokenize_ms: float = 0.0
    encode_ms: float = 0.0
    denoise_ms: float = 0.0
    validate_ms: float = 0.0
    rank_ms: float = 0.0
    total_ms: float = 0.0
    steps: int = 0
    prompt_tokens: int = 0
    context_tokens: int = 0  # of prompt_tokens, repository context (repo_context.py)
    context_chunks: int = 0  # context chunks that fitted in the prompt

    @property
    def overhead_ms(self) -> float:
        """Everything but the model's forward passes (tokenize and encode count as model work)."""
        return self.context_ms + self.validate_ms + self.rank_ms


class Completions(msgspec.Struct):
    items: list[Ranked]
    raw: list[Candidate]  # the engine's rows as the document takes them, before cleaning/validation (`complete -v`)
    timings: StageTimings


def complete(
    engine: Engine,
    text: str,
    offset: int,
    *,
    language_id: str = "",
    path: str | None = None,
    settings: Settings = Settings(),
    budget: Budget | None = None,
    cancel: CancelToken = NEVER,
    seed: int | None = None,
    repo: tuple[ContextChunk, ...] = (),
    repo_path: str = "",
    hints: tuple[ContextChunk, ...] = (),
    workspace_names: tuple[str, ...] = (),
) -> Completions:
    """`repo`: repository context chunks, least relevant first (repo_context.py), laid out before the
    prefix with `repo_path` (the document's workspace-relative path) as the last header. `hints`:
    chunks read only to finish the name being typed (names.py), not sent to the model (the context
    gathered for a checkpoint that was not trained with it). `workspace_names`: names the workspace
    defines that start with the word being typed (names.complete)."""
    cancel.raise_if_cancelled()  # superseded while it waited for the worker: no windowing, no model
    timings = StageTimings()
    t0 = time.perf_counter()
    language = syntax.language_for(language_id, path)
    win = context.window(text, offset, settings.prefix_chars, settings.suffix_chars)
    request = InfillRequest(
        prefix=win.prefix,
        suffix=win.line_break + win.suffix,
        language=language or language_id,
        budget=budget or settings.budget(invoked=False),
        seed=seed,
        context=repo,
        path=repo_path,
    )
    t1 = time.perf_counter()
    result = engine.infill(request, cancel)
    t2 = time.perf_counter()
    cancel.raise_if_cancelled()

    doc_prefix, doc_suffix = text[:offset], text[offset:]
    rows = list(result.candidates)
    if win.line_break:  # whole lines above the cursor's line (context.Window)
        rows = [msgspec.structs.replace(c, text=c.text + win.line_break) if c.text.strip() else c for c in rows]
    candidates = list(rows)
    name = (names.complete(win.prefix, win.suffix, repo + hints, [c.text for c in candidates], workspace_names)
            if settings.complete_names else None)
    if name is not None:  # the name being typed, finished with one the prompt holds (names.py)
        candidates.append(rank.extra_candidate(name.text, candidates))
    repeat = repeats.find(text, offset) if settings.complete_repeats else None
    if repeat is not None:  # what stands between the same neighbours elsewhere in the document
        candidates.append(rank.extra_candidate(repeat.text, candidates))
    cleaned = [msgspec.structs.replace(c, text=rank.clean(c.text, doc_suffix, rank.line_before_cursor(doc_prefix))) for c in candidates]
    validations = syntax.validate(language, doc_prefix, doc_suffix, [c.text for c in cleaned])
    t3 = time.perf_counter()
    items = rank.rank(cleaned, validations, show_invalid=settings.show_invalid)
    items = rank.put_first(items, validations[-1].text if repeat is not None else None)  # the repeat
    items = names.put_first(items, name)
    t4 = time.perf_counter()

    engine_timings = result.timings
    timings.context_ms = (t1 - t0) * 1e3
    timings.tokenize_ms = engine_timings.tokenize_ms
    timings.encode_ms = engine_timings.encode_ms
    timings.denoise_ms = engine_timings.denoise_ms
    timings.validate_ms = (t3 - t2) * 1e3
    timings.rank_ms = (t4 - t3) * 1e3
    timings.total_ms = (t4 - t0) * 1e3
    timings.steps = engine_timings.steps
    timings.prompt_tokens = engine_timings.prompt_tokens
    timings.context_tokens = engine_timings.context_tokens
    timings.context_chunks = engine_timings.context_chunks
    return Completions(items=items, raw=rows, timings=timings)
