"""`infill-lsp bench --storm SECONDS --rate R`: a simulated typist against one `infill-lsp serve`.

The server runs exactly as an editor starts it (a subprocess over stdio). The typist works in a
workspace of generated source files (Python, JavaScript, TypeScript, Go, Rust) and, at R requests
a second on average (Poisson arrivals), edits the active document and asks for inline completions
the way VS Code does: each keystroke is a `didChange` then an automatic request, an explicit
invocation now and then, `$/cancelRequest` for the request it no longer wants, and an accepted
suggestion (its edit, `infill.accept`, `infill/didShowCompletion`) when one arrives in time. It
opens and closes documents across the workspace (the editor switching tabs).

Measured: every request's answer (a result, or the RequestCancelled error) and its latency; the
idle latency before the storm (one request at a time, an edit before each) against the latency
in the storm's last 10 seconds; the server's resident memory (VmRSS) before, during and after;
and, after every document is closed, that the server holds no document or cached suggestion.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .bench import _plain, editor_client, percentile

TEMPLATES = {
    "python": ("py", "def {name}(values, scale={i}):\n    total = 0\n    for value in values:\n"
                     "        total += value * scale\n    return total\n\n\nclass Item{i}:\n"
                     "    def __init__(self, name):\n        self.name = name\n"),
    "javascript": ("js", "function {name}(values, scale = {i}) {{\n  let total = 0;\n"
                         "  for (const value of values) {{\n    total += value * scale;\n  }}\n"
                         "  return total;\n}}\n\nmodule.exports = {{ {name} }};\n"),
    "typescript": ("ts", "export function {name}(values: number[], scale = {i}): number {{\n"
                         "  let total = 0;\n  for (const value of values) {{\n    total += value * scale;\n"
                         "  }}\n  return total;\n}}\n"),
    "go": ("go", "package main\n\nfunc {name}(values []int, scale int) int {{\n\ttotal := {i}\n"
                 "\tfor _, value := range values {{\n\t\ttotal += value * scale\n\t}}\n\treturn total\n}}\n"),
    "rust": ("rs", "pub fn {name}(values: &[i64], scale: i64) -> i64 {{\n    let mut total = {i};\n"
                   "    for value in values {{\n        total += value * scale;\n    }}\n    total\n}}\n"),
}
KEYS = "abcdefghijklmnopqrstuvwxyz_ ()[]{}:.,=+-*/0123456789'\"\n\t" + "e" * 8 + " " * 8
IDLE_REQUESTS = 30
EXIT_WAIT_S = 10  # a server that has not ended this long after `exit` counts as hung
PAUSE_CHANCE = 1 / 200  # per keystroke: at 50/s, a pause every 4 s of typing
PAUSE_S = (0.6, 1.2)


@dataclass
class Document:
    uri: str
    language: str
    lines: list[str]
    version: int = 1
    line: int = 0
    col: int = 0  # UTF-16 units; the typist only types ASCII

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@dataclass
class Sent:
    at: float  # seconds since the storm began
    kind: str = ""  # items | empty | cancelled | error | unanswered
    latency_ms: float = 0.0
    items: int = 0
    settled: bool = False  # the last request before the typist paused: nothing superseded it


@dataclass
class StormReport:
    seconds: float
    rate: float
    files: int
    requests: list[Sent] = field(default_factory=list)
    idle_ms: list[float] = field(default_factory=list)
    idle_items: int = 0  # idle requests answered with suggestions
    pauses: int = 0
    rss_mb: list[tuple[float, float]] = field(default_factory=list)  # (time, MB) through the storm
    rss_before_mb: float = 0.0
    rss_after_mb: float = 0.0
    rss_closed_mb: float = 0.0
    opens: int = 0
    closes: int = 0
    accepts: int = 0
    invoked: int = 0
    client_cancels: int = 0
    server_alive: bool = True
    open_after_close: int = -1
    cached_after_close: int = -1
    model: str = ""

    def table(self) -> dict:
        answered = [r for r in self.requests if r.kind in ("items", "empty", "cancelled")]
        last = [r.latency_ms for r in answered if r.at >= self.seconds - 10]
        idle_p95 = percentile(self.idle_ms, 95)
        return {
            "requests": len(self.requests),
            "answered": len(answered),
            "with_items": sum(r.kind == "items" for r in self.requests),
            "empty": sum(r.kind == "empty" for r in self.requests),
            "cancelled": sum(r.kind == "cancelled" for r in self.requests),
            "errors": sum(r.kind == "error" for r in self.requests),
            "unanswered": sum(r.kind == "unanswered" for r in self.requests),
            "idle_p50": percentile(self.idle_ms, 50), "idle_p95": idle_p95,
            "storm_p50": percentile([r.latency_ms for r in answered], 50),
            "storm_p95": percentile([r.latency_ms for r in answered], 95),
            "last10_p95": percentile(last, 95),
            "settled_n": len(settled := [r.latency_ms for r in answered if r.settled]),
            "settled_items": sum(r.kind == "items" for r in self.requests if r.settled),
            "settled_p50": percentile(settled, 50), "settled_p95": percentile(settled, 95),
            "achieved_rate": len(self.requests) / self.seconds,
            "rss_before": self.rss_before_mb, "rss_peak": max((m for _, m in self.rss_mb), default=0.0),
            "rss_after": self.rss_after_mb, "rss_closed": self.rss_closed_mb,
            "rss_growth": self.rss_growth(),
        }

    def rss_growth(self) -> float:
        """Median RSS of the storm's last 10 s minus that of its first 10 s: a leak shows, the
        allocator's swings from one request to the next (tens of MB either way) do not."""
        first = [m for t, m in self.rss_mb if t < 10]
        last = [m for t, m in self.rss_mb if t >= self.seconds - 10]
        if not first or not last:
            return self.rss_after_mb - self.rss_before_mb
        return statistics.median(last) - statistics.median(first)

    def failures(self) -> list[str]:
        t = self.table()
        out = []
        if not self.server_alive:
            out.append("the server died")
        if t["unanswered"] or t["errors"]:
            out.append(f"{t['unanswered']} requests unanswered, {t['errors']} answered with an error")
        if t["last10_p95"] > 2 * t["idle_p95"]:
            out.append(f"p95 of the last 10 s {t['last10_p95']:.0f} ms > 2 x idle p95 {t['idle_p95']:.0f} ms")
        if t["settled_n"] and t["settled_p95"] > 2 * t["idle_p95"]:
            out.append(f"p95 after a pause {t['settled_p95']:.0f} ms > 2 x idle p95 {t['idle_p95']:.0f} ms")
        if t["rss_growth"] >= 50:
            out.append(f"RSS grew {t['rss_growth']:.0f} MB (limit 50)")
        if self.open_after_close or self.cached_after_close:
            out.append(f"after closing every document the server still holds {self.open_after_close} "
                       f"documents and {self.cached_after_close} cached suggestions")
        return out


