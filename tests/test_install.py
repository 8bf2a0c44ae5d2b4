"""`pipx install .` of this checkout (the README's line for users who only want the command) gives
a working `infill-lsp`: its version, and a completion with the shipped package's code.

Slow (it builds the package and installs torch and everything else into a fresh environment,
several minutes), so it runs only where pipx is on PATH; scripts/setup does not install pipx.
Run it with:  pip install pipx && PATH=...:$PATH .venv/bin/python -m pytest tests/test_install.py
"""

import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from infill_lsp import __version__

from conftest import ROOT, TINY_MODEL

PIPX = shutil.which("pipx")
SKIP = {".git", ".venv", "mutants", "node_modules", "out", "build", "dist", "__pycache__", ".pytest_cache"}


@pytest.mark.skipif(not PIPX, reason="pipx is not on PATH (pip install pipx): this slow test installs the checkout "
                                     "with it")
def test_pipx_install_of_the_checkout_gives_a_working_command(tmp_path):
    source = tmp_path / "infill-lsp"  # a copy: building writes build/ and egg-info into the source tree
    shutil.copytree(ROOT, source, ignore=lambda folder, names: [n for n in names if n in SKIP
                                                                 or n.endswith(".egg-info")])
    env = {**os.environ, "PIPX_HOME": str(tmp_path / "pipx"), "PIPX_BIN_DIR": str(tmp_path / "bin"),
           "PIPX_MAN_DIR": str(tmp_path / "man"), "PIPX_DEFAULT_PYTHON": sys.executable}
    # The torch this environment runs (scripts/setup's CPU build here); without it pip picks the newest.
    torch = metadata.version("torch").split("+")[0]
    install = subprocess.run([PIPX, "install", "--preinstall", f"torch=={torch}", str(source)],
                             capture_output=True, text=True, env=env, timeout=1800)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]

    command = tmp_path / "bin" / "infill-lsp"
    version = subprocess.run([command, "--version"], capture_output=True, text=True, env=env, timeout=60)
    assert version.returncode == 0 and version.stdout.strip() == f"infill-lsp {__version__}", version

    # the installed package, not this checkout: its dependencies, grammars and shipped model are there
    complete = subprocess.run([command, "complete", "fixtures/samples/fib.py:9:12", "--model", str(TINY_MODEL)],
                              capture_output=True, text=True, env={**env, "HF_HUB_OFFLINE": "1"}, cwd=ROOT,
                              timeout=300)
    assert complete.returncode == 0, complete.stderr
    assert complete.stdout.startswith("fixtures/samples/fib.py:9:12  language=python")
    python = tmp_path / "pipx" / "venvs" / "infill-lsp" / "bin" / "python"
    where = subprocess.run([python, "-c", "import infill_lsp, infill_lsp.engine as e; print(infill_lsp.__file__); "
                            "print((e.SHIPPED_MODEL / 'model.safetensors').is_file())"],
                           capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    lines = where.stdout.split()
    assert Path(lines[0]).is_relative_to(tmp_path / "pipx") and lines[1] == "True", where
