"""`infill-lsp bench --engine ADDRESS --clients 1,2,4,8`: N simulated editors typing against one engine.

Each simulated editor is what one developer's `infill-lsp serve` sends: its own `HttpEngine`
(its own connections) and the full completion pipeline (context window, the engine, clean,
tree-sitter validation, rank). It types into a fixture file: starting at one of the holes in
fixtures/holes.json, it re-types the text that follows the cursor one character at a time (the
code after the typed region stays as the suffix), wrapping around when done. Every keystroke
sends a completion request for the document as it now is and cancels that editor's previous
request if it is still in flight, as an editor does (the LSP server cancels the engine work of a
stale request). Keystrokes come every `--keystroke-ms` on average (uniformly 0.4x to 1.6x of
it); after one keystroke in eight the developer pauses 0.5 to 1.5 s, reading the suggestion.

Per N, for `--seconds`: requests completed (answered before the next keystroke), cancelled (a
newer keystroke came first), errors (anything but a cancellation), p50/p95 latency of completed
requests (keystroke to ranked answer, what the editor waits), throughput (completed per second)
and the completed count of the worst-served editor (a starved client shows up there). Requests
still in flight when the time is up are cancelled and counted nowhere.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from . import pipeline
from .bench import default_holes, load_holes, percentile
from .config import Settings
from .engine import Cancelled, CancelToken
from .types import Budget

TYPED_CHARS = 160  # characters each editor re-types before wrapping around
PAUSE_EVERY = 8  # one keystroke in this many is followed by a pause
PAUSE_S = (0.5, 1.5)


@dataclass
class ClientStats:
    sent: int = 0
    completed: int = 0
    cancelled: int = 0
    abandoned: int = 0  # in flight when the time ran out
    errors: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)


class Typist:
    """One editor's document: a fixture file being re-typed at a hole."""

    def __init__(self, text: str, offset: int, language: str, path: str):
        self.language, self.path = language, path
        end = min(len(text), offset + TYPED_CHARS)
        if end - offset < 8:  # a hole at the very end of a file: type its last lines again
            offset = max(0, len(text) - TYPED_CHARS)
            end = len(text)
        self.head, self.body, self.tail = text[:offset], text[offset:end], text[end:]
        self.typed = 0

    def keystroke(self) -> tuple[str, int]:
        """Type one more character: (document, cursor offset)."""
        self.typed = self.typed % len(self.body) + 1
        typed = self.body[: self.typed]
        return self.head + typed + self.tail, len(self.head) + len(typed)


async def run_editor(index: int, engine, typist: Typist, stats: ClientStats, deadline: float, pool: ThreadPoolExecutor,
                     settings: Settings, budget: Budget, keystroke_ms: float) -> None:
    loop = asyncio.get_running_loop()
    rng = random.Random(index)
    pending: set[asyncio.Future] = set()
    current: tuple[asyncio.Future, CancelToken] | None = None

    def one(text: str, offset: int, token: CancelToken, sent_at: float):
        pipeline.complete(engine, text, offset, language_id=typist.language, path=typist.path, settings=settings,
                          budget=budget, cancel=token)
        return (time.perf_counter() - sent_at) * 1e3

    def record(future: asyncio.Future, token: CancelToken) -> None:
        failure = future.exception()
        if token.cancelled:  # counted when it was cancelled, whatever it then did
            return
        if isinstance(failure, Cancelled):
            stats.cancelled += 1  # cancelled elsewhere: should not happen, but count it honestly
        elif failure is not None:
            stats.errors.append(f"{type(failure).__name__}: {failure}")
        else:
            stats.completed += 1
            stats.latencies_ms.append(future.result())

    while loop.time() < deadline:
        text, offset = typist.keystroke()
        if current is not None and not current[0].done():
            stats.cancelled += 1
            current[1].cancel()
        token = CancelToken()
        future = loop.run_in_executor(pool, one, text, offset, token, time.perf_counter())
        future.add_done_callback(lambda f, t=token: record(f, t))
        stats.sent += 1
        pending.add(future)
        future.add_done_callback(pending.discard)
        current = (future, token)
        gap = keystroke_ms / 1e3 * rng.uniform(0.4, 1.6)
        if rng.randrange(PAUSE_EVERY) == 0:
            gap += rng.uniform(*PAUSE_S)
        await asyncio.sleep(min(gap, max(0.0, deadline - loop.time())))
    if current is not None and not current[0].done():
        stats.abandoned += 1
        current[1].cancel()
    if pending:
        await asyncio.wait(pending)


