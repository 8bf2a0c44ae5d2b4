"""Bad input never takes the server down: a clear error or an empty result, then business as usual."""

import asyncio
import os

import pytest
from lsprotocol import types
from pygls.exceptions import JsonRpcException

from lsp_harness import Editor

URI = "file:///tmp/bad.py"


@pytest.fixture
async def editor():
    ed = Editor()
    await ed.start(init_options={"invokedCandidates": 2, "candidates": 2, "maxTokens": 4, "invokedSteps": 2, "steps": 2,
                                 "seed": 0})
    await ed.wait_ready()
    yield ed
    assert ed.client._server.returncode is None, "server died"
    assert await ed.close() == 0


async def still_serving(ed: Editor) -> None:
    ed.open("file:///tmp/ok.txt", "ok ", "plaintext")
    assert (await ed.complete("file:///tmp/ok.txt", 0, 3)).items


async def test_unknown_document(editor):
    assert not (await editor.complete("file:///tmp/never-opened.py", 0, 0)).items
    await still_serving(editor)


async def test_positions_past_line_and_file_end(editor):
    # plain text (no grammar, nothing held back by validation) and a fixed seed: there are items
    # whose ranges to check, and an empty answer means the position, not the validator
    uri = "file:///tmp/bad.txt"
    editor.open(uri, "x = 1\n", "plaintext")
    items = (await editor.complete(uri, 0, 999)).items  # clamps to the end of the line
    assert items, "the precondition: items whose ranges to check"
    assert all(i.range.start == i.range.end == types.Position(0, 5) for i in items)
    assert (await editor.complete(uri, 1, 0)).items  # the empty last line is a line
    assert not (await editor.complete(uri, 99, 0)).items
    await still_serving(editor)


async def test_split_surrogate_pair_position(editor):
    editor.open("file:///tmp/emoji.txt", "a😀b", "plaintext")
    items = (await editor.complete("file:///tmp/emoji.txt", 0, 2)).items  # inside the pair
    assert items, "the precondition: items whose ranges to check"
    # moved back to the pair's start, the rest of the line (the pair and "b", 3 UTF-16 units) replaced
    assert all(i.range.start == types.Position(0, 1) and i.range.end == types.Position(0, 4) for i in items)
    assert all(i.insert_text.endswith("😀b") for i in items)
    await still_serving(editor)


async def test_empty_binary_unknown_language_and_huge_files(editor):
    editor.open("file:///tmp/empty.py", "")
    await editor.complete("file:///tmp/empty.py", 0, 0)
    editor.open("file:///tmp/blob.bin", "\x00\x01\ufffd\x7f" * 1000, "binary-blob")
    await editor.complete("file:///tmp/blob.bin", 0, 10)
    editor.open("file:///tmp/x.zzz", "hello ", "no-such-language")
    assert (await editor.complete("file:///tmp/x.zzz", 0, 6)).items
    big = ("value = value + 1\n" * 600_000)[:10_000_000]
    editor.open("file:///tmp/big.py", big)
    await editor.complete("file:///tmp/big.py", 300_000, 5)
    await still_serving(editor)


async def test_malformed_params_get_an_error(editor):
    with pytest.raises(JsonRpcException):
        await editor.raw_request(types.TEXT_DOCUMENT_INLINE_COMPLETION, {"textDocument": {"uri": URI}}, "bad-1")
    with pytest.raises(JsonRpcException):
        await editor.raw_request(types.TEXT_DOCUMENT_INLINE_COMPLETION,
                                 {"textDocument": 5, "position": "here", "context": None}, "bad-2")
    editor.send_raw(b"{this is not json")
    editor.send_raw(b'{"jsonrpc": "2.0", "method": "textDocument/didChange", "params": {"textDocument": '
                    b'{"uri": "file:///nope", "version": 1}, "contentChanges": [{"text": "x"}]}}')
    protocol = editor.client.protocol
    protocol.notify("infill/didShowCompletion", {"id": None})
    protocol.notify("infill/didPartiallyAcceptCompletion", ["junk"])
    protocol.notify(types.WORKSPACE_DID_CHANGE_CONFIGURATION, {"settings": {"infill": {"candidates": "lots"}}})
    await still_serving(editor)


async def test_unknown_method_and_model_missing():
    ed = Editor()
    await ed.start("--model", "/nonexistent/model-dir")
    try:
        stats = await ed.wait_ready()
        assert stats["engineError"] and "not a directory" in stats["engineError"]
        ed.open(URI, "x = ")
        assert not (await ed.complete(URI, 0, 4)).items
        assert any(s["state"] == "error" for s in ed.statuses)
        assert any("not a directory" in line for line in ed.logs)
        # the load's progress is closed before the error is reported: an editor that shows the
        # error is not still showing the load's spinner beside it
        assert ("progress", "end") in ed.events
        assert ed.events.index(("progress", "end")) < ed.events.index(("status", "error"))
        with pytest.raises(JsonRpcException):
            await asyncio.wait_for(ed.client.protocol.send_request_async("infill/noSuchThing", {}), 10)
    finally:
        assert await ed.close() == 0