def make_workspace(root: Path, count: int, rng: random.Random) -> list[tuple[Path, str]]:
    files = []
    languages = sorted(TEMPLATES)
    for i in range(count):
        language = languages[i % len(languages)]
        ext, template = TEMPLATES[language]
        body = "".join(template.format(name=f"compute_{i}_{j}", i=i + j) for j in range(rng.randint(1, 6)))
        path = root / f"pkg{i % 10}" / f"module_{i}.{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
        files.append((path, language))
    return files


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class Typist:
    """One editor's worth of traffic, driven through a pygls client."""

    def __init__(self, client, files, rng: random.Random, report: StormReport):
        from lsprotocol import types

        self.t = types
        self.client, self.files, self.rng, self.report = client, files, rng, report
        self.open: dict[str, Document] = {}
        self.active: Document | None = None
        self.pending: dict[str, asyncio.Future] = {}
        self.futures: list[asyncio.Future] = []  # every inline request, to wait for the last answers
        self.ids = iter(range(10**9))

    # -- documents ----------------------------------------------------------------------------
    def open_document(self, path: Path, language: str) -> Document:
        t = self.t
        doc = Document(path.as_uri(), language, path.read_text().split("\n"))
        self.client.text_document_did_open(t.DidOpenTextDocumentParams(
            t.TextDocumentItem(uri=doc.uri, language_id=language, version=1, text=doc.text)))
        self.open[doc.uri] = doc
        self.report.opens += 1
        doc.line = self.rng.randrange(len(doc.lines))
        doc.col = len(doc.lines[doc.line])
        return doc

    def close_document(self, doc: Document) -> None:
        self.client.text_document_did_close(self.t.DidCloseTextDocumentParams(self.t.TextDocumentIdentifier(doc.uri)))
        del self.open[doc.uri]
        self.report.closes += 1

    def edit(self, doc: Document, line: int, start: int, end: int, text: str) -> None:
        """Replace columns [start, end) of `line` by `text` (which may hold newlines)."""
        t = self.t
        doc.version += 1
        self.client.text_document_did_change(t.DidChangeTextDocumentParams(
            text_document=t.VersionedTextDocumentIdentifier(uri=doc.uri, version=doc.version),
            content_changes=[t.TextDocumentContentChangePartial(
                range=t.Range(t.Position(line, start), t.Position(line, end)), text=text)]))
        current = doc.lines[line]
        new = (current[:start] + text + current[end:]).split("\n")
        doc.lines[line:line + 1] = new
        doc.line = line + len(new) - 1
        doc.col = len(new[-1]) - len(current[end:])

    def keystroke(self, doc: Document) -> None:
        key = self.rng.choice(KEYS)
        if self.rng.random() < 0.08 and doc.col > 0:  # backspace
            self.edit(doc, doc.line, doc.col - 1, doc.col, "")
        else:
            self.edit(doc, doc.line, doc.col, doc.col, key)

    # -- one step of the storm ----------------------------------------------------------------
    def step(self, now: float) -> None:
        rng = self.rng
        roll = rng.random()
        if self.active is None or roll < 0.04:  # switch tabs: open another file (or go back to one)
            candidates = [f for f in self.files if f[0].as_uri() not in self.open]
            if candidates and (rng.random() < 0.7 or not self.open):
                self.active = self.open_document(*rng.choice(candidates))
            else:
                self.active = rng.choice(list(self.open.values()))
        elif roll < 0.08 and len(self.open) > 1:  # close a background tab
            doc = rng.choice([d for d in self.open.values() if d is not self.active])
            self.close_document(doc)
        self.keystroke(self.active)
        self.request(self.active, now, invoked=rng.random() < 0.05)

    def request(self, doc: Document, now: float, invoked: bool) -> None:
        t = self.t
        # VS Code cancels the request it no longer wants; sometimes the cancel races the answer.
        for msg_id, future in self.pending.items():
            if not future.done() and self.rng.random() < 0.6:
                self.client.protocol.notify(t.CANCEL_REQUEST, t.CancelParams(id=msg_id))
                self.report.client_cancels += 1
        self.pending = {}  # each is cancelled once, or left to the server, which supersedes it
        msg_id = f"storm-{next(self.ids)}"
        kind = t.InlineCompletionTriggerKind.Invoked if invoked else t.InlineCompletionTriggerKind.Automatic
        params = t.InlineCompletionParams(text_document=t.TextDocumentIdentifier(doc.uri),
                                          position=t.Position(doc.line, doc.col),
                                          context=t.InlineCompletionContext(trigger_kind=kind))
        sent = Sent(at=now)
        self.report.requests.append(sent)
        self.report.invoked += invoked
        future = self.client.protocol.send_request_async(t.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id=msg_id)
        self.pending[msg_id] = future
        self.futures.append(future)
        started, version = time.perf_counter(), doc.version
        future.add_done_callback(lambda f: self.answered(f, sent, started, doc, version))

    def answered(self, future: asyncio.Future, sent: Sent, started: float, doc: Document, version: int) -> None:
        from pygls.exceptions import JsonRpcRequestCancelled

        sent.latency_ms = (time.perf_counter() - started) * 1e3
        if future.cancelled():
            sent.kind = "unanswered"
            return
        error = future.exception()
        if isinstance(error, JsonRpcRequestCancelled):
            sent.kind = "cancelled"
            return
        if error is not None:
            sent.kind = "error"
            return
        items = future.result().items
        sent.kind, sent.items = ("items" if items else "empty"), len(items)
        # The suggestion is still current (nothing typed since): the editor shows it; sometimes Tab.
        if items and doc.version == version and doc.uri in self.open and items[0].insert_text.isascii():
            item = items[0]
            item_id = item.command.arguments[0]["id"] if item.command and item.command.arguments else None
            if item_id:
                self.client.protocol.notify("infill/didShowCompletion", {"id": item_id})
            if self.rng.random() < 0.3:
                line, start, end = item.range.start.line, item.range.start.character, item.range.end.character
                if line == doc.line and end == len(doc.lines[line]):
                    self.edit(doc, line, start, end, item.insert_text)
                    if item_id:
                        self.client.protocol.send_request_async(
                            self.t.WORKSPACE_EXECUTE_COMMAND,
                            self.t.ExecuteCommandParams(command="infill.accept", arguments=[{"id": item_id}]))
                    self.report.accepts += 1


