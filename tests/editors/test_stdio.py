"""`infill-lsp serve --stdio`, as vscode-languageclient starts a stdio server (TransportKind.stdio
appends `--stdio` to the arguments): the console script, spoken to over JSON-RPC on stdin/stdout."""

import asyncio
import subprocess
import sys
from pathlib import Path

from lsprotocol import types
from pygls.lsp.client import LanguageClient

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "fixtures" / "tiny-diffusiongemma"
# The entry point pip installs next to the interpreter (scripts/setup: .venv/bin/infill-lsp).
SCRIPT = Path(sys.executable).parent / ("infill-lsp.exe" if sys.platform == "win32" else "infill-lsp")


async def test_serve_stdio_initialize_and_shutdown():
    assert SCRIPT.exists(), f"{SCRIPT} is missing: install the project (scripts/setup)"
    client = LanguageClient("stdio-test", "1")
    await client.start_io(str(SCRIPT), "--log-level", "WARNING", "serve", "--model", str(TINY), "--stdio")
    try:
        result = await asyncio.wait_for(client.initialize_async(types.InitializeParams(
            capabilities=types.ClientCapabilities(), process_id=None)), 30)
        assert result.capabilities.inline_completion_provider is not None
        assert "infill.accept" in result.capabilities.execute_command_provider.commands
        client.initialized(types.InitializedParams())
        await asyncio.wait_for(client.shutdown_async(None), 30)
        client.exit(None)
        assert await asyncio.wait_for(client._server.wait(), 30) == 0
    finally:
        await client.stop()


def test_stdio_and_tcp_together_is_an_error():
    run = subprocess.run([str(SCRIPT), "serve", "--stdio", "--tcp", "127.0.0.1:2087"],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert run.returncode == 2
    assert "--tcp: not allowed with argument --stdio" in run.stderr
