"""Progress on long work (train, eval, corpus, bench): a tqdm bar on a terminal, plain lines in logs.

On a terminal (the stream, stderr by default, is a tty) a tqdm bar shows count, rate and ETA, and
log records written to stderr meanwhile go above the bar instead of through it. When the stream
is not a terminal (CI, a log file, a pipe) a plain line with the same figures is written every
`every` seconds instead (default 30; $INFILL_PROGRESS_SECONDS sets it, 0 = every update), then
a closing line with the totals if any line was written, so logs stay readable and a short run
stays silent. Writing progress never fails the work it reports on: after a failed write (a full
disk, a closed terminal) there is no more progress output.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, TypeVar

T = TypeVar("T")
log = logging.getLogger("infill_lsp.progress")

EVERY_ENV = "INFILL_PROGRESS_SECONDS"
DEFAULT_EVERY = 30.0


def default_every() -> float:
    try:
        return max(0.0, float(os.environ.get(EVERY_ENV, DEFAULT_EVERY)))
    except ValueError:
        return DEFAULT_EVERY


def clock(seconds: float) -> str:
    """0:02:05 (hours:minutes:seconds), as tqdm's ETA reads."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def amount(value: float, unit: str, scale: bool) -> str:
    """120 steps, or with `scale` 12.3 MB (SI prefixes, as tqdm's unit_scale)."""
    if not scale:
        return f"{value:,.0f} {unit}" if float(value).is_integer() else f"{value:,.2f} {unit}"
    for prefix in ("", "k", "M", "G", "T", "P"):
        if abs(value) < 999.5:
            return f"{value:.3g} {prefix}{unit}"
        value /= 1000
    return f"{value:.3g} E{unit}"


def per_second(rate: float, unit: str, scale: bool) -> str:
    """2.31 steps/s, 0.05 problems/s, 1,234 tokens/s, 6.17 MB/s"""
    if scale:
        return f"{amount(rate, unit, True)}/s"
    return f"{rate:,.0f} {unit}/s" if rate >= 100 else f"{rate:.3g} {unit}/s" if rate >= 1 else f"{rate:.2g} {unit}/s"


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, OSError, ValueError):
        return False


class Progress:
    """Count `total` units of work: `update(n, **postfix)` as they get done, `close()` at the end.

    `initial` units were done before (a resumed run): rates and ETAs count only this run's.
    `deadline` (a `time.monotonic()` instant) caps the ETA: work that stops on a time budget.
    """

    def __init__(self, total: float | None = None, *, desc: str = "", unit: str = "it", initial: float = 0,
                 scale: bool = False, every: float | None = None, deadline: float | None = None,
                 stream: IO[str] | None = None, clock: Callable[[], float] = time.monotonic, refresh: float = 0.2):
        self.total, self.desc, self.unit, self.scale = total, desc, unit, scale
        self.initial, self.n = initial, initial
        self.every = default_every() if every is None else every
        self.deadline = deadline
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.started = self.last = clock()
        self.lines = 0  # plain lines written
        self.postfix: dict = {}
        self.closed = self.failed = False
        self.bar = None
        self._exit = contextlib.ExitStack()
        if _is_terminal(self.stream):
            try:
                from tqdm import tqdm
            except ImportError:  # plain lines on the terminal too
                return
            try:
                self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, unit_scale=scale,
                                file=self.stream, dynamic_ncols=True, leave=False, mininterval=refresh)
            except Exception:
                self._failed()
                return
            if self.stream is sys.stderr:  # log records go above the bar, not through it
                from tqdm.contrib.logging import logging_redirect_tqdm

                self._exit.enter_context(logging_redirect_tqdm(tqdm_class=tqdm))

    # -- reporting ---------------------------------------------------------------------------
    def update(self, n: float = 1, **postfix) -> None:
        if self.closed or self.failed:
            return
        self.n += n
        if postfix:
            self.postfix.update(postfix)
        try:
            if self.bar is not None:
                if self.deadline is not None:
                    self.postfix["budget left"] = clock(self.deadline - self.clock())
                if postfix or self.deadline is not None:
                    self.bar.set_postfix(self.postfix, refresh=False)
                self.bar.update(n)
                return
            now = self.clock()
            if now - self.last >= self.every:
                self.last = now
                self._write(self.line(now))
        except Exception:  # a full disk or a closed terminal must not stop training
            self._failed()

    def _failed(self) -> None:
        """Output failed: no more of it (a bar that could not write is not touched again)."""
        self.failed = True
        log.debug("progress output failed; no more progress output", exc_info=True)

    def rate(self, now: float | None = None) -> float | None:
        elapsed = (self.clock() if now is None else now) - self.started
        done = self.n - self.initial
        return done / elapsed if elapsed > 0 and done > 0 else None

    def eta(self, now: float | None = None) -> float | None:
        now = self.clock() if now is None else now
        rate = self.rate(now)
        left = [] if not self.total or rate is None else [max(0.0, self.total - self.n) / rate]
        if self.deadline is not None:
            left.append(max(0.0, self.deadline - now))
        return min(left) if left else None

    def line(self, now: float | None = None) -> str:
        """train: 120/3,000 steps (4%), 2.31 steps/s, elapsed 0:00:52, ETA 0:20:46, loss 3.21"""
        now = self.clock() if now is None else now
        rate, eta = self.rate(now), self.eta(now)
        count = amount(self.n, self.unit, self.scale)
        if self.total:
            done = amount(self.n, self.unit, self.scale) if self.scale else f"{self.n:,.0f}"
            count = f"{done}/{amount(self.total, self.unit, self.scale)} ({min(self.n / self.total, 1):.0%})"
        parts = [count, per_second(rate, self.unit, self.scale) if rate is not None else f"? {self.unit}/s",
                 f"elapsed {clock(now - self.started)}", f"ETA {clock(eta)}" if eta is not None else "ETA ?"]
        parts += [f"{key} {value}" for key, value in self.postfix.items()]
        return f"{self.desc}: " + ", ".join(parts) if self.desc else ", ".join(parts)

    def _write(self, text: str) -> None:
        self.lines += 1
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            if self.failed:
                pass
            elif self.bar is not None:
                self.bar.close()
            elif self.lines:  # a closing line where the log has seen this work's progress
                now = self.clock()
                rate = self.rate(now)
                per = f" ({per_second(rate, self.unit, self.scale)})" if rate is not None else ""
                self._write(f"{self.desc + ': ' if self.desc else ''}done, "
                            f"{amount(self.n - self.initial, self.unit, self.scale)} in {clock(now - self.started)}"
                            f"{per}")
        except Exception:
            self._failed()
        finally:
            self._exit.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(items: Iterable[T], *, total: float | None = None, desc: str = "", unit: str = "it",
             every: float | None = None, stream: IO[str] | None = None) -> Iterator[T]:
    """`items`, reporting each one as done (see Progress)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(total, desc=desc, unit=unit, every=every, stream=stream) as bar:
        for item in items:
            yield item
            bar.update()
