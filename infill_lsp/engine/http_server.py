"""The resident engine's HTTP API: the subset of vLLM's OpenAI-compatible protocol that
`http_backend.HttpEngine` sends, answered in vLLM's response shapes (`openai_wire`), plus the
common OpenAI-style FIM request for editors' completion clients.

Routes: `GET /health`, `GET /v1/models`, `POST /tokenize`, `POST /detokenize`,
`POST /v1/completions`, `GET /metrics` (plain-text counters).

`/metrics` says what cancels saved: `engine_cancelled` (runs the model thread stopped),
`cancelled_steps_skipped` and `cancelled_steps_run` (denoising steps of their budgets never run,
and run before the stop), `cancel_stop_ms_last` / `_max` (whole milliseconds, rounded up, from the
cancel, noticed when the client went away, to the model thread letting go of the request).

Engine work queues first in, first out across all connections for the one model thread; a
request whose client goes away while it queues is dropped without running (`engine_dropped`).

`/v1/completions` takes two kinds of request:

- a DiffusionGemma one-canvas read (`vllm_xargs` with `diffusion_*`, what the backend sends):
  checked as vLLM checks it (same messages), then translated back into an `InfillRequest` for
  the engine, which does the token-level canvas work itself: the prompt ids are decoded to the
  prefix (the engine re-tokenizes it, windows it and heals a split last token), the pinned tail
  of the seed canvas is decoded to the suffix (up to its end marker), the free middle m and the
  step cap become the budget, `n` the candidate count. The engine lays out its rows on its own
  length ladder within m (m, m/2, ...), in one batch; vLLM would give n rows of exactly m.
  The engine keeps one score per row (the mean log-probability of the middle and its end
  marker), so every token of a choice reports that mean. `seed` is accepted here (vLLM rejects
  it for diffusion models): fixed noise, for reproducible tests. Our own client adds
  `vllm_xargs.infill_lsp_request` (`openai_wire.OwnRequest`: the whole suffix window, the path,
  the repository context chunk by chunk), so the engine builds its checkpoint's own prompt, as
  in process; the answer then says what that prompt held (`infill_lsp_timings`), and
  `/v1/models` the checkpoint's layout (`infill_layout`).
- a FIM request (`prompt` + `suffix`, `n`, `max_tokens`, as Continue, Tabby, llm-ls and other
  OpenAI-compatible completion clients send): the full pipeline runs (clean, tree-sitter
  validation when the language is known, ranking: `infill_lsp.pipeline`), and the best `n`
  valid candidates come back, best first. Extensions: `language` (an LSP languageId) or `path`
  (a file name) turn validation on. A prompt templated as `<fim_prefix>P<fim_suffix>S<fim_middle>`
  (or Qwen's `<|fim_prefix|>` spelling) with no `suffix` field is split into P and S, for clients
  that template FIM themselves. A request with neither is a FIM request with an empty suffix.
  `stream: true` is answered as server-sent events (the whole answer at once, then `[DONE]`).

A client that disconnects cancels its engine work (checked between denoising steps), like
vLLM's `with_cancellation`. On TCP (`--http`, which the daemon opens only with an API key) every
route but /health needs `Authorization: Bearer KEY`; the Unix socket is owner-only. Malformed or
hostile input is a 4xx in OpenAI's error shape, anything unexpected a 500 in that shape; big
prompts are tokenized off the event loop, and a request's denoising steps are cut to the served
maximum (`--max-steps`), as vLLM does.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from ..types import Budget, InfillRequest
from . import Cancelled, CancelToken, Engine
from .openai_wire import (
    CANVAS_LENGTH,
    DIFFUSION_XARGS,
    MAX_STEPS,
    OWN_REQUEST,
    PINNED,
    READ_ONLY,
    SEED_CANVAS,
    CompletionChoice,
    CompletionLogProbs,
    CompletionResponse,
    ModelList,
    OwnModelCard,
    OwnRequest,
    OwnTimings,
    TokenizeResponse,
    Usage,
    error_body,
    validate_diffusion_xargs,
)

log = logging.getLogger(__name__)

MAX_BODY = 8 * 1024 * 1024  # bytes in one request body
MAX_N = 32
MAX_TOKENS = 512
SERVED_CANVAS = 1024  # widest canvas a read may ask for (middle + suffix head)
SERVED_STEPS = 256  # most denoising steps a read may ask for (vLLM clamps to its max_denoising_steps)
SEEDS = range(-(2**63), 2**64)  # what torch.Generator.manual_seed takes
OWNER = "infill-lsp"
# FIM prompts templated by the client (StarCoder's and Qwen's spellings): split back into prefix and suffix
FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE = ("<fim_prefix>", "<|fim_prefix|>"), ("<fim_suffix>", "<|fim_suffix|>"), \
    ("<fim_middle>", "<|fim_middle|>")


def split_fim(prompt: str) -> tuple[str, str] | None:
    """(prefix, suffix) of `<fim_prefix>P<fim_suffix>S<fim_middle>` (either spelling), split at the
    last suffix marker; None for any other prompt. String scans, linear in the prompt: a regular
    expression with two greedy groups took minutes on a prompt of many markers."""
    start = next((m for m in FIM_PREFIX if prompt.startswith(m)), None)
    end = next((m for m in FIM_MIDDLE if prompt.endswith(m)), None)
    if start is None or end is None or len(prompt) < len(start) + len(end):
        return None
    inner = prompt[len(start):len(prompt) - len(end)]
    at, marker = max((inner.rfind(m), m) for m in FIM_SUFFIX)
    if at < 0:
        return None
    return inner[:at], inner[at + len(marker):]


class HTTPError(Exception):
    def __init__(self, status: int, message: str, err_type: str = "BadRequestError", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.err_type, self.param = status, message, err_type, param


def _json(value, status: int = 200) -> Response:
    return Response(msgspec.json.encode(value), status_code=status, media_type="application/json")


class EngineService:
    """The engine behind the routes: one model worker thread, counters, the tokenizer."""

    def __init__(self, engine: Engine, *, served_canvas: int = SERVED_CANVAS, served_steps: int = SERVED_STEPS):
        self.engine = engine
        self.model = engine.info.model
        self.served_canvas = served_canvas
        self.served_steps = served_steps
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="infill-model")
        # Tokenizing a big prompt takes seconds: off the event loop (health checks and cancels go on),
        # and not behind the model's queue.
        self.text_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="infill-text")
        self.counters: Counter[str] = Counter()
        self.tokenizer = getattr(engine, "tokenizer", None)
        config = getattr(getattr(engine, "model", None), "config", None)
        text_config = getattr(config, "text_config", config)
        self.vocab_size = int(getattr(text_config, "vocab_size", 0) or (len(self.tokenizer) if self.tokenizer else 0))
        self.max_model_len = int(getattr(text_config, "max_position_embeddings", 0) or 32768)
        self.bos_id = getattr(engine, "bos_id", None)
        self.end_id = getattr(engine, "end_id", None)
        self.pad_id = getattr(engine, "pad_id", None)

    # -- tokens ---------------------------------------------------------------------------------
    def encode(self, text: str, special: bool) -> list[int]:
        if self.tokenizer is None:
            raise HTTPError(501, "this engine has no tokenizer", "NotImplementedError")
        return list(self.tokenizer(text, add_special_tokens=special)["input_ids"]) if text or special else []

    def decode(self, ids: list[int]) -> str:
        if self.tokenizer is None:
            raise HTTPError(501, "this engine has no tokenizer", "NotImplementedError")
        return self.tokenizer.backend_tokenizer.decode(ids, skip_special_tokens=False)

    async def off_loop(self, fn, *args):
        """fn(*args) on the text thread (tokenizing, decoding: seconds for a prompt of megabytes)."""
        return await asyncio.wrap_future(self.text_worker.submit(fn, *args))

    # -- running the engine -------------------------------------------------------------------
    def _call(self, token: CancelToken, fn, *args):
        if token.cancelled:  # cancelled while it queued: drop it, the next request runs at once
            self.counters["engine_dropped"] += 1
            raise Cancelled()
        self.counters["engine_started"] += 1
        try:
            result = fn(*args)
        except Cancelled as exc:
            self.counters["engine_cancelled"] += 1
            self._stopped(token, exc)
            raise
        except Exception:
            self.counters["engine_errors"] += 1
            raise
        self.counters["engine_completed"] += 1
        return result

    def _stopped(self, token: CancelToken, exc: Cancelled) -> None:
        """What a cancel saved: the denoising steps it skipped, and how soon the model thread let go."""
        if exc.steps_left is not None:
            self.counters["cancelled_steps_run"] += exc.steps_run or 0
            self.counters["cancelled_steps_skipped"] += exc.steps_left
        if token.cancelled_at is not None:
            stop_ms = math.ceil((time.monotonic() - token.cancelled_at) * 1e3)  # whole ms: every counter is an integer
            self.counters["cancel_stop_ms_last"] = stop_ms
            self.counters["cancel_stop_ms_max"] = max(self.counters["cancel_stop_ms_max"], stop_ms)

    async def run(self, raw: Request, fn, *args, token: CancelToken):
        """fn(*args) on the model thread; the client going away cancels it. None when cancelled.

        Requests queue first in, first out for the one model thread, whichever connection they
        came on (the executor's queue is a FIFO). A request whose client goes away while it
        queues is taken out of the queue there and then (it never starts, and the request behind
        it moves up); one that is running stops between denoising steps.
        """
        queued = self.worker.submit(self._call, token, fn, *args)
        job = asyncio.wrap_future(queued)
        gone = asyncio.ensure_future(_disconnected(raw))
        try:
            done, _ = await asyncio.wait({job, gone}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # server shutting down
            token.cancel()
            queued.cancel()
            raise
        finally:
            if not gone.done():
                gone.cancel()
        if job not in done:
            self.counters["disconnected"] += 1
            token.cancel()
            if queued.cancel():  # still queued: the model thread skips it
                self.counters["engine_dropped"] += 1
                return None
            try:
                await job  # the engine stops between denoising steps; wait so the counters say so
            except Exception:  # noqa: BLE001 - Cancelled (or whatever it died of): nobody to tell
                pass
            return None
        try:
            return job.result()
        except Cancelled:
            return None
        except Exception as exc:
            log.exception("engine failed")
            raise HTTPError(500, f"engine error: {type(exc).__name__}: {exc}", "InternalServerError") from exc

    def close(self) -> None:
        self.worker.shutdown(wait=False, cancel_futures=True)
        self.text_worker.shutdown(wait=False, cancel_futures=True)


async def _disconnected(request: Request) -> None:
    """Returns when the client goes away (the body was read already), as vLLM's listen_for_disconnect."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _read_json(request: Request) -> dict:
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
        raise HTTPError(413, f"request body over {MAX_BODY} bytes", "RequestTooLarge")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise HTTPError(413, f"request body over {MAX_BODY} bytes", "RequestTooLarge")
        chunks.append(chunk)
    try:
        body = msgspec.json.decode(b"".join(chunks))
    except msgspec.DecodeError as exc:
        raise HTTPError(400, f"body is not JSON: {exc}") from None
    except RecursionError:
        raise HTTPError(400, "body is not JSON this server reads: nested too deeply") from None
    if not isinstance(body, dict):
        raise HTTPError(400, "body must be a JSON object")
    return body


def _seed(body: dict) -> int | None:
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed not in SEEDS):
        raise HTTPError(400, "seed must be an integer in [-2**63, 2**64)", param="seed")
    return seed