async def run_storm(seconds: float, rate: float, files: int, seed: int, command: list[str],
                    options: dict, on_progress=None, idle_requests: int = IDLE_REQUESTS) -> StormReport:
    from lsprotocol import types

    rng = random.Random(seed)
    report = StormReport(seconds=seconds, rate=rate, files=files)
    # Typing bursts go faster than `rate` so that, pauses included, requests average `rate` a second.
    gap = 1 / rate - PAUSE_CHANCE * sum(PAUSE_S) / 2
    if gap <= 0:
        raise ValueError(f"--rate {rate:g} is too low for the typist's pauses")
    burst_rate = 1 / gap
    with tempfile.TemporaryDirectory() as tmp:
        workspace = make_workspace(Path(tmp), files, rng)
        client = editor_client("infill-storm")
        await client.start_io(*command)
        server = client._server
        try:
            await client.initialize_async(types.InitializeParams(
                capabilities=types.ClientCapabilities(), root_uri=Path(tmp).as_uri(),
                initialization_options=options))
            client.initialized(types.InitializedParams())
            stats = {}
            for _ in range(6000):  # the model loads
                stats = _plain(await client.protocol.send_request_async("infill/stats", {}))
                if stats["engineReady"] or stats["engineError"]:
                    break
                await asyncio.sleep(0.1)
            if not stats.get("engineReady"):
                raise RuntimeError(f"the server could not load the engine: {stats.get('engineError')}")
            report.model = stats.get("model") or ""
            typist = Typist(client, workspace, rng, report)

            # Idle: the same typist (document switches, invoked requests), one request at a time.
            for i in range(idle_requests + 1):
                typist.step(0.0)
                future = typist.futures[-1]
                started = time.perf_counter()
                result = await future
                if i:  # the first warms caches
                    report.idle_ms.append((time.perf_counter() - started) * 1e3)
                    report.idle_items += bool(result.items)
            report.requests.clear()
            typist.futures.clear()
            report.invoked = report.accepts = 0
            report.rss_before_mb = rss_mb(server.pid)

            # The storm.
            begin = time.perf_counter()
            next_at, next_sample = 0.0, 0.0
            while (now := time.perf_counter() - begin) < seconds:
                if now >= next_sample:
                    report.rss_mb.append((now, rss_mb(server.pid)))
                    next_sample += 1.0
                    if on_progress:
                        on_progress(now, report)
                if now >= next_at:
                    typist.step(now)
                    next_at += rng.expovariate(burst_rate)
                    if rng.random() < PAUSE_CHANCE:  # the typist stops to read: that answer must come whole
                        report.requests[-1].settled = True
                        report.pauses += 1
                        next_at += rng.uniform(*PAUSE_S)
                    continue
                await asyncio.sleep(min(next_at, next_sample) - now)
            pending = [f for f in typist.futures if not f.done()]
            if pending:
                await asyncio.wait(pending, timeout=30)
            for sent in report.requests:
                if not sent.kind:
                    sent.kind = "unanswered"
            report.rss_after_mb = rss_mb(server.pid)

            # Close everything: the server must let go of every document and cached suggestion.
            for doc in list(typist.open.values()):
                typist.close_document(doc)
            stats = _plain(await client.protocol.send_request_async("infill/stats", {}))
            report.open_after_close = stats.get("openDocuments", -1)
            report.cached_after_close = stats.get("cachedSuggestions", -1)
            report.rss_closed_mb = rss_mb(server.pid)
            await asyncio.wait_for(client.shutdown_async(None), 30)
            client.exit(None)
        finally:
            try:  # after `exit` it ends by itself (EXIT_GRACE_S for a running step, then teardown)
                await asyncio.wait_for(server.wait(), EXIT_WAIT_S)
            except asyncio.TimeoutError:
                server.kill()
            report.server_alive = server.returncode == 0
            await client.stop()
    return report


