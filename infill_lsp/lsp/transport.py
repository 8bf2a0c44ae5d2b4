"""Base-protocol framing that survives anything a client can put on the wire.

pygls' own loop (`pygls.io_.run_async`) trusts the `Content-Length` header: a frame that claims
99999999999999 bytes makes it allocate that much and the process dies with MemoryError; a header
that ends in LF only, a missing blank line or a short body leave it out of step with the stream
for good. `FrameReader` replaces that loop's reading half and hands complete bodies to the
protocol (`InfillProtocol.receive`), which does the JSON-RPC part with pygls' own machinery.

Rules (also in docs/reliability.md):
- A frame is header lines, a blank line, then exactly `Content-Length` bytes. Header lines may end
  in CRLF or LF alone; header names are case-insensitive; headers other than Content-Length
  (Content-Type) are ignored.
- `Content-Length` above `MAX_CONTENT_LENGTH` (64 MiB), missing, negative, non-numeric or given
  twice with different values: the frame is rejected with one logged error, its body is skipped
  without being stored, and reading resumes at the next header.
- Bytes that are not a header where one is expected are skipped up to the next
  `Content-Length:` header (re-synchronisation), with one logged error per run of garbage.
- A body cut short by the next frame (its `Content-Length` was too large) is detected: a raw
  `Content-Length: N` + newline can never occur inside valid JSON, so when one shows up inside a
  body, or the stream stalls for `STALL_S` with one in the unread bytes, the short frame is
  rejected and reading resumes at that header. Nothing after it is lost.
- Memory stays bounded by `MAX_CONTENT_LENGTH` plus one read chunk, whatever arrives.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import re
import threading
from collections.abc import Awaitable, Callable
from typing import Any, BinaryIO

log = logging.getLogger(__name__)

MAX_CONTENT_LENGTH = 64 * 1024 * 1024  # bytes; larger frames are rejected, not read into memory
MAX_HEADER_LINE = 8 * 1024  # a "header line" longer than this is garbage
STALL_S = 2.0  # a body that stops arriving this long, with a header inside it, was cut short
CHUNK = 64 * 1024

_HEADER = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+)[ \t]*:[ \t]*([\x20-\x7e\t]*?)[ \t]*")
# A whole Content-Length header line: never inside valid JSON (raw newline, bare letters).
_HEADER_IN_BODY = re.compile(rb"(?i)content-length[ \t]*:[ \t]*[0-9]+[ \t]*\r?\n")
_CONTENT_LENGTH_START = re.compile(rb"(?i)content-length[ \t]*:")


def _prefixes(word: bytes, tail: bytes) -> bytes:
    """A regex for any non-empty prefix of `word` followed by an optional `tail`: c(?:o(?:n...)?)?"""
    out = tail
    for char in reversed(word[1:]):
        out = b"(?:" + re.escape(bytes([char])) + out + b")?"
    return re.escape(word[:1]) + out


# The start of a Content-Length header at the very end of a body: the next frame's header, cut by a
# Content-Length a few bytes too long. Valid JSON never ends in a letter "c".
_HEADER_START_AT_END = re.compile(b"(?i)" + _prefixes(b"content-length", rb"(?:[ \t]*(?::[ \t]*[0-9]*\r?)?)?") + b"$")


class FramingError:
    """A frame that was rejected; the reader has already moved on to the next header."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"FramingError({self.message!r})"