def _int(body: dict, key: str, default: int | None, lo: int, hi: int) -> int | None:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise HTTPError(400, f"{key} must be an integer in [{lo}, {hi}]", param=key)
    return value


class Handlers:
    def __init__(self, service: EngineService):
        self.s = service

    def check_model(self, body: dict) -> None:
        model = body.get("model")
        if model and model != self.s.model:
            raise HTTPError(404, f"The model `{model}` does not exist.", "NotFoundError", "model")

    async def health(self, request: Request) -> Response:
        return Response(status_code=200)

    async def models(self, request: Request) -> Response:
        info = self.s.engine.info
        layout = {"repo_context": info.repo_context, "repo_context_tokens": info.repo_context_tokens,
                  "suffix_window": info.suffix_window}
        card = OwnModelCard(id=self.s.model, owned_by=OWNER, root=self.s.model, max_model_len=self.s.max_model_len,
                            infill_layout=layout)
        return _json(ModelList(data=[card]))

    async def metrics(self, request: Request) -> Response:
        counters = {**self.s.counters, **{f"engine_{k}": v for k, v in getattr(self.s.engine, "stats", {}).items()}}
        lines = [f"infill_{name} {value}" for name, value in sorted(counters.items())]
        return PlainTextResponse("\n".join(lines) + "\n")

    async def tokenize(self, request: Request) -> Response:
        body = await _read_json(request)
        self.check_model(body)
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise HTTPError(400, "prompt must be a string", param="prompt")
        special, with_strs = bool(body.get("add_special_tokens", True)), bool(body.get("return_token_strs"))

        def tokenize() -> TokenizeResponse:
            ids = self.s.encode(prompt, special)
            strs = [self.s.decode([t]) for t in ids] if with_strs else None
            return TokenizeResponse(count=len(ids), max_model_len=self.s.max_model_len, tokens=ids, token_strs=strs)
        return _json(await self.s.off_loop(tokenize))

    async def detokenize(self, request: Request) -> Response:
        body = await _read_json(request)
        self.check_model(body)
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) and 0 <= t < max(self.s.vocab_size, 1) for t in tokens):
            raise HTTPError(400, "tokens must be a list of token ids", param="tokens")
        return _json({"prompt": await self.s.off_loop(self.s.decode, tokens)})

    async def completions(self, request: Request) -> Response:
        body = await _read_json(request)
        self.check_model(body)
        self.s.counters["requests"] += 1
        if body.get("echo"):
            raise HTTPError(400, "echo is not supported by infill-lsp's engine", param="echo")
        n = _int(body, "n", 1, 1, MAX_N)
        logprobs = _int(body, "logprobs", None, 0, 20)
        xargs = body.get("vllm_xargs") or {}
        if not isinstance(xargs, dict):
            raise HTTPError(400, "vllm_xargs must be an object", param="vllm_xargs")
        if body.get("suffix") is None and any(key in xargs for key in DIFFUSION_XARGS):
            if body.get("stream"):
                raise HTTPError(400, "a canvas read is answered whole: stream is not supported", param="stream")
            return await self.diffusion_read(request, body, xargs, n, logprobs)
        return await self.fim(request, body, n, logprobs)

    # -- DiffusionGemma reads (what HttpEngine sends) -------------------------------------------
    async def diffusion_read(self, request: Request, body: dict, xargs: dict, n: int, logprobs: int | None) -> Response:
        s = self.s
        # vLLM: SamplingParams._validate_diffusion (the seed is this engine's extension)
        temperature = body.get("temperature")
        if (temperature is not None and temperature != 1.0) or body.get("min_p") or body.get("min_tokens") \
                or body.get("logit_bias") or body.get("bad_words") or body.get("allowed_token_ids"):
            raise HTTPError(400, "The temperature, min_p, seed, min_tokens, logit_bias, bad_words, and "
                                 "allowed_token_ids sampling parameters are not yet supported with diffusion models.")
        if (message := validate_diffusion_xargs(xargs, s.served_canvas, s.vocab_size)) is not None:
            raise HTTPError(400, message, param="extra_args")
        max_tokens = _int(body, "max_tokens", 16, 1, 1 << 30)
        seed = _seed(body)
        stop_token_ids = body.get("stop_token_ids") or []
        if not isinstance(stop_token_ids, list) or not all(isinstance(t, int) for t in stop_token_ids):
            raise HTTPError(400, "stop_token_ids must be a list of token ids", param="stop_token_ids")
        width = xargs.get(CANVAS_LENGTH) or s.served_canvas
        canvas = xargs.get(SEED_CANVAS)
        pins = sorted(set(xargs.get(PINNED) or []))
        middle = pins[0] if pins else width
        if pins != list(range(middle, width)):
            raise HTTPError(400, "infill-lsp's engine pins the tail of the canvas only: diffusion_pinned must be "
                                 "the positions m..W-1 after a free middle of m", param="extra_args")
        if not xargs.get(READ_ONLY) and max_tokens > width:
            raise HTTPError(400, "infill-lsp's engine answers one-canvas reads: set diffusion_read_only, or "
                                 "max_tokens at most the canvas width", param="extra_args")
        if middle < 1:
            raise HTTPError(400, "the canvas has no free position to denoise", param="extra_args")
        tail = list(canvas[middle:]) if canvas is not None else []
        stops = {t for t in (s.end_id, s.pad_id) if t is not None}
        stops.update(stop_token_ids)
        cut = next((i for i, t in enumerate(tail) if t in stops), len(tail))
        suffix = s.decode(tail[:cut]) if cut else ""
        prompt = body.get("prompt")
        self._check_prompt(prompt)

        def prompt_text() -> tuple[list[int], str]:  # a prompt may be megabytes: tokenized off the loop
            if isinstance(prompt, str):
                return s.encode(prompt, True), prompt
            ids = prompt[1:] if prompt and prompt[0] == s.bos_id else prompt
            return prompt, s.decode([t for t in ids if t not in stops]) if ids else ""
        prompt_ids, prefix = await s.off_loop(prompt_text)
        steps = min(xargs.get(MAX_STEPS) or Budget().steps, s.served_steps)
        m = min(middle, max_tokens)
        own = OwnRequest(suffix=suffix)
        if xargs.get(OWN_REQUEST) is not None:
            try:
                own = msgspec.convert(xargs[OWN_REQUEST], OwnRequest)
            except msgspec.ValidationError as exc:
                raise HTTPError(400, f"{OWN_REQUEST}: {exc}", param="extra_args") from None
        infill = InfillRequest(prefix=prefix, suffix=own.suffix, language=own.language, path=own.path,
                               context=own.context, seed=seed,
                               budget=Budget(candidates=n, max_middle_tokens=m, steps=steps))
        token = CancelToken()
        result = await s.run(request, s.engine.infill, infill, token, token=token)
        if result is None:
            return Response(status_code=499)
        choices = []
        for index, candidate in enumerate(result.candidates):
            ids = s.encode(candidate.text, False)
            stopped = candidate.tokens < m and s.end_id is not None
            if stopped:
                ids = ids + [s.end_id]
            choices.append(CompletionChoice(
                index=index, text=candidate.text,
                logprobs=_logprobs(s, ids, candidate.score) if logprobs is not None else None,
                finish_reason="stop" if stopped else "length", stop_reason=s.end_id if stopped else None,
                token_ids=ids if body.get("return_token_ids") else None,
                prompt_token_ids=prompt_ids if body.get("return_token_ids") else None,
            ))
        completion_tokens = sum(len(c.token_ids or []) for c in choices)
        usage = Usage(prompt_tokens=len(prompt_ids), completion_tokens=completion_tokens,
                      total_tokens=len(prompt_ids) + completion_tokens)
        timings = result.timings
        return _json(CompletionResponse(model=s.model, choices=choices, usage=usage, infill_lsp_timings=OwnTimings(
            prompt_tokens=timings.prompt_tokens, context_tokens=timings.context_tokens,
            context_chunks=timings.context_chunks)))

    def _check_prompt(self, prompt) -> None:
        if isinstance(prompt, str):
            if self.s.tokenizer is None:
                raise HTTPError(501, "this engine has no tokenizer", "NotImplementedError")
            return
        if isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt) \
                and all(0 <= t < max(self.s.vocab_size, 1) for t in prompt):
            return
        raise HTTPError(400, "prompt must be a string or a list of token ids", param="prompt")

    # -- FIM (editors' completion clients) ----------------------------------------------------
    async def fim(self, request: Request, body: dict, n: int, logprobs: int | None) -> Response:
        from .. import pipeline
        from ..config import Settings

        prompt, suffix = body.get("prompt"), body.get("suffix")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise HTTPError(400, "a FIM request's prompt must be a string", param="prompt")
        if suffix is None and (marked := split_fim(prompt)):  # a client that templates FIM itself
            prompt, suffix = marked
        suffix = suffix or ""
        if not isinstance(suffix, str):
            raise HTTPError(400, "suffix must be a string", param="suffix")
        max_tokens = min(_int(body, "max_tokens", 16, 1, 1 << 30), MAX_TOKENS)
        language = body.get("language") if isinstance(body.get("language"), str) else ""
        path = body.get("path") if isinstance(body.get("path"), str) else None
        settings = Settings()
        budget = Budget(candidates=max(n, settings.candidates), max_middle_tokens=max_tokens, steps=settings.steps)
        # FIM clients never needed a seed: one that is not an integer is ignored, as before; one torch
        # cannot take is refused
        seed = _seed(body) if isinstance(body.get("seed"), int) and not isinstance(body.get("seed"), bool) else None
        token = CancelToken()
        text = prompt + suffix
        result = await self.s.run(request, _complete, pipeline, self.s.engine, text, len(prompt), language, path,
                                  settings, budget, token, seed, token=token)
        if result is None:
            return Response(status_code=499)
        items = result.items[:n] or []
        choices = [CompletionChoice(index=i, text=item.text, finish_reason="stop",
                                    logprobs=_logprobs(self.s, self.s.encode(item.text, False), item.score)
                                    if logprobs is not None and self.s.tokenizer is not None else None)
                   for i, item in enumerate(items)]
        if not choices:  # nothing passed validation: one empty suggestion, as clients expect a choice
            choices = [CompletionChoice(index=0, text="", finish_reason="stop")]
        prompt_tokens = result.timings.prompt_tokens
        completion_tokens = sum(len(self.s.encode(c.text, False)) for c in choices) if self.s.tokenizer else 0
        usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                      total_tokens=prompt_tokens + completion_tokens)
        response = CompletionResponse(model=self.s.model, choices=choices, usage=usage)
        if body.get("stream"):
            return _stream(response)
        return _json(response)


