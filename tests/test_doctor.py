"""`infill-lsp doctor`: says what would serve, and fails with a one-line fix when it cannot."""

import json
import shutil
import subprocess
import sys

from conftest import TINY_MODEL


def _doctor(*args, env=None):
    return subprocess.run([sys.executable, "-m", "infill_lsp.cli", "doctor", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def test_a_checkpoint_that_loads_is_reported_with_its_size():
    out = _doctor("--model", str(TINY_MODEL))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ok   model:" in out.stdout and "parameters" in out.stdout
    assert "grammars: 14 loaded" in out.stdout and out.stderr == ""  # quiet: results only


def test_missing_model_fails_with_the_fix(tmp_path):
    out = _doctor("--model", str(tmp_path / "nowhere"), "--json")
    assert out.returncode == 1
    checks = {c["name"]: c for c in json.loads(out.stdout)}
    assert checks["model"]["state"] == "fail" and checks["model"]["fix"]


def test_truncated_weights_are_a_clear_failure(tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(TINY_MODEL, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    out = _doctor("--model", str(broken))
    assert out.returncode == 1 and "weights unreadable" in out.stdout and "fix:" in out.stdout


def test_unreachable_engine_fails(tmp_path):
    out = _doctor("--engine", str(tmp_path / "engine.sock"))
    assert out.returncode == 1 and "FAIL engine" in out.stdout
