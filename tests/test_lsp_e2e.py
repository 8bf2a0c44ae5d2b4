"""The server as an editor sees it: a subprocess over stdio (initialize ... shutdown/exit)."""

import asyncio

import pytest
from lsprotocol import types
from pygls.exceptions import JsonRpcException

from judge import problems
from lsp_harness import Editor, apply

PLAIN_URI = "file:///tmp/notes.txt"  # plaintext: no grammar, so every candidate is shown
PY_URI = "file:///tmp/example.py"


@pytest.fixture
async def editor():
    ed = Editor()
    yield ed
    await ed.close()


async def test_initialize_advertises_inline_completion_and_encodings(editor):
    result = await editor.start()
    caps = result.capabilities
    assert caps.inline_completion_provider is not None
    assert caps.position_encoding == types.PositionEncodingKind.Utf16
    assert caps.text_document_sync.change == types.TextDocumentSyncKind.Incremental


async def test_utf8_is_used_when_the_client_offers_it():
    ed = Editor()
    try:
        result = await ed.start(encodings=[types.PositionEncodingKind.Utf8, types.PositionEncodingKind.Utf16],
                                init_options={"seed": 0})
        assert result.capabilities.position_encoding == types.PositionEncodingKind.Utf8
        await ed.wait_ready()
        text = "é = 'ü'\nvalue = \n"
        ed.open(PLAIN_URI, text, "plaintext")
        # UTF-8: "value = " is 8 bytes on line 1
        items = (await ed.complete(PLAIN_URI, 1, 8)).items
        assert items and all(i.range.start == types.Position(1, 8) for i in items)
    finally:
        await ed.close()


async def test_full_round_trip_open_change_complete_accept(editor):
    await editor.start(init_options={"candidates": 4, "invokedCandidates": 4, "maxTokens": 8, "steps": 4,
                                     "invokedSteps": 4, "seed": 0})
    stats = await editor.wait_ready()
    assert stats["engineReady"], stats
    assert any(s["state"] == "loading" for s in editor.statuses)
    # the load's percent is measured: while the weights are read, the share of their bytes read
    # (the message says how many), then "ready" at 100; the other stages carry no percent
    measured = [s for s in editor.statuses if "percent" in s]
    assert measured and measured[-1] == {"state": "loading", "message": "ready", "percent": 100}, editor.statuses
    assert len(measured) >= 6 and all(s["message"].startswith("reading weights: ") for s in measured[:-1])
    percents = [s["percent"] for s in measured]
    assert percents == sorted(percents) and len(set(percents[:-1])) == len(percents) - 1, percents  # each once
    assert {s.get("message") for s in editor.statuses if s["state"] == "loading" and "percent" not in s} >= {
        "loading tokenizer", "loading weights", "indexing vocabulary", "warming up"}, editor.statuses
    assert editor.progress, "model loading is reported with workDoneProgress"
    text = "first line\nsecond (\n"
    editor.open(PLAIN_URI, text, "plaintext")
    editor.change(PLAIN_URI, 2, (1, 8), (1, 8), ")")  # incremental sync: "second ()"
    text = "first line\nsecond ()\n"
    result = await editor.complete(PLAIN_URI, 1, 8)
    assert isinstance(result, types.InlineCompletionList) and 1 <= len(result.items) <= 4
    for item in result.items:
        # mid-line: the item replaces the rest of the line and carries it in its text
        assert item.range.start == types.Position(1, 8) and item.range.end == types.Position(1, 9)
        assert item.insert_text.endswith(")")
        accepted = apply(text, 1, item)
        assert accepted.startswith("first line\nsecond (") and accepted.endswith(")\n")
        assert not any(line != line.rstrip() for line in item.insert_text.split("\n"))
        assert item.command.command == "infill.accept"
    first = result.items[0]
    await editor.client.workspace_execute_command_async(types.ExecuteCommandParams(
        command=first.command.command, arguments=first.command.arguments))
    editor.client.protocol.notify("infill/didShowCompletion", first.command.arguments[0])
    editor.client.protocol.notify("infill/didPartiallyAcceptCompletion", {**first.command.arguments[0], "acceptedLength": 2})
    stats = await editor.stats()
    assert stats["accepted"] == 1 and stats["shown"] == 1 and stats["partiallyAccepted"] == 1
    assert stats["requests"] == 1
    assert stats["threads"] >= 1  # the CPU threads the engine chose at start