def _stream(response: CompletionResponse) -> Response:
    """The whole answer as server-sent events, vLLM's CompletionStreamResponse chunks then [DONE]:
    one chunk per choice, each with its finish_reason (clients such as Tabby stop reading there)."""
    chunks = []
    for choice in response.choices:
        chunk = {"id": response.id, "object": "text_completion", "created": response.created, "model": response.model,
                 "choices": [msgspec.to_builtins(choice)]}
        chunks.append(b"data: " + msgspec.json.encode(chunk) + b"\n\n")
    chunks.append(b"data: [DONE]\n\n")
    return Response(b"".join(chunks), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _complete(pipeline, engine, text, offset, language, path, settings, budget, token, seed):
    return pipeline.complete(engine, text, offset, language_id=language, path=path, settings=settings,
                             budget=budget, cancel=token, seed=seed)


def _logprobs(service: EngineService, ids: list[int], score: float) -> CompletionLogProbs:
    tokens = [service.decode([t]) for t in ids]
    offsets, at = [], 0
    for token in tokens:
        offsets.append(at)
        at += len(token)
    return CompletionLogProbs(text_offset=offsets, token_logprobs=[score] * len(ids), tokens=tokens,
                              top_logprobs=[{token: score} for token in tokens])


class _Guard:
    """ASGI middleware: the bearer token on TCP connections (401 in vLLM's shape)."""

    def __init__(self, app, api_key: str | None):
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        server = scope.get("server")
        over_tcp = bool(server) and server[1] is not None  # uvicorn: (path, None) on a Unix socket
        if self.api_key and over_tcp and scope["path"] != "/health":
            header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
            scheme, _, given = header.partition(" ")
            if scheme.lower() != "bearer" or not secrets.compare_digest(given.encode(), self.api_key.encode()):
                response = Response(b'{"error":"Unauthorized"}', status_code=401, media_type="application/json")
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPError)
    return Response(error_body(exc.message, exc.status, exc.err_type, exc.param), status_code=exc.status,
                    media_type="application/json")


async def _internal_error(request: Request, exc: Exception) -> Response:
    """Anything a route did not expect: an OpenAI-style 500 for the client (Starlette re-raises it
    afterwards, and uvicorn logs the traceback)."""
    message = f"internal error: {type(exc).__name__}"
    return Response(error_body(message, 500, "InternalServerError", None), status_code=500,
                    media_type="application/json")


def build_app(service: EngineService, api_key: str | None = None):
    h = Handlers(service)
    routes = [
        Route("/health", h.health, methods=["GET"]),
        Route("/v1/models", h.models, methods=["GET"]),
        Route("/metrics", h.metrics, methods=["GET"]),
        Route("/tokenize", h.tokenize, methods=["POST"]),
        Route("/detokenize", h.detokenize, methods=["POST"]),
        Route("/v1/completions", h.completions, methods=["POST"]),
    ]
    handlers = {HTTPError: _http_error, Exception: _internal_error}
    return _Guard(Starlette(routes=routes, exception_handlers=handlers), api_key or None)
