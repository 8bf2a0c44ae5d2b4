"""`infill-lsp doctor`: what would serve, and why nothing shows when something is wrong.

Each check is one line: ok / warn / FAIL, what was found, and for a problem the fix in one
line. Nothing is downloaded and no weights are loaded (the parameter count comes from the
safetensors headers). Exits 1 when a check fails. `--json` prints the same for editors
(Neovim's :checkhealth infill, VS Code's "Infill: Show Health").
"""

from __future__ import annotations

import importlib
import json
import os
import socket
from importlib import metadata
from pathlib import Path

import msgspec

from . import __version__
from .engine import DEFAULT_MODEL, SHIPPED_MODEL, EngineConfig, default_model, real_model_cached


class Check(msgspec.Struct):
    name: str
    state: str  # ok, warn, fail
    detail: str
    fix: str = ""


def _model_dir(model: str) -> Path | None:
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(model, "config.json")
    except Exception:  # noqa: BLE001 - not a hub id, or no cache
        return None
    return Path(found).parent if isinstance(found, str) else None


def _parameters(directory: Path) -> int:
    from safetensors import safe_open

    total = 0
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(file, "pt") as weights:
            for name in weights.keys():
                shape = weights.get_slice(name).get_shape()
                count = 1
                for size in shape:
                    count *= size
                total += count
    return total


def check_model(config: EngineConfig) -> list[Check]:
    import torch

    checks = []
    gpu = torch.cuda.is_available()
    checks.append(Check("device", "ok", f"{'cuda: ' + torch.cuda.get_device_name(0) if gpu else 'cpu'}, "
                        f"torch {torch.__version__}, {torch.get_num_threads()} threads"))
    if config.address:
        return checks
    model = config.model or default_model()
    why = "--model / the `model` setting" if config.model else (
        "default: the real model is cached and a GPU is present" if model == DEFAULT_MODEL and gpu
        else "default: the model shipped with infill-lsp" if model == str(SHIPPED_MODEL)
        else "default")
    directory = _model_dir(model)
    if directory is None or not (directory / "config.json").exists():
        fix = (f"fetch it once with `hf download {model}`, or pass --model DIR" if "/" in model and not
               Path(model).is_absolute() else "pass --model with a checkpoint directory")
        checks.append(Check("model", "fail", f"{model} ({why}) is not a directory and not in the local Hugging Face "
                            "cache", fix))
        return checks
    try:
        count = _parameters(directory)
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign weights file
        checks.append(Check("model", "fail", f"{directory}: weights unreadable ({exc})",
                            "re-download or re-train the checkpoint; a truncated file cannot load"))
        return checks
    layout = json.loads((directory / "config.json").read_text()).get("infill_layout") or {}
    dtype = config.dtype if config.dtype != "auto" else ("bfloat16" if gpu else "float32")
    checks.append(Check("model", "ok", f"{layout.get('name') or model} at {directory} ({why}); {count:,} parameters, "
                        f"served as {dtype}"))
    if model != DEFAULT_MODEL and gpu and not real_model_cached():
        checks.append(Check("real model", "warn", f"a GPU is present but {DEFAULT_MODEL} is not in the local cache",
                            f"hf download {DEFAULT_MODEL}  (about 50 GB), then restart the server"))
    return checks


def check_engine(address: str) -> list[Check]:
    if not address:
        return [Check("engine", "ok", "in-process (no --engine)")]
    if address.startswith(("http://", "https://")):
        try:
            import httpx

            reply = httpx.get(address.rstrip("/") + "/v1/models", timeout=3.0,
                              headers={"Authorization": f"Bearer {os.environ.get('INFILL_ENGINE_API_KEY', '')}"})
            reply.raise_for_status()
            names = [m.get("id") for m in reply.json().get("data", [])]
            return [Check("engine", "ok", f"{address} answers, serving {', '.join(map(str, names)) or '?'}")]
        except Exception as exc:  # noqa: BLE001 - any failure is the finding
            return [Check("engine", "fail", f"{address} does not answer: {exc}",
                          "start the server (vllm serve ... or infill-lsp engine --http ...) or fix the address")]
    path = Path(address).expanduser()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2.0)
            sock.connect(str(path))
    except OSError as exc:
        return [Check("engine", "fail", f"{path}: {exc}", "start it: infill-lsp engine --model ... &")]
    mode = path.stat().st_mode & 0o777
    state = "ok" if mode & 0o077 == 0 else "warn"
    return [Check("engine", state, f"{path} accepts connections (mode {mode:o})",
                  "" if state == "ok" else "the socket should be owner-only (0600): restart infill-lsp engine")]


def check_grammars() -> list[Check]:
    from .syntax.languages import GRAMMARS, grammar

    found, missing = [], []
    for name, (module, _) in sorted(GRAMMARS.items()):
        wheel = module.replace("_", "-")
        try:
            version = metadata.version(wheel)
        except metadata.PackageNotFoundError:
            version = None
        (found if version and grammar(name) is not None else missing).append(f"{name} {version or ''}".strip())
    checks = [Check("grammars", "ok", f"{len(found)} loaded: {', '.join(found)}")]
    if missing:
        checks.append(Check("grammars", "warn", f"not loaded: {', '.join(missing)} (suggestions there are not "
                            "validated)", "pip install the tree-sitter-<language> wheels"))
    return checks


def run_checks(config: EngineConfig) -> list[Check]:
    checks = [Check("infill-lsp", "ok", f"version {__version__}, python {'.'.join(map(str, os.sys.version_info[:3]))}")]
    for section in (lambda: check_model(config), lambda: check_engine(config.address), check_grammars):
        try:
            checks.extend(section())
        except Exception as exc:  # noqa: BLE001 - a check that breaks is itself a finding
            checks.append(Check("doctor", "fail", f"a check failed to run: {type(exc).__name__}: {exc}"))
    importlib.invalidate_caches()
    return checks


def main(config: EngineConfig, as_json: bool = False) -> int:
    checks = run_checks(config)
    if as_json:
        print(json.dumps(msgspec.to_builtins(checks)))
    else:
        for check in checks:
            mark = {"ok": "ok  ", "warn": "warn", "fail": "FAIL"}[check.state]
            print(f"{mark} {check.name}: {check.detail}")
            if check.fix:
                print(f"     fix: {check.fix}")
    return 1 if any(c.state == "fail" for c in checks) else 0