def print_report(report: StormReport) -> None:
    t = report.table()
    print(f"\nstorm: {report.seconds:.0f} s at {report.rate:g} requests/s (Poisson), {report.files} files; "
          f"model {report.model or '?'}")
    print(f"typist: {t['requests']} requests ({report.invoked} invoked; {t['achieved_rate']:.1f}/s with "
          f"{report.pauses} pauses of {PAUSE_S[0]:g}-{PAUSE_S[1]:g} s), {report.client_cancels} $/cancelRequest, "
          f"{report.opens} opens, {report.closes} closes, {report.accepts} accepted suggestions")
    print("| measure | value | target |")
    print("|---|---|---|")
    print(f"| requests answered (result or RequestCancelled) | {t['answered']} / {t['requests']} | all |")
    print(f"| ... with suggestions / empty / cancelled | {t['with_items']} / {t['empty']} / {t['cancelled']} | |")
    print(f"| unanswered, error answers, server deaths | {t['unanswered']}, {t['errors']}, "
          f"{0 if report.server_alive else 1} | 0 |")
    print(f"| latency idle p50 / p95 (the same typist, one request at a time) | {t['idle_p50']:.0f} / {t['idle_p95']:.0f} ms | |")
    print(f"| idle requests answered with suggestions | {report.idle_items} / {len(report.idle_ms)} | |")
    print(f"| latency in the storm p50 / p95 (all answers; most are superseded by the next keystroke) | "
          f"{t['storm_p50']:.0f} / {t['storm_p95']:.0f} ms | |")
    print(f"| latency of the last request before each pause p50 / p95 (n={t['settled_n']}, "
          f"{t['settled_items']} with suggestions) | {t['settled_p50']:.0f} / {t['settled_p95']:.0f} ms | "
          f"<= 2 x idle p95 |")
    print(f"| latency p95, last 10 s of the storm | {t['last10_p95']:.0f} ms | <= 2 x idle p95 "
          f"({2 * t['idle_p95']:.0f} ms) |")
    print(f"| server RSS before / peak / after the storm | {t['rss_before']:.0f} / {t['rss_peak']:.0f} / "
          f"{t['rss_after']:.0f} MB | |")
    print(f"| RSS growth (median of the last 10 s minus median of the first 10 s) | {t['rss_growth']:+.1f} MB | "
          f"< 50 MB |")
    print(f"| RSS after closing every document | {t['rss_closed']:.0f} MB | |")
    print(f"| after closing every document: documents / cached suggestions held | "
          f"{report.open_after_close} / {report.cached_after_close} | 0 / 0 |")
    failures = report.failures()
    print("result: " + ("all targets met" if not failures else "FAILED: " + "; ".join(failures)))


def storm_main(args, settings) -> int:
    import json

    command = [sys.executable, "-m", "infill_lsp", "--log-level", "ERROR", "serve"]
    if settings.engine_address:
        command += ["--engine", settings.engine_address]
    elif settings.model:
        command += ["--model", settings.model, "--device", settings.device, "--dtype", settings.dtype]
    options = {"seed": args.seed}

    def progress(now: float, report: StormReport) -> None:
        if getattr(args, "verbose", False):
            print(f"  {now:5.1f} s: {len(report.requests)} requests", file=sys.stderr)

    report = asyncio.run(run_storm(args.storm, args.rate, args.files, args.seed, command, options, progress))
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps({**report.table(), "failures": report.failures(),
                                               "rss_samples": report.rss_mb}, indent=2))
    return 1 if report.failures() else 0