async def test_python_suggestions_shown_all_parse(editor):
    """What is shown for Python, judged by tests/judge.py (a fresh tree-sitter parse of the whole
    edited document and compile()), not by the server's own validator; seeded so there is something
    to judge."""
    await editor.start(init_options={"invokedCandidates": 8, "maxTokens": 8, "invokedSteps": 3, "seed": 0})
    await editor.wait_ready()
    text = "def f(x):\n    return \n"
    offset = len("def f(x):\n    return ")
    editor.open(PY_URI, text)
    judged = []
    for seed in (0, 1, 2, 3):  # the random fixture's suggestions that pass the validator: a few per seed
        editor.client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
            settings={"infill": {"seed": seed}}))
        for item in (await editor.complete(PY_URI, 1, 11)).items:
            accepted = apply(text, 1, item)
            middle = accepted[len(text[:offset]):len(accepted) - len(text[offset:])]
            assert accepted == text[:offset] + middle + text[offset:]
            judged.append((seed, middle, problems("python", text, offset, middle)))
    assert len(judged) >= 6, judged  # the precondition: suggestions to judge
    assert not [j for j in judged if j[2]], judged


async def test_cancel_request_stops_the_engine(editor):
    await editor.start(init_options={"invokedSteps": 256, "invokedCandidates": 8, "maxTokens": 64, "seed": 0})
    await editor.wait_ready()
    editor.open(PLAIN_URI, "some text ", "plaintext")
    protocol = editor.client.protocol
    pending = protocol.send_request_async(types.TEXT_DOCUMENT_INLINE_COMPLETION,
                                          editor.inline_params(PLAIN_URI, 0, 10), msg_id="slow-1")
    await asyncio.sleep(0.3)
    protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="slow-1"))
    with pytest.raises(JsonRpcException):
        await asyncio.wait_for(pending, 30)
    for _ in range(200):
        if (await editor.stats())["engineCancelled"] >= 1:
            break
        await asyncio.sleep(0.05)
    assert (await editor.stats())["engineCancelled"] == 1
    # the server keeps serving
    editor.client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
        settings={"infill": {"invokedSteps": 2, "maxTokens": 4}}))
    assert (await editor.complete(PLAIN_URI, 0, 10)).items


async def test_newer_request_for_a_document_cancels_the_older(editor):
    await editor.start(init_options={"invokedSteps": 256, "invokedCandidates": 8, "maxTokens": 64, "seed": 0})
    await editor.wait_ready()
    editor.open(PLAIN_URI, "abc ", "plaintext")
    first = asyncio.ensure_future(editor.complete(PLAIN_URI, 0, 4))
    await asyncio.sleep(0.3)
    editor.client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
        settings={"infill": {"invokedSteps": 2, "maxTokens": 4}}))
    second = await editor.complete(PLAIN_URI, 0, 4)
    assert not (await asyncio.wait_for(first, 30)).items
    assert second.items
    assert (await editor.stats())["engineCancelled"] == 1


async def test_typing_through_a_suggestion_is_answered_from_cache(editor):
    await editor.start(init_options={"candidates": 4, "maxTokens": 8, "steps": 3, "seed": 0})
    await editor.wait_ready()
    text = "x = "
    editor.open(PLAIN_URI, text, "plaintext")
    items = (await editor.complete(PLAIN_URI, 0, 4, invoked=False)).items
    suggestion = next((i.insert_text for i in items if len(i.insert_text) >= 2), None)
    # the precondition (seeded): a suggestion of two characters or more, one to type through
    assert suggestion is not None, [i.insert_text for i in items]
    editor.change(PLAIN_URI, 2, (0, 4), (0, 4), suggestion[0])
    again = (await editor.complete(PLAIN_URI, 0, 5, invoked=False)).items
    assert suggestion[1:] in [i.insert_text for i in again]
    stats = await editor.stats()
    assert stats["typingThrough"] == 1 and stats["requests"] == 2
    # after a settings change (here: another seed) what was shown is not typed through: it was
    # made under the old settings (another model, showInvalid, ...)
    editor.client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
        settings={"infill": {"seed": 1}}))
    await editor.complete(PLAIN_URI, 0, 5, invoked=False)
    assert (await editor.stats())["typingThrough"] == 1