def _connect(address: str, count: int) -> list:
    from .engine.http_backend import HttpEngine

    engines: list = [None] * count

    def connect(i: int) -> None:
        engines[i] = HttpEngine(address)

    threads = [threading.Thread(target=connect, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if any(engine is None for engine in engines):  # a connect failed: say why, once
        for engine in engines:
            if engine is not None:
                engine.close()
        HttpEngine(address).close()
        raise RuntimeError(f"could not connect {count} clients to {address}")
    return engines


def load_round(address: str, clients: int, seconds: float, holes, settings: Settings, budget: Budget,
               keystroke_ms: float) -> dict:
    engines = _connect(address, clients)
    try:
        typists = [Typist(*holes[i % len(holes)]) for i in range(clients)]
        stats = [ClientStats() for _ in range(clients)]
        with ThreadPoolExecutor(max_workers=2 * clients + 2, thread_name_prefix="editor") as pool:
            # warm-up: one request per client, not counted (connections, the suffix cache)
            for engine, typist in zip(engines, typists):
                text, offset = typist.keystroke()
                pipeline.complete(engine, text, offset, language_id=typist.language, path=typist.path,
                                  settings=settings, budget=budget)

            async def main() -> float:
                loop = asyncio.get_running_loop()
                start = loop.time()
                await asyncio.gather(*(run_editor(i, engines[i], typists[i], stats[i], start + seconds, pool,
                                                  settings, budget, keystroke_ms) for i in range(clients)))
                return loop.time() - start

            elapsed = asyncio.run(main())
    finally:
        for engine in engines:
            engine.close()
    latencies = [ms for s in stats for ms in s.latencies_ms]
    completed = sum(s.completed for s in stats)
    errors = [e for s in stats for e in s.errors]
    return {
        "clients": clients,
        "seconds": round(elapsed, 2),
        "sent": sum(s.sent for s in stats),
        "completed": completed,
        "cancelled": sum(s.cancelled for s in stats),
        "abandoned": sum(s.abandoned for s in stats),
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:5],
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "mean_ms": statistics.mean(latencies) if latencies else float("nan"),
        "throughput": completed / seconds,
        "worst_client_completed": min(s.completed for s in stats),
        "per_client_completed": [s.completed for s in stats],
    }


def print_load_table(rows: list[dict]) -> None:
    print("| N | sent | completed | cancelled | errors | p50 ms | p95 ms | req/s | worst client |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['clients']} | {row['sent']} | {row['completed']} | {row['cancelled']} | {row['errors']} | "
              f"{row['p50_ms']:.0f} | {row['p95_ms']:.0f} | {row['throughput']:.1f} | "
              f"{row['worst_client_completed']} |")


def engine_counters(address: str) -> dict[str, int]:
    """The resident engine's /metrics counters (empty for a server without them, e.g. vLLM)."""
    import os

    import httpx

    from .engine.http_backend import API_KEY_ENV, parse_address

    base, socket_path = parse_address(address)
    key = os.environ.get(API_KEY_ENV, "")
    try:
        with httpx.Client(base_url=base, transport=httpx.HTTPTransport(uds=socket_path), timeout=5,
                          headers={"Authorization": f"Bearer {key}"} if key else {}) as client:
            response = client.get("/metrics")
    except httpx.HTTPError:
        return {}
    counters = {}
    for line in response.text.splitlines() if response.status_code == 200 else []:
        name, _, value = line.partition(" ")
        if name.startswith("infill_") and value.strip().isdigit():
            counters[name.removeprefix("infill_")] = int(value)
    return counters


def run_load(args, settings: Settings) -> int:
    if not settings.engine_address:
        raise SystemExit("bench --clients needs --engine ADDRESS: a running `infill-lsp engine` (its socket or "
                         "--http URL) or a vLLM server")
    counts = [int(c) for c in str(args.clients).split(",") if c.strip()]
    if not counts or min(counts) < 1:
        raise SystemExit(f"--clients wants counts of at least 1, e.g. 1,2,4,8; got {args.clients!r}")
    holes = load_holes(Path(args.holes) if args.holes else default_holes())
    budget = Budget(candidates=settings.candidates, max_middle_tokens=args.max_tokens, steps=args.steps)
    print(f"load: N editors typing against {settings.engine_address} for {args.seconds:g} s per N "
          f"(a keystroke every ~{args.keystroke_ms:g} ms, a {PAUSE_S[0]:g}-{PAUSE_S[1]:g} s pause after one in "
          f"{PAUSE_EVERY}; each keystroke cancels the editor's request in flight); {budget.candidates} candidates, "
          f"max {args.max_tokens} tokens, {args.steps} steps")
    before = engine_counters(settings.engine_address)
    rows = []
    for clients in counts:
        rows.append(load_round(settings.engine_address, clients, args.seconds, holes, settings, budget,
                               args.keystroke_ms))
        time.sleep(0.5)  # let the engine finish what the last round cancelled
    print_load_table(rows)
    for row in rows:
        if row["errors"]:
            print(f"N={row['clients']}: {row['errors']} errors, e.g. {'; '.join(row['error_samples'])}")
    base = next((r for r in rows if r["clients"] == 1), None)
    if base and base["p95_ms"] > 0:
        for row in rows:
            if row["clients"] > 1:
                print(f"p95 at N={row['clients']}: {row['p95_ms'] / base['p95_ms']:.1f}x p95 at N=1")
    after = engine_counters(settings.engine_address)
    if after:
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        print("engine: " + ", ".join(f"{k} {delta.get(k, 0)}" for k in
                                     ("requests", "engine_started", "engine_completed", "engine_cancelled",
                                      "engine_dropped", "disconnected")))
    if args.json:
        Path(args.json).write_text(json.dumps({"engine": settings.engine_address, "rows": rows}, indent=2))
    return 0 if all(r["errors"] == 0 for r in rows) else 1