class FrameReader:
    """Frames from a byte source: `await next_frame()` gives a body (bytes), a FramingError, or
    None at the end of the stream. `read_chunk()` returns some bytes, b"" at EOF."""

    def __init__(self, read_chunk: Callable[[], Awaitable[bytes]], *, max_content_length: int = MAX_CONTENT_LENGTH,
                 stall_s: float = STALL_S) -> None:
        self._read_chunk = read_chunk
        self.max_content_length = max_content_length
        self.stall_s = stall_s
        self._buf = bytearray()
        self._pending: asyncio.Future | None = None
        self._eof = False

    async def _fill(self, timeout: float | None = None) -> bool:
        """Append the next chunk; False at EOF or when nothing came within `timeout` seconds.
        A read that timed out is kept and awaited again next time: no byte is ever dropped."""
        if self._eof:
            return False
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._read_chunk())
        try:
            chunk = await asyncio.wait_for(asyncio.shield(self._pending), timeout)
        except asyncio.TimeoutError:
            return False
        finally:
            if self._pending is not None and self._pending.done():
                self._pending = None
        if not chunk:
            self._eof = True
            return False
        self._buf += chunk
        return True

    async def _line(self) -> bytes | None:
        """The next line without its LF (a CR is the caller's to strip); None at EOF.
        A run of more than MAX_HEADER_LINE bytes without a newline comes back as the marker
        _LONG after being cut down to its tail, so garbage never piles up in memory."""
        start = 0
        while True:
            end = self._buf.find(b"\n", start)
            if end >= 0:
                line = bytes(self._buf[:end])
                del self._buf[:end + 1]
                return line
            if len(self._buf) > MAX_HEADER_LINE:
                return _LONG
            start = len(self._buf)
            if not await self._fill():
                return None

    def _drop_long_garbage(self) -> int:
        """Drop a newline-free run, keeping from a Content-Length header in it (or a tail that
        could be the start of one). Returns how many bytes were dropped."""
        starts = list(_CONTENT_LENGTH_START.finditer(self._buf))
        keep_from = starts[-1].start() if starts else max(0, len(self._buf) - 64)
        if keep_from == 0:  # the header itself is absurdly long: drop it
            keep_from = len(self._buf) - 64
        del self._buf[:keep_from]
        return keep_from

    async def next_frame(self) -> bytes | FramingError | None:
        garbage = 0  # bytes skipped while looking for a header
        headers: dict[str, bytes] = {}
        problem: str | None = None
        while True:
            line = await self._line()
            if line is None:
                if garbage or headers or self._buf:
                    log.error("stream ended inside a frame (%d bytes of it unread)", garbage + len(self._buf))
                return None
            if line is _LONG:
                garbage += self._drop_long_garbage()
                headers, problem = {}, None
                continue
            text = line[:-1] if line.endswith(b"\r") else line
            if not text:
                if headers:
                    break  # the blank line that ends a header block
                continue  # blank lines between frames: not a frame, but harmless
            match = _HEADER.fullmatch(text)
            if match is None or (not headers and match.group(1).lower() not in (b"content-length", b"content-type")):
                # Not a header where one belongs. Re-synchronise on the last Content-Length header
                # in this line (a body without a newline glued to the next frame's header).
                headers, problem = {}, None
                starts = [m.start() for m in _CONTENT_LENGTH_START.finditer(line, 1)]
                match = _HEADER.fullmatch(line[starts[-1]:].rstrip(b"\r")) if starts else None
                if match is None:
                    garbage += len(line) + 1
                    continue
                garbage += starts[-1]
            name, value = match.group(1).lower().decode("ascii"), match.group(2)
            if name == "content-length" and headers.get(name, value) != value:
                # A second, different Content-Length before the blank line: the first frame lost
                # its blank line. Drop it and start over at this header.
                headers, problem = {}, "a frame whose header block had no blank line"
            headers[name] = value

        if garbage:
            log.error("skipped %d bytes that were not a frame, up to the next Content-Length header", garbage)
        if problem:
            log.error("dropped %s", problem)
        raw = headers.get("content-length")
        if raw is None:
            return FramingError("a frame without a Content-Length header; its body is skipped")
        if not re.fullmatch(rb"[0-9]+", raw):
            shown = raw[:40].decode("ascii", "replace")
            return FramingError(f"a frame with an invalid Content-Length {shown!r}; its body is skipped")
        if len(raw) > 18 or int(raw) > self.max_content_length:
            return FramingError(f"a frame of {int(raw) if len(raw) <= 30 else 'over 10^30'} bytes, above the "
                                f"{self.max_content_length} byte limit; its body is skipped")
        return await self._body(int(raw))

    async def _body(self, length: int) -> bytes | FramingError | None:
        while len(self._buf) < length:
            if await self._fill(self.stall_s):
                continue
            # Stalled or ended: a frame whose Content-Length was too large, the next frame behind it?
            cut = _HEADER_IN_BODY.search(self._buf)
            if cut is None and self._eof:
                log.error("stream ended inside a frame body (%d of %d bytes)", len(self._buf), length)
                self._buf.clear()
                return None
            if cut is not None:
                del self._buf[:cut.start()]
                return FramingError(f"a frame cut short: Content-Length said {length} bytes, the next header "
                                    f"came after {cut.start()}")
        body = bytes(self._buf[:length])
        del self._buf[:length]
        cut = _HEADER_IN_BODY.search(body)
        at = cut.start() if cut is not None else await self._header_across_end(body)
        if at is not None:
            self._buf[:0] = body[at:]
            return FramingError(f"a frame cut short: Content-Length said {length} bytes, the next header "
                                f"came after {at}")
        return body

    async def _header_across_end(self, body: bytes) -> int | None:
        """Where the next frame's header starts when a body ends inside it ("...}Conte" with
        "nt-Length: 52" still to come), or None."""
        partial = _HEADER_START_AT_END.search(body, max(0, len(body) - 40))
        if partial is None:
            return None
        while len(self._buf) < 40 and await self._fill(self.stall_s):
            pass  # the rest of that header line
        joined = body[partial.start():] + bytes(self._buf[:64])
        return partial.start() if _HEADER_IN_BODY.match(joined) else None


_LONG: Any = object()


class StdinChunks:
    """Chunks from a binary stream, read on a daemon thread one request at a time (back-pressure:
    nothing is read ahead of the parser). os.read on the file descriptor, not the buffered
    object, so an exit while the thread is blocked never trips over the stream's lock."""

    def __init__(self, stream: BinaryIO) -> None:
        try:
            fd = stream.fileno()
            self._read = lambda: os.read(fd, CHUNK)
        except (AttributeError, OSError, ValueError):
            self._read = (lambda: stream.read1(CHUNK)) if hasattr(stream, "read1") else (lambda: stream.read(CHUNK))
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while True:
            loop, future = self._requests.get()
            try:
                data: Any = self._read()
            except (OSError, ValueError) as exc:  # closed or broken stdin: the end of the stream
                log.debug("stdin closed: %s", exc)
                data = b""
            try:
                loop.call_soon_threadsafe(_resolve, future, data)
            except RuntimeError:  # the loop is gone
                return
            if not data:
                return

    def __call__(self) -> Awaitable[bytes]:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="infill-stdin", daemon=True)
            self._thread.start()
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._requests.put((loop, future))
        return future


def _resolve(future: asyncio.Future, data: bytes) -> None:
    if not future.done():
        future.set_result(data)


async def serve(stop_event: threading.Event, reader: FrameReader, protocol) -> None:
    """pygls' main loop with a reader that cannot be derailed: frames in, `protocol.receive`."""
    while not stop_event.is_set():
        frame = await reader.next_frame()
        if frame is None:
            log.info("the client closed the connection")
            break
        if isinstance(frame, FramingError):
            log.error("rejected %s", frame)
            continue
        try:
            protocol.receive(frame)
        except (SystemExit, KeyboardInterrupt, BrokenPipeError):
            raise
        except Exception:  # a bug, not bad input: keep the traceback, keep serving
            log.exception("failed to handle a message")