async def test_a_result_computed_for_an_older_text_is_not_sent(editor):
    """A client that sends didChange without cancelling the request in flight (its result is for a
    text that is gone: ranges and the rest of the line as they were) gets nothing for it, and nothing
    of it is kept to type through."""
    await editor.start(stub=["foo"], stub_delay=1.0)
    await editor.wait_ready()
    editor.open(PLAIN_URI, "x = ", "plaintext")
    first = asyncio.ensure_future(editor.complete(PLAIN_URI, 0, 4, invoked=False))
    await asyncio.sleep(0.3)  # the request is in the engine
    editor.change(PLAIN_URI, 2, (0, 0), (0, 0), "y")  # edited before the cursor while it ran
    assert not (await asyncio.wait_for(first, 30)).items
    assert (await editor.stats())["stale"] == 1
    again = await editor.complete(PLAIN_URI, 0, 5, invoked=False)  # the same place in the new text
    assert [item.insert_text for item in again.items] == ["foo"]
    assert (await editor.stats())["typingThrough"] == 0


async def test_disabled_language_gets_nothing(editor):
    await editor.start(init_options={"languages": {"plaintext": False}, "seed": 0})
    await editor.wait_ready()
    editor.open(PLAIN_URI, "abc", "plaintext")
    editor.open("file:///tmp/notes.md", "abc", "markdown")
    assert (await editor.complete("file:///tmp/notes.md", 0, 3)).items  # the same text, enabled: suggestions
    assert not (await editor.complete(PLAIN_URI, 0, 3)).items


async def test_shutdown_and_exit_end_the_process():
    ed = Editor()
    await ed.start()
    assert await ed.close() == 0


async def test_serve_through_the_resident_engine(tmp_path):
    import subprocess
    import sys

    from lsp_harness import TINY_MODEL

    sock = tmp_path / "run" / "engine.sock"
    daemon = subprocess.Popen([sys.executable, "-m", "infill_lsp", "engine", "--model", str(TINY_MODEL),
                               "--socket", str(sock)], stderr=subprocess.DEVNULL)
    ed = Editor()
    try:
        for _ in range(600):
            if sock.exists():
                break
            await asyncio.sleep(0.05)
        await ed.start("--engine", str(sock), init_options={"invokedSteps": 2, "maxTokens": 4, "seed": 0})
        stats = await ed.wait_ready()
        assert stats["engineReady"], stats
        ed.open(PLAIN_URI, "hello ", "plaintext")
        assert (await ed.complete(PLAIN_URI, 0, 6)).items
        daemon.kill()
        daemon.wait(10)
        assert not (await ed.complete(PLAIN_URI, 0, 6)).items  # engine gone: empty, not an error
        assert ed.statuses[-1]["state"] == "error"
        assert ed.client._server.returncode is None
    finally:
        daemon.kill()
        await ed.close()


async def test_engine_that_comes_up_later_is_picked_up(tmp_path, monkeypatch):
    import subprocess
    import sys

    from lsp_harness import TINY_MODEL

    monkeypatch.setenv("INFILL_LSP_RETRY_S", "0.2")
    sock = tmp_path / "late" / "engine.sock"
    ed = Editor()
    daemon = None
    try:
        await ed.start("--engine", str(sock), init_options={"invokedSteps": 2, "maxTokens": 4, "seed": 0})
        stats = await ed.wait_ready()
        assert "unreachable" in stats["engineError"]
        ed.open(PLAIN_URI, "later ", "plaintext")
        assert not (await ed.complete(PLAIN_URI, 0, 6)).items
        daemon = subprocess.Popen([sys.executable, "-m", "infill_lsp", "engine", "--model", str(TINY_MODEL),
                                   "--socket", str(sock)], stderr=subprocess.DEVNULL)
        for _ in range(600):
            items = (await ed.complete(PLAIN_URI, 0, 6)).items
            if items:
                break
            await asyncio.sleep(0.1)
        assert items and (await ed.stats())["engineReady"]
    finally:
        if daemon is not None:
            daemon.kill()
        await ed.close()


