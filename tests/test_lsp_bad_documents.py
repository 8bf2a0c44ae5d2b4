"""Documents that break naive servers: each gets a result or a clear error within a bounded time,
and the server goes on serving. Bounds here are hang detectors (generous), not speed targets.
Plain-text documents are used where the assertions need items: no grammar rejects them, and the
server is seeded, so the items these tests check exist on every run (asserted first)."""

import asyncio
import time

import pytest
from lsprotocol import types

from lsp_harness import Editor

BOUND_S = 30  # a request that takes longer than this is a hang
OPTIONS = {"candidates": 2, "invokedCandidates": 2, "maxTokens": 4, "steps": 2, "invokedSteps": 2, "seed": 0}


@pytest.fixture
async def editor():
    ed = Editor()
    await ed.start(init_options=OPTIONS)
    assert (await ed.wait_ready())["engineReady"]
    yield ed
    assert ed.client._server.returncode is None, "server died"
    assert await ed.close() == 0


async def answer(ed: Editor, uri: str, line: int, character: int):
    start = time.monotonic()
    result = await asyncio.wait_for(ed.complete(uri, line, character), BOUND_S)
    return result, time.monotonic() - start


async def still_serving(ed: Editor) -> None:
    ed.open("file:///tmp/ok.txt", "ok ", "plaintext")
    assert (await answer(ed, "file:///tmp/ok.txt", 0, 3))[0].items


async def test_ten_megabyte_file(editor):
    big = ("value = value + 1\n" * 600_000)[:10_000_000]
    editor.open("file:///tmp/big.txt", big, "plaintext")
    result, _ = await answer(editor, "file:///tmp/big.txt", 300_000, 5)
    assert result.items and all(i.range.start == types.Position(300_000, 5) for i in result.items)
    editor.change("file:///tmp/big.txt", 2, (300_000, 5), (300_000, 5), "x")  # an edit deep in it
    result, _ = await answer(editor, "file:///tmp/big.txt", 300_000, 6)
    assert result.items and all(i.insert_text.endswith(" value + 1") for i in result.items)
    await still_serving(editor)


async def test_one_megabyte_line(editor):
    line = "word " * 200_000
    editor.open("file:///tmp/line.txt", line + "\nend", "plaintext")
    for column in (0, 500_000, len(line)):
        result, _ = await answer(editor, "file:///tmp/line.txt", 0, column)
        assert result.items
        for item in result.items:
            assert item.range.start == types.Position(0, column) and item.range.end == types.Position(0, len(line))
            assert item.insert_text.endswith(line[column:])
    editor.open("file:///tmp/line.py", "x = " + "a + " * 250_000 + "\n")  # Python: validated too
    await answer(editor, "file:///tmp/line.py", 0, 4 + 4 * 125_000)
    await still_serving(editor)


async def test_hundred_thousand_nested_brackets(editor):
    for uri, language in (("file:///tmp/deep.py", "python"), ("file:///tmp/deep.json", "json"),
                          ("file:///tmp/deep.js", "javascript")):
        text = "x = " + "[" * 100_000 + "\n" + "]" * 100_000 + "\n"
        editor.open(uri, text, language)
        await answer(editor, uri, 0, 4 + 100_000)  # inside the innermost bracket
        await answer(editor, uri, 1, 50_000)
    await still_serving(editor)


async def test_crlf_cr_and_mixed_line_endings(editor):
    uri = "file:///tmp/mixed.txt"
    text = "one\r\ntwo\rthree\nfour\x0cstill four\u2028still four\r\nfive"
    editor.open(uri, text, "plaintext")
    # LSP lines: one, two, three, "four\x0cstill four\u2028still four", five
    editor.change(uri, 2, (3, 0), (3, 4), "FOUR")
    editor.change(uri, 3, (4, 4), (4, 4), "!")
    result, _ = await answer(editor, uri, 3, 4)
    assert result.items
    for item in result.items:  # the rest of line 3 as the editor has it: the edit landed there
        assert item.range == types.Range(types.Position(3, 4), types.Position(3, 26))
        assert item.insert_text.endswith("\x0cstill four\u2028still four")
    result, _ = await answer(editor, uri, 1, 3)  # a line ended by a lone CR
    assert result.items and all(i.range.end == types.Position(1, 3) for i in result.items)
    result, _ = await answer(editor, uri, 4, 5)
    assert result.items and all(i.range.start == types.Position(4, 5) for i in result.items)
    await still_serving(editor)


async def test_utf16_positions_with_astral_characters(editor):
    uri = "file:///tmp/astral.txt"
    editor.open(uri, "😀😀 = 'a𝄞b'\n", "plaintext")
    result, _ = await answer(editor, uri, 0, 7)  # after "😀😀 = " (2 + 2 + 3 units)
    assert result.items
    for item in result.items:
        assert item.range == types.Range(types.Position(0, 7), types.Position(0, 13))
        assert item.insert_text.endswith("'a𝄞b'")
    result, _ = await answer(editor, uri, 0, 10)  # inside the surrogate pair of 𝄞: snaps to its start
    assert result.items and all(i.range.start == types.Position(0, 9) for i in result.items)
    await still_serving(editor)


async def test_utf8_positions_when_the_client_offers_utf8():
    ed = Editor()
    try:
        result = await ed.start(init_options=OPTIONS, encodings=[types.PositionEncodingKind.Utf8])
        assert result.capabilities.position_encoding == types.PositionEncodingKind.Utf8
        assert (await ed.wait_ready())["engineReady"]
        uri = "file:///tmp/utf8.txt"
        ed.open(uri, "é😀 = x\n", "plaintext")
        ed.change(uri, 2, (0, 9), (0, 10), "yz")  # UTF-8 bytes: é 2, 😀 4, " = " 3 -> x at 9
        result, _ = await answer(ed, uri, 0, 9)
        assert result.items
        for item in result.items:
            assert item.range == types.Range(types.Position(0, 9), types.Position(0, 11))
            assert item.insert_text.endswith("yz")
        assert ed.client._server.returncode is None
    finally:
        await ed.close()


async def test_two_hundred_open_documents_are_held_then_freed(editor):
    uris = [f"file:///tmp/many/doc_{i}.txt" for i in range(200)]
    for i, uri in enumerate(uris):
        editor.open(uri, f"document {i} says", "plaintext")
    results = await asyncio.gather(*(answer(editor, uri, 0, 9 + len(str(i)) + 5) for i, uri in enumerate(uris[-20:], 180)))
    assert results[-1][0].items  # the newest request wins; the older ones may be superseded (empty)
    assert (await editor.stats())["openDocuments"] == 200
    for uri in uris:
        editor.client.text_document_did_close(types.DidCloseTextDocumentParams(types.TextDocumentIdentifier(uri)))
    stats = await editor.stats()
    assert stats["openDocuments"] == 0 and stats["cachedSuggestions"] == 0
    await still_serving(editor)
