"""Progress on long work (train, eval, corpus, bench): a tqdm bar on a terminal, plain lines in logs.

On a terminal the bar shows count, rate and ETA; when stderr is not a terminal (CI, a log file)
a line with the same figures is written every `every` seconds instead, so logs stay readable.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger("infill_lsp.progress")


def progress(items: Iterable[T], *, total: int | None = None, desc: str = "", unit: str = "it",
             every: float = 30.0) -> Iterator[T]:
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if sys.stderr.isatty():
        try:
            from tqdm import tqdm
        except ImportError:
            pass
        else:
            yield from tqdm(items, total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False)
            return
    started = last = time.perf_counter()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.perf_counter()
        if now - last >= every:
            last = now
            rate = done / (now - started)
            eta = f", ETA {(total - done) / rate:.0f} s" if total and rate > 0 else ""
            of = f"/{total}" if total else ""
            print(f"{desc}: {done}{of} {unit} ({rate:.2f} {unit}/s{eta})", file=sys.stderr, flush=True)
