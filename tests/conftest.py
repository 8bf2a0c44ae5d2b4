from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY_MODEL = ROOT / "fixtures" / "tiny-diffusiongemma"


def with_layout(tmp: Path, layout: dict) -> Path:
    """A copy of the tiny fixture's weights under a config that declares `infill_layout` = `layout`."""
    shutil.copytree(TINY_MODEL, tmp)
    config = json.loads((tmp / "config.json").read_text())
    config["infill_layout"] = layout
    (tmp / "config.json").write_text(json.dumps(config))
    return tmp

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
