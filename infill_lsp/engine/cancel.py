"""Cooperative cancellation shared by the LSP layer and the engines.

The LSP event loop cancels; the model worker thread checks between denoising steps, so a
stale request stops within one step. Callbacks let a remote engine forward the cancel over
its socket the moment it happens.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Cancelled(Exception):
    """Raised inside an engine when its request was cancelled.

    Raised from a denoising loop it says where that loop stopped: `steps_run` decoder passes
    done, `steps_left` of the request's step budget never run (None when it stopped elsewhere:
    before the model ran, or on the client's side of a socket).
    """

    def __init__(self, *args, steps_run: int | None = None, steps_left: int | None = None):
        super().__init__(*args)
        self.steps_run = steps_run
        self.steps_left = steps_left


class CancelToken:
    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []
        self.cancelled_at: float | None = None  # time.monotonic() of the cancel, for stop latencies

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def cancel(self) -> None:
        with self._lock:
            if self._event.is_set():
                return
            self.cancelled_at = time.monotonic()
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Run `callback` once when cancelled (at once if already cancelled)."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def raise_if_cancelled(self, *, steps_run: int | None = None, steps_left: int | None = None) -> None:
        """Raise Cancelled if cancelled; a denoising loop passes where it stands."""
        if self._event.is_set():
            raise Cancelled(steps_run=steps_run, steps_left=steps_left)


NEVER = CancelToken()
"""A token nobody cancels, for callers that do not need cancellation."""
