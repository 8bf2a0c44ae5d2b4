"""`infill-lsp doctor`: what would serve, and why nothing shows when something is wrong.

Each check is one line: ok / warn / FAIL, what was found, and for a problem the fix in one
line. Nothing is downloaded and no weights are loaded (the parameter count comes from the
safetensors headers). Exits 1 when a check fails. `--json` prints the same for editors.

A running server answers the custom request `infill/health` with the same checks (as `--json`
prints them) plus one on its own engine (serving, loading, failed): Neovim's `:checkhealth infill`
and VS Code's "Infill: Show Health" ask it. See `server_health`.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import socket
import threading
import weakref
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


# -- infill/health: the same checks, answered by a running server ------------------------------------
HEALTH_TIMEOUT_S = 20.0  # the checks' own timeouts (engine: 3 s) keep them well within this
_running: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # server -> the checks in progress


def check_server(server) -> list[Check]:
    """The engine this server has (or why not): what `doctor` cannot see from outside."""
    holder = server.holder
    config = holder.config
    what = (config.address or config.model or "the default model") if config is not None else "nothing yet"
    if holder.engine is not None:
        info = holder.engine.info
        return [Check("server", "ok", f"serving {info.model} ({info.backend} on {info.device}, {info.dtype})")]
    if holder.loading is not None:
        return [Check("server", "warn", f"still loading {what}: suggestions start when it is ready",
                      "wait for it (the status shows how far it is); a model on the CPU takes longest")]
    if holder.error:
        return [Check("server", "fail", f"no engine: {holder.error}",
                      "fix what the checks below report (the `model` or `engineAddress` setting); the server "
                      "tries again on a later request")]
    return [Check("server", "ok", "no engine loaded yet: it loads after initialize")]


async def server_health(server, timeout: float = HEALTH_TIMEOUT_S) -> list[dict]:
    """The `infill/health` answer: `run_checks` for the server's current settings on a thread of its
    own (never the event loop, never the pipeline worker, which may be busy loading a model), the
    server's own engine check after the first line. Concurrent requests share one run. Never raises:
    whatever goes wrong, a timeout included, is a failed check."""
    try:
        checks = check_server(server)
        found = await asyncio.wait_for(asyncio.shield(_checks_for(server)), timeout)
        checks = found[:1] + checks + found[1:]
    except asyncio.CancelledError:
        raise  # $/cancelRequest: the client no longer wants it
    except (asyncio.TimeoutError, TimeoutError):
        checks = [Check("doctor", "fail", f"the checks did not finish within {timeout:g} s",
                        "run `infill-lsp doctor` in a terminal to see which one hangs")]
    except Exception as exc:  # noqa: BLE001 - a check that breaks is itself a finding
        checks = [Check("doctor", "fail", f"the checks failed to run: {type(exc).__name__}: {exc}")]
    return msgspec.to_builtins(checks)


def _checks_for(server) -> asyncio.Future:
    running = _running.get(server)
    if running is not None and not running.done():
        return running
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()
    _running[server] = future
    config = server.settings.engine_config()

    def settle(result) -> None:
        if not future.done():
            future.set_result(result)

    def work() -> None:
        try:
            result = run_checks(config)
        except BaseException as exc:  # noqa: BLE001 - reported, not raised on a thread nobody joins
            result = [Check("doctor", "fail", f"the checks failed to run: {type(exc).__name__}: {exc}")]
        try:
            loop.call_soon_threadsafe(settle, result)
        except RuntimeError:
            pass  # the server's loop is closed: nobody is waiting

    # A daemon thread: a check stuck past the timeout never holds up the server's exit.
    threading.Thread(target=work, name="infill-health", daemon=True).start()
    return future
