"""Local telemetry over stdio: an item counts as shown once and accepted once however often the
editor says so, and `acceptedChars` counts what went into the document in UTF-16 code units."""

from lsprotocol import types

from lsp_harness import Editor

URI = "file:///tmp/telemetry.txt"


async def test_shown_once_accepted_once_and_accepted_chars_in_utf16_units():
    ed = Editor()
    await ed.start(init_options={"invokedCandidates": 2, "maxTokens": 6, "invokedSteps": 3, "seed": 1})
    try:
        assert (await ed.wait_ready())["engineReady"]
        ed.open(URI, "hello 😀 ", "plaintext")
        items = (await ed.complete(URI, 0, 9)).items
        assert items, "precondition: the seeded model suggests something here"
        item = items[0]
        item_id = item.command.arguments[0]["id"]
        middle = item.insert_text  # the cursor is at the line's end: the item is the middle itself
        units = len(middle.encode("utf-16-le")) // 2
        assert units >= 2, "precondition: long enough to accept part of it"
        for _ in range(3):  # a redraw reports it again
            ed.client.protocol.notify("infill/didShowCompletion", {"id": item_id})
        ed.client.protocol.notify("infill/didPartiallyAcceptCompletion", {"id": item_id, "acceptedLength": 1})
        stats = await ed.stats()
        assert (stats["shown"], stats["partiallyAccepted"], stats["acceptedChars"], stats["accepted"]) == (1, 1, 1, 0)
        for _ in range(2):  # accepting the rest; a repeated command counts once
            await ed.client.workspace_execute_command_async(types.ExecuteCommandParams(
                command=item.command.command, arguments=item.command.arguments))
        stats = await ed.stats()
        assert (stats["shown"], stats["accepted"], stats["acceptedChars"]) == (1, 1, units)
        ed.client.protocol.notify("infill/didShowCompletion", {"id": "no-such-item"})
        assert (await ed.stats())["shown"] == 1
    finally:
        assert await ed.close() == 0
