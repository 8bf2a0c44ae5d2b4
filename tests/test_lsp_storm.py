"""A typing storm and fuzzed positions: every request is answered, nothing crashes."""

import asyncio
import random

from lsprotocol import types
from pygls.exceptions import JsonRpcException

from lsp_harness import Editor

URI = "file:///tmp/storm.py"


async def test_typing_storm_with_cancels_and_fuzzed_positions():
    ed = Editor()
    await ed.start(init_options={"candidates": 4, "maxTokens": 8, "steps": 3, "invokedSteps": 3, "seed": 0})
    try:
        await ed.wait_ready()
        rng = random.Random(0)
        text = "def f(values):\n    total = 0\n    "
        ed.open(URI, text)
        line, col, version = 2, 4, 1
        pending = []
        for i in range(150):
            char = rng.choice("abcxyz _=+()[]:\n\t'\"😀")
            version += 1
            ed.change(URI, version, (line, col), (line, col), char)
            text_lines = text.split("\n")
            text_lines[line] = text_lines[line][:col] + char + text_lines[line][col:]
            text = "\n".join(text_lines)
            if char == "\n":
                line, col = line + 1, 0
            else:
                col += len(char.encode("utf-16-le")) // 2
            if i % 10 == 9:  # a fuzzed position now and then: past the line, past the file, negative-ish
                position = (rng.choice([line, line + 50, 0]), rng.choice([col, col + 999, 0]))
            else:
                position = (line, col)
            msg_id = f"storm-{i}"
            future = ed.client.protocol.send_request_async(
                types.TEXT_DOCUMENT_INLINE_COMPLETION, ed.inline_params(URI, *position, invoked=i % 7 == 0),
                msg_id=msg_id)
            pending.append(future)
            if rng.random() < 0.2:
                ed.client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id=msg_id))
            await asyncio.sleep(rng.choice([0, 0, 0.001, 0.01]))
        answered = cancelled = 0
        for future in pending:
            try:
                result = await asyncio.wait_for(future, 60)
                assert isinstance(result, types.InlineCompletionList)
                answered += 1
            except JsonRpcException:
                cancelled += 1
        assert answered + cancelled == 150 and answered > 0
        assert ed.client._server.returncode is None
        # the server's copy of the document is the editor's copy: each item replaces the whole
        # current line (cursor at its start) and ends with that line's text as the editor has it.
        # What the storm typed rarely parses, so invalid suggestions are shown for this check: its
        # items come from the document as the server has it, whatever the validator says of them.
        ed.client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
            settings={"infill": {"showInvalid": True}}))
        current = text.split("\n")[line]
        final = await ed.complete(URI, line, 0)
        assert final.items, "the precondition: items to compare with the editor's copy"
        for item in final.items:
            assert item.range.end == types.Position(line, len(current.encode("utf-16-le")) // 2)
            assert item.insert_text.endswith(current)
    finally:
        assert await ed.close() == 0
