"""HTTP engine backend: infill answered by a vLLM server running DiffusionGemma, or by
`infill-lsp engine` (which speaks the same API on its Unix socket and on `--http`).

`--engine http(s)://HOST:PORT` (TLS by scheme), `--engine unix:/path/engine.sock` or a bare
socket path. One pooled `httpx.AsyncClient` on a private event-loop thread serves every
request; `infill` blocks its caller (the LSP worker thread) like the in-process engine does.

One infill becomes requests to vLLM's `/v1/completions` (`CompletionRequest` in
`vllm/entrypoints/openai/completion/protocol.py`, vLLM 0.33), one per distinct middle length
of the candidate ladder (the rows of one length are one request with `n` rows), sent
concurrently. Each is a one-canvas read of DiffusionGemma, set up through `vllm_xargs`, which
vLLM copies into `SamplingParams.extra_args` (`CompletionRequest.to_sampling_params`):

- `diffusion_canvas_length` = the canvas width W (middle slot + suffix head), at most the
  served canvas: checked by `validate_diffusion_sampling_params` (`vllm/utils/diffusion.py`),
  applied by `DiffusionSampler.add_request` (`vllm/model_executor/models/diffusion_gemma.py`);
- `diffusion_seed_canvas` = W token ids the canvas starts from: uniform noise on the middle,
  then the suffix head, the end marker and padding, exactly the layout of
  `infill_lsp.engine.canvas.build_canvas`; ids must be in [0, vocab) and exactly W of them
  (same checker; `DiffusionGemmaRequestStates.set_seed_canvas`);
- `diffusion_pinned` = the positions of the suffix head, held at the seed on every denoising
  step (needs the seed canvas; same checker; `set_pins`, applied in `_compiled_sample_step`);
- `diffusion_max_steps` = the step budget, a positive integer (same checker; clamped to the
  served `max_denoising_steps` in `DiffusionSampler.add_request`);
- `diffusion_read_only` = 1: one canvas is the whole output, emitted when it converges with no
  commit forward, logprobs at temperature 1, EOS ignored (same checker, which also caps
  `max_tokens` at W and sets `ignore_eos`; `_read_in_flight` in
  `vllm/v1/core/sched/diffusion_scheduler.py`). JSON booleans arrive as 0/1, so 1 is sent.

Plain request fields: `max_tokens` = the middle length m, so the scheduler ends the request
after the middle (`check_stop` in `vllm/v1/core/sched/utils.py` caps at `max_tokens`; vLLM's own
structured-decision reads use max_tokens below the width the same way); `stop_token_ids` = the
end marker and padding, so a middle ends at its end marker (the stop token stays in
`token_ids`, its text is dropped: `IncrementalDetokenizer.update`); `logprobs: 0` returns each
emitted token's log-probability (`_create_completion_logprobs` in
`vllm/entrypoints/openai/completion/serving.py`), whose mean over the middle and its end
marker is the ranking score, as in the in-process engine; `return_token_ids` returns the ids;
`temperature: 1.0` because DiffusionGemma rejects any other value, and `seed` is never sent to
vLLM (both: `SamplingParams._validate_diffusion`, `vllm/sampling_params.py`); `suffix` is never
sent (`/v1/completions` rejects it for models without FIM rendering:
`vllm/renderers/online_renderer.py`). The prompt is sent as token ids: the prefix tokenized by
the server's `/tokenize` (`vllm/entrypoints/serve/tokenize`), its window start moved in steps
of 128 tokens so vLLM's prefix cache keeps hitting, BOS first. Repository context
(`InfillRequest.context`) goes between BOS and the window in the layout of `repo_context.py`, each
rendered chunk tokenized once while it stays in the ring, so the prompt's head is the same token
for token while the user types. To `infill-lsp engine` the context, the whole suffix window and
the path go as they are (`vllm_xargs.infill_lsp_request`), and the engine lays out the prompt of
the checkpoint it serves; its `/v1/models` card says that layout (`infill_layout`), so "auto"
turns context on for a checkpoint trained with it, sized to its budget, as in process.

At connect time the backend reads `/v1/models` and learns from the server's own argument
checks (requests that fail validation, so no model work) whether it is a diffusion model at
all (a non-diffusion model ignores these arguments), its vocabulary size (from the seed-range
message) and the served canvas width (binary search on the width check). Cancelling the LSP
request cancels the HTTP requests: their connections close, and vLLM's `with_cancellation`
(`vllm/entrypoints/serve/utils/api_utils.py`) aborts the generation, as does `infill-lsp
engine`. Every failure is an `EngineUnavailable` with the reason.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import random
import re
import threading
import time
from collections import Counter, OrderedDict
from urllib.parse import urlsplit

import httpx
import msgspec

from .. import repo_context
from ..types import Candidate, EngineInfo, EngineTimings, InfillRequest, InfillResult
from . import DEFAULT_MODEL, Cancelled, CancelToken, EngineUnavailable
from .cancel import NEVER
from .openai_wire import (
    CANVAS_LENGTH,
    MAX_STEPS,
    OWN_REQUEST,
    PINNED,
    READ_ONLY,
    SEED_CANVAS,
    CompletionResponse,
    OwnRequest,
)

log = logging.getLogger(__name__)

API_KEY_ENV = "INFILL_ENGINE_API_KEY"
OWN_ENGINE = "infill-lsp"  # `owned_by` of the resident engine's /v1/models
WINDOW_STEP = 128  # as TransformersEngine: the prompt window's start moves in steps of this many tokens
CANVAS_PROBE_MAX = 4096  # widest canvas looked for at connect time
_HUGE_ID = 2**31 - 1
_VOCAB_MESSAGE = re.compile(r"diffusion_seed_canvas ids must be in \[0, (\d+)\)")
UDS_BASE_URL = "http://infill-engine"


def middle_lengths(candidates: int, max_middle: int, min_middle: int = 4) -> list[int]:
    """The in-process engine's ladder (`canvas.middle_lengths`), without importing torch."""
    max_middle = max(1, max_middle)
    ladder = [max_middle]
    while ladder[-1] // 2 >= min_middle:
        ladder.append(ladder[-1] // 2)
    return [ladder[i % len(ladder)] for i in range(max(1, candidates))]


def seed_row(m: int, width: int, tail: list[int], noise: list[int]) -> list[int]:
    """One row of `canvas.build_canvas`: m noise ids, then the tail (suffix head, end, padding)."""
    return noise[:m] + tail[: width - m]


def parse_address(address: str) -> tuple[str, str | None]:
    """(base URL, Unix socket path or None) for an --engine address."""
    if address.startswith(("http://", "https://")):
        parts = urlsplit(address)
        if not parts.hostname:
            raise EngineUnavailable(f"engine address {address!r} has no host")
        return address.rstrip("/"), None
    path = address.removeprefix("unix://") if address.startswith("unix://") else address.removeprefix("unix:")
    return UDS_BASE_URL, os.path.expanduser(path)


def _usable_key(key: str) -> str:
    """The bearer token as a header can carry it: surrounding whitespace (a CRLF `.env` line) is
    dropped; a key with other characters a header cannot hold is refused without being echoed,
    since the error reaches the editor's status and the log."""
    key = key.strip()
    if any(not 0x21 <= ord(c) <= 0x7E for c in key):
        raise EngineUnavailable(f"the engine API key (--engine-api-key or {API_KEY_ENV}) has a character an "
                                "HTTP header cannot carry (spaces, control characters or non-ASCII)")
    return key


def _check_socket_owner(path: str) -> None:
    """The engine's socket must be ours: a socket another user made (or a link to one) would get
    the code around the cursor and answer with their completions."""
    try:
        owner = os.stat(path).st_uid
    except OSError:
        return  # nothing there yet: connecting says it is unreachable
    if owner != os.getuid():
        raise EngineUnavailable(f"engine socket {path} belongs to another user (uid {owner}): not connecting")


class ServerFacts(msgspec.Struct):
    model: str
    owned_by: str
    max_model_len: int
    vocab_size: int
    canvas_limit: int
    bos: list[int]
    end_id: int | None
    pad_id: int | None
    layout: dict | None = None  # our own engine's checkpoint layout (its card's infill_layout); None: vLLM

    @property
    def own(self) -> bool:
        return self.owned_by == OWN_ENGINE

    @property
    def takes_own_request(self) -> bool:
        """Our engine, recent enough to build the prompt itself from `OwnRequest` (it says its layout)."""
        return self.own and self.layout is not None


class HttpEngine:
    """The `Engine` interface over vLLM's OpenAI-compatible HTTP API."""

    def __init__(
        self,
        address: str,
        *,
        model: str = "",
        api_key: str | None = None,
        prefix_tokens: int = 1024,
        suffix_head_tokens: int = 16,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
    ):
        self.address = address
        self.base_url, self.socket_path = parse_address(address)
        self.prefix_tokens = prefix_tokens
        self.suffix_head_tokens = suffix_head_tokens
        self.read_timeout = read_timeout
        api_key = _usable_key(api_key if api_key is not None else os.environ.get(API_KEY_ENV, ""))
        if self.socket_path:
            _check_socket_owner(self.socket_path)
        self.stats: Counter[str] = Counter()
        self._suffix_cache: OrderedDict[str, list[int]] = OrderedDict()
        self._context_cache: OrderedDict[str, list[int]] = OrderedDict()  # rendered context chunk -> its ids
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="infill-http")
        self._thread.start()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        timeout = httpx.Timeout(connect=connect_timeout, read=read_timeout, write=read_timeout, pool=read_timeout)

        async def make_client() -> httpx.AsyncClient:  # one pooled client; TLS when the URL says https
            limits = httpx.Limits(max_connections=64, max_keepalive_connections=16)
            transport = httpx.AsyncHTTPTransport(uds=self.socket_path, limits=limits, retries=0)
            return httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)

        try:
            self._client: httpx.AsyncClient = self._run(make_client())
            self.facts: ServerFacts = self._run(self._discover(model))
        except BaseException:
            self.close()
            raise
        kind = "infill-lsp" if self.facts.own else "vllm"
        # vLLM serves the real DiffusionGemma: the plain-text layout. Our own engine says which layout its
        # checkpoint declares (infill-small: none); one that does not say gets it only for the real model.
        layout = self.facts.layout or {}
        repo_layout = layout.get("repo_context") if self.facts.takes_own_request else (
            repo_context.PATH_COMMENT if not self.facts.own or self.facts.model == DEFAULT_MODEL else "")
        self.info = EngineInfo(model=self.facts.model, backend=f"http:{kind}", device=self._where(), dtype="remote",
                               repo_context=str(repo_layout or ""),
                               repo_context_tokens=_count(layout.get("repo_context_tokens")),
                               suffix_window=_count(layout.get("suffix_window")))

    def _where(self) -> str:
        return self.socket_path or urlsplit(self.base_url).netloc

    # -- plumbing -------------------------------------------------------------------------------
    def _run(self, coro, cancel: CancelToken = NEVER):
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        if cancel is not NEVER:  # NEVER is shared and never fires: don't pile callbacks on it
            cancel.on_cancel(future.cancel)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise Cancelled() from None

    def _where_text(self) -> str:
        return f"engine at {self.address}"

    async def _request(self, method: str, path: str, body: dict | None = None) -> object:
        """One HTTP call; every failure becomes EngineUnavailable with the reason."""
        where = self._where_text()
        try:
            if body is None:
                response = await self._client.request(method, path)
            else:
                response = await self._client.request(method, path, content=msgspec.json.encode(body),
                                                      headers={"Content-Type": "application/json"})
        except httpx.ConnectTimeout as exc:
            raise EngineUnavailable(f"{where}: no connection within the connect timeout ({exc})") from None
        except httpx.ConnectError as exc:
            raise EngineUnavailable(f"{where} is unreachable: {exc or type(exc).__name__}") from None
        except httpx.TimeoutException:
            raise EngineUnavailable(f"{where} did not answer within {self.read_timeout:g} s") from None
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            raise EngineUnavailable(f"{where} closed the connection mid-request: {exc or type(exc).__name__}") from None
        except httpx.HTTPError as exc:
            raise EngineUnavailable(f"{where}: {type(exc).__name__}: {exc}") from None
        if response.status_code == 401:
            raise EngineUnavailable(f"{where} refused the API key (401 Unauthorized): pass --engine-api-key "
                                    f"or set {API_KEY_ENV} to the server's --api-key")
        try:
            data = msgspec.json.decode(response.content) if response.content else None
        except msgspec.DecodeError:
            data = None
        if response.status_code >= 400:
            message = _error_message(data) or response.text[:200] or response.reason_phrase
            if response.status_code == 404 and not (isinstance(data, dict) and "error" in data):
                message = f"{path} not found: not a vLLM OpenAI-compatible server"
            raise EngineUnavailable(f"{where} rejected {path} ({response.status_code}): {message}")
        if data is None and response.content:
            raise EngineUnavailable(f"{where} answered {path} with something that is not JSON")
        return data

    async def _probe(self, body: dict) -> str | None:
        """A completion meant to fail the server's argument checks: its 400 message, or None when accepted."""
        try:
            await self._request("POST", "/v1/completions", body)
        except EngineUnavailable as exc:
            text = str(exc)
            if "(400)" in text:
                return text
            raise
        return None

    async def _tokenize(self, model: str, text: str, special: bool) -> list[int]:
        data = await self._request("POST", "/tokenize", {"model": model, "prompt": text, "add_special_tokens": special})
        try:
            return [int(t) for t in data["tokens"]]  # type: ignore[index]
        except (TypeError, KeyError, ValueError):
            raise EngineUnavailable(f"{self._where_text()}: /tokenize answered without tokens") from None

    # -- connect --------------------------------------------------------------------------------
    async def _discover(self, wanted: str) -> ServerFacts:
        where = self._where_text()
        models = await self._request("GET", "/v1/models")
        cards = models.get("data") if isinstance(models, dict) else None
        if not cards or not all(isinstance(c, dict) and isinstance(c.get("id"), str) for c in cards):
            raise EngineUnavailable(f"{where}: /v1/models lists no model")
        served = [c["id"] for c in cards]
        if wanted and wanted not in served:
            raise EngineUnavailable(f"{where} serves {', '.join(served)}, not {wanted!r} (check --model)")
        card = next(c for c in cards if c["id"] == (wanted or served[0]))
        model = card["id"]
        max_model_len = int(card.get("max_model_len") or 8192)

        bos, end, pad = await asyncio.gather(self._tokenize(model, "", True), self._tokenize(model, "<eos>", False),
                                             self._tokenize(model, "<pad>", False))
        end_id = end[0] if len(end) == 1 else None
        pad_id = pad[0] if len(pad) == 1 else end_id
        if end_id is None:
            log.warning("%s: the tokenizer has no <eos> token; middles are not cut at an end marker", where)

        base = {"model": model, "prompt": bos + [end_id or 0], "max_tokens": 1, "temperature": 1.0}
        message = await self._probe({**base, "vllm_xargs": {SEED_CANVAS: [_HUGE_ID], MAX_STEPS: 0}})
        if message is None:
            raise EngineUnavailable(f"{where} serves {model}, which is not a diffusion model (or the server is "
                                    f"older than vLLM 0.31): it ignored DiffusionGemma's per-request arguments "
                                    f"(vllm_xargs diffusion_*)")
        found = _VOCAB_MESSAGE.search(message)
        if not found:
            raise EngineUnavailable(f"{where} serves {model}, which does not take DiffusionGemma's arguments: {message}")
        vocab_size = int(found.group(1))

        async def width_ok(width: int) -> bool:
            # Width is checked before the step cap: a width error means too wide, a step error means it fits.
            text = await self._probe({**base, "vllm_xargs": {CANVAS_LENGTH: width, MAX_STEPS: 0}})
            if text is None:
                raise EngineUnavailable(f"{where} accepted diffusion_max_steps=0: not vLLM's DiffusionGemma checks")
            return CANVAS_LENGTH not in text

        if await width_ok(CANVAS_PROBE_MAX):
            limit = CANVAS_PROBE_MAX
        else:
            lo, hi = 0, CANVAS_PROBE_MAX  # lo fits (0: nothing known yet), hi does not
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if await width_ok(mid) else (lo, mid)
            limit = lo
        if limit < 2:
            raise EngineUnavailable(f"{where}: the served canvas ({limit}) is too small for infilling")
        layout = card.get("infill_layout")
        facts = ServerFacts(model=model, owned_by=str(card.get("owned_by") or ""), max_model_len=max_model_len,
                            vocab_size=vocab_size, canvas_limit=limit, bos=bos, end_id=end_id, pad_id=pad_id,
                            layout=layout if isinstance(layout, dict) else None)
        log.info("engine at %s: %s (%s), canvas %d, vocabulary %d", self.address, model, facts.owned_by, limit, vocab_size)
        return facts

    # -- infill ---------------------------------------------------------------------------------
    def infill(self, request: InfillRequest, cancel: CancelToken = NEVER) -> InfillResult:
        cancel.raise_if_cancelled()
        self.stats["requests"] += 1
        try:
            return self._run(self._infill(request), cancel)
        except Cancelled:
            self.stats["cancelled"] += 1
            raise

    async def _suffix_ids(self, suffix: str) -> list[int]:
        cached = self._suffix_cache.get(suffix)
        if cached is not None:
            self._suffix_cache.move_to_end(suffix)
            return cached
        ids = await self._tokenize(self.facts.model, suffix, False) if suffix else []
        self._suffix_cache[suffix] = ids
        while len(self._suffix_cache) > 64:
            self._suffix_cache.popitem(last=False)
        return ids

    async def _context_ids(self, request: InfillRequest) -> tuple[list[int], int]:
        """Repository context before the prefix (repo_context.py), at most `prefix_tokens` tokens and
        half the served length (half of `prefix_tokens` for our own engine, which windows the whole
        prompt at its own prefix_tokens again), least relevant chunks dropped first; and how many
        chunks fitted."""
        if not request.context:
            return [], 0
        texts = [repo_context.render_chunk(chunk) for chunk in request.context]
        texts.append(repo_context.render_header(request.path or "this file"))
        missing = list(dict.fromkeys(t for t in texts if t not in self._context_cache))
        for text, ids in zip(missing, await asyncio.gather(*(self._tokenize(self.facts.model, t, False)
                                                              for t in missing))):
            self._context_cache[text] = ids
        for text in texts:
            self._context_cache.move_to_end(text)
        while len(self._context_cache) > 128:
            self._context_cache.popitem(last=False)
        ids = [self._context_cache[t] for t in texts]
        limit = min(self.prefix_tokens, self.facts.max_model_len // 2)
        if self.facts.own:
            limit = self.prefix_tokens // 2
        return repo_context.fit(ids[:-1], ids[-1], limit)

    async def _infill(self, request: InfillRequest) -> InfillResult:
        timings = EngineTimings()
        t0 = time.perf_counter()
        own = self.facts.takes_own_request  # the engine lays out context and suffix window itself
        prefix_ids, suffix_ids, (context_ids, kept) = await asyncio.gather(
            self._tokenize(self.facts.model, request.prefix, False) if request.prefix else _nothing(),
            self._suffix_ids(request.suffix[: self.suffix_head_tokens * 16]),
            _nothing_kept() if own else self._context_ids(request),
        )
        rng = random.Random(request.seed) if request.seed is not None else random.Random()
        own_request = OwnRequest(suffix=request.suffix, path=request.path, language=request.language,
                                 context=request.context) if own else None
        bodies = build_requests(self.facts, request, prefix_ids, suffix_ids, rng, self.prefix_tokens,
                                self.suffix_head_tokens, context_ids=context_ids, own_request=own_request)
        timings.prompt_tokens = len(bodies[0]["prompt"])
        timings.context_tokens, timings.context_chunks = len(context_ids), kept
        t1 = time.perf_counter()
        timings.tokenize_ms = (t1 - t0) * 1e3
        try:
            async with asyncio.TaskGroup() as group:  # one failure cancels the rest (their connections close)
                tasks = [group.create_task(self._request("POST", "/v1/completions", body)) for body in bodies]
        except ExceptionGroup as failed:
            raise failed.exceptions[0] from None
        timings.denoise_ms = (time.perf_counter() - t1) * 1e3
        stops = {t for t in (self.facts.end_id, self.facts.pad_id) if t is not None}
        candidates: list[Candidate] = []
        for task in tasks:
            try:
                response = msgspec.convert(task.result(), CompletionResponse)
            except msgspec.ValidationError as exc:
                raise EngineUnavailable(f"{self._where_text()} answered in an unexpected shape: {exc}") from None
            candidates.extend(_candidate(choice, stops) for choice in response.choices)
            if response.infill_lsp_timings is not None:  # what the engine's own prompt held
                timings.prompt_tokens = response.infill_lsp_timings.prompt_tokens
                timings.context_tokens = response.infill_lsp_timings.context_tokens
                timings.context_chunks = response.infill_lsp_timings.context_chunks
        return InfillResult(candidates=candidates, timings=timings)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        client = getattr(self, "_client", None)
        if client is not None:
            try:
                asyncio.run_coroutine_threadsafe(client.aclose(), self._loop).result(5)
            except Exception:  # noqa: BLE001 - closing: nothing left to report to
                pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._loop.is_running():
            self._loop.close()


def build_requests(facts: ServerFacts, request: InfillRequest, prefix_ids: list[int], suffix_ids: list[int],
                   rng: random.Random, prefix_tokens: int = 1024, suffix_head_tokens: int = 16,
                   context_ids: list[int] | tuple[int, ...] = (), own_request: OwnRequest | None = None) -> list[dict]:
    """The /v1/completions bodies for one infill (pure: tested against vLLM's own request model).
    `context_ids`: repository context, laid out already, between BOS and the prefix window;
    `own_request`: what our own engine builds its prompt from instead (sent in `vllm_xargs`)."""
    budget = request.budget
    head = max(1, min(suffix_head_tokens, facts.canvas_limit // 2))
    # At least 2: vLLM's own one-canvas reads use max_tokens=2
    # (DiffusionGemmaCanvasStrategy._sampling_params, vllm/entrypoints/openai/decisions/strategies.py); with 1, the
    # scheduler may decide the step samples the last token and skip the canvas (Scheduler._drafts_unused).
    max_middle = max(2, min(budget.max_middle_tokens, facts.canvas_limit - head))
    lengths = middle_lengths(budget.candidates, max_middle)
    suffix_ids = suffix_ids[:head]
    stops = [t for t in dict.fromkeys((facts.end_id, facts.pad_id)) if t is not None]
    if facts.end_id is not None:  # every row as wide as the widest: [m free | suffix head, end, padding]
        width = max(lengths) + head
        tail = suffix_ids + [facts.end_id]
        tail += [facts.pad_id if facts.pad_id is not None else facts.end_id] * (width - len(tail))
    else:  # no end marker to pad with: each row is [m free | suffix head]
        width = max(lengths) + len(suffix_ids)
        tail = suffix_ids

    room = max(1, facts.max_model_len - width - len(facts.bos) - 1)
    context_ids = list(context_ids) if len(context_ids) <= room // 2 else []  # whole chunks, or none
    limit = min(prefix_tokens, max(1, room - len(context_ids)))
    if facts.own and context_ids:  # our engine decodes the prompt and windows it at its prefix_tokens again:
        limit = min(limit, max(1, prefix_tokens - len(context_ids) - 16))  # stay under it, context kept whole
    ids = prefix_ids
    if len(ids) > limit:
        start = -(-(len(ids) - limit) // WINDOW_STEP) * WINDOW_STEP
        ids = ids[start:] if start < len(ids) else ids[-limit:]
    prompt = facts.bos + context_ids + ids or [stops[0] if stops else 0]

    # The resident engine runs the whole ladder as one batch itself; vLLM runs n rows of one width each.
    groups = [(max(lengths), len(lengths))] if facts.own else sorted(Counter(lengths).items(), reverse=True)
    bodies = []
    for m, n in groups:
        noise = [rng.randrange(facts.vocab_size) for _ in range(m)]
        row_width = width if facts.end_id is not None else m + len(tail)
        xargs: dict = {CANVAS_LENGTH: row_width, MAX_STEPS: max(1, budget.steps), READ_ONLY: 1}
        if own_request is not None:
            xargs[OWN_REQUEST] = msgspec.to_builtins(own_request)
        if row_width > m:
            xargs[SEED_CANVAS] = seed_row(m, row_width, tail, noise)
            xargs[PINNED] = list(range(m, row_width))
        body = {
            "model": facts.model,
            "prompt": prompt,
            "n": n,
            "max_tokens": m,
            "temperature": 1.0,
            "logprobs": 0,
            "return_token_ids": True,
            "stop_token_ids": stops,
            "vllm_xargs": xargs,
        }
        if facts.own and request.seed is not None:
            body["seed"] = request.seed  # the resident engine's extension; vLLM rejects seed for diffusion models
        bodies.append(body)
    return bodies


async def _nothing() -> list[int]:
    return []


async def _nothing_kept() -> tuple[list[int], int]:
    return [], 0


def _count(value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _error_message(data) -> str:
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):
            return str(error.get("message", ""))
        if error is not None:
            return str(error)
        if "detail" in data:
            return str(data["detail"])
    return ""


def _candidate(choice, stops: set[int]) -> Candidate:
    logprobs = [lp for lp in (choice.logprobs.token_logprobs if choice.logprobs else []) if lp is not None]
    if choice.token_ids is not None:
        ids = choice.token_ids
        cut = next((i for i, t in enumerate(ids) if t in stops), len(ids))
    else:
        cut = len(logprobs) - (1 if choice.finish_reason == "stop" else 0)
    scored = logprobs[: cut + 1]
    score = sum(scored) / len(scored) if scored else -100.0
    return Candidate(text=choice.text, score=float(score), tokens=max(0, cut))
