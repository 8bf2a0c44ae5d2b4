"""The engine interface: (prefix, suffix, language, budget) in, scored candidates out.

The LSP layer only ever sees `Engine`; which backend answers (transformers in this process,
the shared `infill-lsp engine` daemon over a Unix socket, later a vLLM server) is a setting.
`infill` blocks and is called from a worker thread; `cancel` stops it between denoising steps.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Protocol

import msgspec

from ..types import EngineInfo, InfillRequest, InfillResult
from .cancel import NEVER, Cancelled, CancelToken

log = logging.getLogger(__name__)


class EngineUnavailable(Exception):
    """The engine cannot answer now (daemon unreachable or crashed, model failed to load)."""


class Engine(Protocol):
    info: EngineInfo

    def infill(self, request: InfillRequest, cancel: CancelToken = NEVER) -> InfillResult: ...

    def close(self) -> None: ...


class EngineConfig(msgspec.Struct, frozen=True):
    """How to get an engine: an address of a running daemon, or a model to load here."""

    model: str = ""
    address: str = ""  # http(s)://HOST:PORT (vLLM or `infill-lsp engine --http`) or the engine's socket; "" = here
    device: str = "auto"
    dtype: str = "auto"
    prefix_tokens: int = 1024
    suffix_head_tokens: int = 16
    # The static-shape decoder pass (engine/fast.py; CUDA graphs on a GPU) instead of transformers' eager loop.
    # None: on a CPU (same candidates, ~15% faster there), not on a GPU (graphs wait for their measurement).
    fast: bool | None = None
    timeout: float = 15.0  # seconds a remote engine may take to answer a request


DEFAULT_MODEL = "google/diffusiongemma-26B-A4B-it"
SHIPPED_MODEL = Path(__file__).resolve().parent.parent / "models" / "infill-small"


def real_model_cached(model: str = DEFAULT_MODEL) -> bool:
    """Whether the hub id's weights are in the local Hugging Face cache (never downloads)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(model, "config.json")
    except Exception:  # noqa: BLE001 - no hub library, a bad cache: then it is not there
        return False
    return isinstance(found, str)


def default_model() -> str:
    """No `--model`: the real DiffusionGemma if it is cached and a GPU is present, else the shipped model."""
    import torch

    if torch.cuda.is_available() and real_model_cached():
        return DEFAULT_MODEL
    if (SHIPPED_MODEL / "config.json").exists():
        return str(SHIPPED_MODEL)
    return DEFAULT_MODEL


def _compile_cache_usable() -> None:
    """torch creates its compile cache directory (TORCHINDUCTOR_CACHE_DIR, by default under the
    temporary directory) when transformers imports it, even for eager inference that never writes
    there. On a full or read-only disk that import fails and no model loads. When the directory
    cannot be made, point torch at one that exists: eager inference writes nothing."""
    import getpass
    import tempfile

    wanted = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    try:
        if wanted is None:
            try:
                user = getpass.getuser()
            except Exception:  # noqa: BLE001 - no user name: torch falls back the same way
                user = f"uid_{os.getuid()}"
            wanted = os.path.join(tempfile.gettempdir(), "torchinductor_" + re.sub(r'[\\/:*?"<>|]', "_", user))
        os.makedirs(wanted, exist_ok=True)
    except OSError as exc:  # FileNotFoundError from gettempdir too: no usable temporary directory
        log.warning("cannot create torch's compile cache (%s): using / instead; compiling will not be cached", exc)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.abspath(os.sep)


def _on_cpu(device: str) -> bool:
    if device == "auto":
        import torch

        return not torch.cuda.is_available()
    return device == "cpu"


def load_engine(config: EngineConfig, progress=None) -> Engine:
    """Connect to the daemon when an address is given, else load the model in this process."""
    if config.address:  # http(s)://HOST:PORT (vLLM or `infill-lsp engine --http`), or the daemon's socket
        from .http_backend import HttpEngine

        return HttpEngine(config.address, model=config.model, prefix_tokens=config.prefix_tokens,
                          suffix_head_tokens=config.suffix_head_tokens, read_timeout=config.timeout)
    _compile_cache_usable()
    from .transformers_backend import TransformersEngine

    options = dict(device=config.device, dtype=config.dtype, prefix_tokens=config.prefix_tokens,
                   suffix_head_tokens=config.suffix_head_tokens, progress=progress)
    model = config.model or default_model()
    if config.fast or (config.fast is None and _on_cpu(config.device)):
        from .fast import FastEngine  # same interface, same candidates (tested)

        try:
            return FastEngine(model, **options)
        except (AttributeError, TypeError) as exc:
            # The fast path reads the model's modules directly; a transformers release that renames
            # them (5.25 renamed the norms' `eps`) must cost speed, not every suggestion.
            if config.fast:
                raise
            log.warning("the fast CPU path does not fit this transformers version (%s: %s): "
                        "using transformers' own forward, which is slower", type(exc).__name__, exc)
    return TransformersEngine(model, **options)


__all__ = [
    "Cancelled",
    "CancelToken",
    "DEFAULT_MODEL",
    "SHIPPED_MODEL",
    "default_model",
    "Engine",
    "EngineConfig",
    "EngineUnavailable",
    "NEVER",
    "load_engine",
]
