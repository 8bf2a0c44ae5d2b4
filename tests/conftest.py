from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY_MODEL = ROOT / "fixtures" / "tiny-diffusiongemma"

# Tests never reach a hub: everything loads from fixtures/.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    return TINY_MODEL


@pytest.fixture(scope="session")
def engine(tiny_model_path):
    from infill_lsp.engine.transformers_backend import TransformersEngine

    return TransformersEngine(str(tiny_model_path), device="cpu")
