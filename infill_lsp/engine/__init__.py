"""The engine interface: (prefix, suffix, language, budget) in, scored candidates out.

The LSP layer only ever sees `Engine`; which backend answers (transformers in this process,
the shared `infill-lsp engine` daemon over a Unix socket, later a vLLM server) is a setting.
`infill` blocks and is called from a worker thread; `cancel` stops it between denoising steps.
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from ..types import EngineInfo, InfillRequest, InfillResult
from .cancel import NEVER, Cancelled, CancelToken


class EngineUnavailable(Exception):
    """The engine cannot answer now (daemon unreachable or crashed, model failed to load)."""


class Engine(Protocol):
    info: EngineInfo

    def infill(self, request: InfillRequest, cancel: CancelToken = NEVER) -> InfillResult: ...

    def close(self) -> None: ...


class EngineConfig(msgspec.Struct, frozen=True):
    """How to get an engine: an address of a running daemon, or a model to load here."""

    model: str = ""
    address: str = ""  # Unix socket of `infill-lsp engine`; empty = in-process
    device: str = "auto"
    dtype: str = "auto"
    prefix_tokens: int = 1024
    suffix_head_tokens: int = 16


DEFAULT_MODEL = "google/diffusiongemma-26B-A4B-it"


def load_engine(config: EngineConfig, progress=None) -> Engine:
    """Connect to the daemon when an address is given, else load the model in this process."""
    if config.address:
        from .remote import RemoteEngine

        return RemoteEngine(config.address)
    from .transformers_backend import TransformersEngine

    return TransformersEngine(
        config.model or DEFAULT_MODEL,
        device=config.device,
        dtype=config.dtype,
        prefix_tokens=config.prefix_tokens,
        suffix_head_tokens=config.suffix_head_tokens,
        progress=progress,
    )


__all__ = [
    "Cancelled",
    "CancelToken",
    "DEFAULT_MODEL",
    "Engine",
    "EngineConfig",
    "EngineUnavailable",
    "NEVER",
    "load_engine",
]
