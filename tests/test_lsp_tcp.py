import asyncio
import socket
import subprocess
import sys

from lsprotocol import types
from pygls.lsp.client import LanguageClient

from lsp_harness import TINY_MODEL


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_serve_over_tcp():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "infill_lsp", "serve", "--model", str(TINY_MODEL),
                             "--tcp", f"127.0.0.1:{port}"], stderr=subprocess.DEVNULL)
    client = LanguageClient("tcp-test", "1")
    try:
        for _ in range(300):
            try:
                await client.start_tcp("127.0.0.1", port)
                break
            except OSError:
                assert proc.poll() is None
                await asyncio.sleep(0.1)
        result = await asyncio.wait_for(
            client.initialize_async(types.InitializeParams(capabilities=types.ClientCapabilities())), 30)
        assert result.capabilities.inline_completion_provider is not None
        await asyncio.wait_for(client.shutdown_async(None), 30)
    finally:
        proc.kill()
        proc.wait(10)
        await asyncio.wait_for(client.stop(), 10)
