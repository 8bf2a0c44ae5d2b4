"""Server settings: command-line defaults, then `initializationOptions`, then
`workspace/didChangeConfiguration` (`{"settings": {"infill": {...}}}`), camelCase on the wire.

A bad value is dropped with a log line; it never takes the server down.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import msgspec

from .engine import EngineConfig
from .types import Budget

log = logging.getLogger(__name__)


class Settings(msgspec.Struct, frozen=True, rename="camel", forbid_unknown_fields=False):
    candidates: int = 4  # shown for automatic (as-you-type) requests
    max_tokens: int = 32  # longest middle, in tokens
    steps: int = 16  # denoising steps for automatic requests
    invoked_candidates: int = 8  # when the user asks explicitly, spend more
    invoked_steps: int = 24
    languages: dict[str, bool] = {}  # languageId -> enabled; "*" is the default for the rest
    model: str = ""
    engine_address: str = ""
    device: str = "auto"
    dtype: str = "auto"
    show_invalid: bool = False
    context_tokens: int = 1024  # prefix budget sent to the model
    suffix_tokens: int = 16  # suffix head clamped into the canvas
    prefix_chars: int = 8000  # character windows cut before tokenizing (a 10 MB file never is)
    suffix_chars: int = 2000
    fast: bool | None = None  # the static-shape decoder pass (engine/fast.py); None: on a CPU only
    engine_timeout: float = 15.0  # seconds an engine at engineAddress may take to answer before it counts as down
    seed: int | None = None  # fixed noise for reproducible suggestions (debugging, tests); None = fresh noise
    # Repository context (repo_context.py): "auto" = in the prompt when the checkpoint declares a layout
    # for it (the real DiffusionGemma does; infill-small, trained on single files, does not: there it is
    # gathered only for finishing typed names, names.py).
    repo_context: Literal["auto", "on", "off"] = "auto"
    repo_context_tokens: int = 512  # budget for it, before the prefix
    repo_context_files: int = 8  # most files it is drawn from
    complete_names: bool = True  # also offer the name being typed finished with one the prompt holds (names.py)
    # also offer, first, what stands between the same neighbours elsewhere in the document (repeats.py)
    complete_repeats: bool = True

    def repo_context_enabled(self, engine_layout: str) -> bool:
        return self.repo_context == "on" or (self.repo_context == "auto" and bool(engine_layout))

    def repo_context_limits(self, engine_tokens: int = 0) -> tuple[int, int]:
        """(token budget, file limit), clamped; `engine_tokens` > 0: the most context the serving
        checkpoint was trained with (EngineInfo.repo_context_tokens), which the budget never exceeds:
        chunks chosen for more would be cut by the engine, and one chunk over its cap leaves none."""
        tokens = _clamp(self.repo_context_tokens, 0, 8192)
        return (min(tokens, engine_tokens) if engine_tokens > 0 else tokens), _clamp(self.repo_context_files, 0, 64)

    def enabled_for(self, language_id: str) -> bool:
        return self.languages.get(language_id, self.languages.get("*", True))

    def budget(self, invoked: bool) -> Budget:
        return Budget(
            candidates=_clamp(self.invoked_candidates if invoked else self.candidates, 1, 32),
            max_middle_tokens=_clamp(self.max_tokens, 1, 512),
            steps=_clamp(self.invoked_steps if invoked else self.steps, 1, 256),
        )

    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            model=self.model,
            address=self.engine_address,
            device=self.device,
            dtype=self.dtype,
            prefix_tokens=_clamp(self.context_tokens, 16, 32768),
            suffix_head_tokens=_clamp(self.suffix_tokens, 1, 256),
            fast=self.fast,
            timeout=max(0.1, min(600.0, self.engine_timeout)),
        )


def _clamp(value: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, value))


def merge(settings: Settings, changes: Any) -> Settings:
    """Apply a client's settings object; unknown keys are ignored, bad values dropped."""
    if isinstance(changes, dict) and isinstance(changes.get("infill"), dict):
        changes = changes["infill"]
    if not isinstance(changes, dict):
        if changes is not None:
            log.warning("ignoring settings that are not an object: %r", changes)
        return settings
    current = msgspec.to_builtins(settings)
    for key, value in changes.items():
        trial = {**current, key: value}
        try:
            msgspec.convert(trial, Settings)
        except msgspec.ValidationError as exc:
            log.warning("ignoring setting %s=%r: %s", key, value, exc)
            continue
        current = trial
    return msgspec.convert(current, Settings)