async def test_full_document_sync_is_accepted_too(editor):
    await editor.start(init_options={"invokedSteps": 2, "maxTokens": 4, "seed": 0})
    await editor.wait_ready()
    editor.open(PLAIN_URI, "old text", "plaintext")
    editor.replace_all(PLAIN_URI, 2, "brand new\nline two ()\n")  # a client that only does full sync
    items = (await editor.complete(PLAIN_URI, 1, 10)).items
    assert items
    for item in items:
        assert item.range.start == types.Position(1, 10) and item.range.end == types.Position(1, 11)
        assert item.insert_text.endswith(")")


def _with_selection(params: types.InlineCompletionParams, start: tuple[int, int], end: tuple[int, int],
                    text: str) -> types.InlineCompletionParams:
    """The request VS Code sends while its completion menu is open (`selectedCompletionInfo`)."""
    params.context.selected_completion_info = types.SelectedCompletionInfo(
        range=types.Range(types.Position(*start), types.Position(*end)), text=text)
    return params


async def test_with_the_completion_menu_open_suggestions_extend_its_selected_item(editor):
    """VS Code shows an inline completion beside its completion menu only when the completion starts
    with the selected item's text over the item's range (LSP 3.18); it then completes the document
    as accepting the item would leave it: the same middles as a document that already holds it."""
    await editor.start(init_options={"invokedCandidates": 4, "maxTokens": 8, "invokedSteps": 3, "seed": 0})
    await editor.wait_ready()
    typed, chosen = "total = f(pri)\n", "print"
    editor.open(PLAIN_URI, typed, "plaintext")
    params = _with_selection(editor.inline_params(PLAIN_URI, 0, 13), (0, 10), (0, 13), chosen)
    items = (await editor.client.text_document_inline_completion_async(params)).items
    # the same request on a document that already holds the item
    accepted_uri = "file:///tmp/accepted.txt"
    editor.open(accepted_uri, "total = f(print)\n", "plaintext")
    expected = (await editor.complete(accepted_uri, 0, 15)).items
    assert items, "the precondition (seeded): suggestions"
    assert [i.insert_text for i in items] == [chosen + i.insert_text for i in expected]
    for item in items:
        assert item.insert_text.startswith(chosen) and item.insert_text.endswith(")")
        assert item.range.start == types.Position(0, 10) and item.range.end == types.Position(0, 14)  # to the line's end
        assert apply(typed, 0, item) == apply("total = f(print)\n", 0, next(
            e for e in expected if chosen + e.insert_text == item.insert_text))
    # accepting counts what the item added to the document: the selected item's rest and the middle
    first = items[0]
    await editor.client.workspace_execute_command_async(types.ExecuteCommandParams(
        command=first.command.command, arguments=first.command.arguments))
    stats = await editor.stats()
    assert stats["accepted"] == 1
    assert stats["acceptedChars"] == len(first.insert_text) - len("pri") - len(")")


async def test_a_selected_item_whose_range_does_not_hold_the_cursor_is_ignored(editor):
    await editor.start(init_options={"invokedCandidates": 4, "maxTokens": 8, "invokedSteps": 3, "seed": 0})
    await editor.wait_ready()
    editor.open(PLAIN_URI, "value = abc\n", "plaintext")
    plain = (await editor.complete(PLAIN_URI, 0, 11)).items
    for start, end in [((0, 0), (0, 3)), ((0, 11), (0, 9)), ((7, 0), (7, 1))]:
        params = _with_selection(editor.inline_params(PLAIN_URI, 0, 11), start, end, "abcdef")
        items = (await editor.client.text_document_inline_completion_async(params)).items
        assert [(i.insert_text, i.range) for i in items] == [(i.insert_text, i.range) for i in plain]
