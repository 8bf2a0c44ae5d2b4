"""Never dies, never hangs: raw bytes on the server's stdin, as an editor (or a broken one) writes them.

Each test drives `infill-lsp serve` over stdio with hand-made frames and reads the replies back;
after every bad input the server must still answer a good request, and log no traceback.
"""

from __future__ import annotations

import json
import time

import pytest

from infill_lsp.lsp import fuzz, transport
from infill_lsp.lsp.fuzz import Server, frame, json_frame, notification, request, serve_command

INVALID_REQUEST, PARSE_ERROR, INVALID_PARAMS, SERVER_NOT_INITIALIZED = -32600, -32700, -32602, -32002
DOC = "file:///tmp/robust.py"


def start() -> Server:
    return Server(serve_command())


def initialize(server: Server) -> None:
    server.write(json_frame(request("init", "initialize", {"processId": None, "capabilities": {},
                                                           "initializationOptions": fuzz.BASELINE})))
    assert "result" in server.wait_reply("init", 60)
    server.write(json_frame(notification("initialized", {})))


def stats_answered(server: Server, msg_id) -> None:
    """The server still reads and answers: a good request right after the bad bytes."""
    server.write(json_frame(request(msg_id, "infill/stats", {})))
    reply = server.wait_reply(msg_id, 15)
    assert reply is not None, f"no answer to {msg_id}; stderr: {list(server.stderr_tail)[-5:]}"
    assert "result" in reply or reply["error"]["code"] == SERVER_NOT_INITIALIZED, reply


def no_tracebacks(server: Server) -> None:
    time.sleep(0.3)
    assert server.alive(), f"the server died: {list(server.stderr_tail)[-5:]}"
    assert not server.tracebacks, server.tracebacks[0][1]


def null_errors(server: Server, count: int, timeout: float = 10) -> list[dict]:
    deadline = time.monotonic() + timeout
    while len(server.null_errors) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return server.null_errors


@pytest.fixture
def server():
    srv = start()
    yield srv
    srv.kill()


def test_a_frame_over_the_cap_is_rejected_before_and_after_initialize(server):
    assert transport.MAX_CONTENT_LENGTH == 64 * 1024 * 1024
    server.write(b"Content-Length: 99999999999999\r\n\r\n{}")
    stats_answered(server, "before")
    initialize(server)
    server.write(b"Content-Length: 99999999999999\r\n\r\n{}")
    server.write(b"Content-Length: %d\r\n\r\n" % (transport.MAX_CONTENT_LENGTH + 1))  # no body at all
    stats_answered(server, "after")
    size = transport.MAX_CONTENT_LENGTH + 1  # and one whose body really comes: skipped, not stored
    server.write(b"Content-Length: %d\r\n\r\n" % size + b'{"x": "' + b"a" * (size - 9) + b'"}')
    stats_answered(server, "after-real-body")
    no_tracebacks(server)
    assert any("above the 67108864 byte limit" in line for line in server.stderr_tail)


@pytest.mark.parametrize("bad", [
    b"Content-Type: application/vscode-jsonrpc\r\n\r\n{}",  # no Content-Length
    b"Content-Length: -5\r\n\r\n{}",
    b"Content-Length: abc\r\n\r\n{}",
    b"Content-Length: 12.5\r\n\r\n{}",
    b"Content-Length: 2\r\r{}",  # CR-only line ends
    b"Content-Length: 500\r\n\r\n{\"jsonrpc\": \"2.0\"",  # truncated: the next frame follows
    b"Content-Length: 70\r\n\r\n" + json.dumps(request("short", "infill/stats", {})).encode(),
    b"\x00\xff\xfe garbage without a header\n",
    b"X-Long: " + b"a" * 50_000 + b"\r\n",
])
def test_malformed_framing_never_kills_the_server(server, bad):
    initialize(server)
    server.write(bad)
    stats_answered(server, "next")  # the frame after the bad one is read and answered
    no_tracebacks(server)


def test_lf_only_headers_and_split_writes_are_read(server):
    initialize(server)
    body = json.dumps(request("lf", "infill/stats", {})).encode()
    server.write(b"Content-Length: %d\n\n" % len(body) + body)
    assert "result" in server.wait_reply("lf", 15)
    data = json_frame(request("split", "infill/stats", {}))
    for i in range(0, len(data), 5):
        server.write(data[i:i + 5], count=False)
        time.sleep(0.005)
    assert "result" in server.wait_reply("split", 15)
    no_tracebacks(server)


@pytest.mark.parametrize("body", [
    b"\xff\xfe\xfd not utf-8",
    b'{"jsonrpc": "2.0", "id": 1, "method": "infill/st\xc3ts"}',
    b"{this is not json",
    b"",
    b"\xef\xbb\xbf{}",
    b"[" * 100_000 + b"]" * 100_000,  # deeper than the JSON parser goes
])
def test_bodies_that_are_not_utf8_json_get_a_parse_error(server, body):
    initialize(server)
    server.write(frame(body))
    errors = null_errors(server, 1)
    assert errors and errors[0]["error"]["code"] == PARSE_ERROR and errors[0]["id"] is None
    stats_answered(server, "next")
    no_tracebacks(server)


@pytest.mark.parametrize("bad_id", [{"a": 1}, [1], 1.5, True, None])
def test_invalid_ids_get_invalid_request_with_a_null_id(server, bad_id):
    initialize(server)
    server.write(json_frame({"jsonrpc": "2.0", "id": bad_id, "method": "infill/stats", "params": {}}))
    errors = null_errors(server, 1)
    assert errors and errors[0] == {"jsonrpc": "2.0", "id": None, "error": errors[0]["error"]}
    assert errors[0]["error"]["code"] == INVALID_REQUEST
    assert set(server.replies) == {json.dumps("init")}, "the request must not run"
    stats_answered(server, "next")
    no_tracebacks(server)


def test_other_invalid_envelopes(server):
    initialize(server)
    for obj in [[request(1, "infill/stats", {})], 5, {"jsonrpc": "1.0", "id": "v1", "method": "infill/stats"},
                {"jsonrpc": "2.0", "id": "m", "method": 7}, {"jsonrpc": "2.0", "id": "p", "method": "infill/stats",
                                                             "params": "x"}]:
        server.write(json_frame(obj))
    assert server.wait_reply("v1", 10)["error"]["code"] == INVALID_REQUEST  # a readable id is echoed
    assert server.wait_reply("m", 10)["error"]["code"] == INVALID_REQUEST
    assert server.wait_reply("p", 10)["error"]["code"] == INVALID_REQUEST
    assert [e["error"]["code"] for e in null_errors(server, 2)] == [INVALID_REQUEST] * 2
    # a request on a notification method is answered, not left waiting
    server.write(json_frame(request("n", "textDocument/didClose", {"textDocument": {"uri": DOC}})))
    assert server.wait_reply("n", 10)["error"]["code"] == INVALID_REQUEST
    no_tracebacks(server)


def test_requests_before_initialize_and_exit_without_shutdown(server):
    server.write(json_frame(request(1, "textDocument/inlineCompletion", {
        "textDocument": {"uri": DOC}, "position": {"line": 0, "character": 0}, "context": {"triggerKind": 1}})))
    server.write(json_frame(notification("textDocument/didOpen", {"textDocument": {
        "uri": DOC, "languageId": "python", "version": 1, "text": "x = "}})))  # dropped
    server.write(json_frame(request(2, "infill/stats", {})))
    assert server.wait_reply(1, 10)["error"]["code"] == SERVER_NOT_INITIALIZED
    assert server.wait_reply(2, 10)["error"]["code"] == SERVER_NOT_INITIALIZED
    initialize(server)
    server.write(json_frame(request("again", "initialize", {"processId": None, "capabilities": {}})))
    assert server.wait_reply("again", 10)["error"]["code"] == INVALID_REQUEST
    no_tracebacks(server)
    server.write(json_frame(notification("exit")))
    assert server.wait_exit(15) == 1  # exit without shutdown: 1 (LSP)
    assert not server.tracebacks


def test_requests_after_shutdown_and_exit(server):
    initialize(server)
    server.write(json_frame(request("bye", "shutdown")))
    assert server.wait_reply("bye", 10)["result"] is None
    server.write(json_frame(request("late", "infill/stats", {})))
    server.write(json_frame(request("late2", "textDocument/inlineCompletion", {
        "textDocument": {"uri": DOC}, "position": {"line": 0, "character": 0}, "context": {"triggerKind": 1}})))
    assert server.wait_reply("late", 10)["error"]["code"] == INVALID_REQUEST
    assert server.wait_reply("late2", 10)["error"]["code"] == INVALID_REQUEST
    server.write(json_frame(notification("exit")))
    assert server.wait_exit(15) == 0
    assert not server.tracebacks


def test_exit_before_initialize_ends_the_process(server):
    server.write(json_frame(notification("exit")))
    assert server.wait_exit(15) == 1


def test_every_handler_validates_its_params(server):
    initialize(server)
    server.write(json_frame(notification("textDocument/didOpen", {"textDocument": {
        "uri": DOC, "languageId": "python", "version": 1, "text": "x = "}})))
    bad_requests = {
        "ic1": ("textDocument/inlineCompletion", {"textDocument": {"uri": None}, "position": {"line": "0"}}),
        "ic2": ("textDocument/inlineCompletion", {"textDocument": {"uri": DOC}, "position": {
            "line": -1, "character": 2**40}, "context": {"triggerKind": 1}}),
        "ic3": ("textDocument/inlineCompletion", {"textDocument": {"uri": DOC}, "position": {
            "line": True, "character": 0}, "context": {"triggerKind": 7}}),
        "cmd0": ("workspace/executeCommand", {"command": "infill.accept"}),
        "cmd1": ("workspace/executeCommand", {"command": "infill.accept", "arguments": [5]}),
        "cmd2": ("workspace/executeCommand", {"command": "infill.accept", "arguments": [{"id": "1"}, {"id": "2"}]}),
        "cmd3": ("workspace/executeCommand", {"command": "no.such.command", "arguments": []}),
    }
    for msg_id, (method, params) in bad_requests.items():
        server.write(json_frame(request(msg_id, method, params)))
    for msg_id in bad_requests:
        reply = server.wait_reply(msg_id, 15)
        assert reply and reply.get("error", {}).get("code") == INVALID_PARAMS, (msg_id, reply)
    assert "$.params.text_document.uri" in server.wait_reply("ic1", 1)["error"]["message"]
    assert "takes 1 argument" in server.wait_reply("cmd0", 1)["error"]["message"]
    for method, params in [  # notifications: dropped with a warning
        ("textDocument/didChange", {"textDocument": {"uri": "file:///never-opened", "version": 2},
                                    "contentChanges": [{"text": "x"}]}),
        ("textDocument/didOpen", {"textDocument": {"uri": DOC, "languageId": 5, "version": "1", "text": None}}),
        ("infill/didShowCompletion", {"id": None}),
        ("infill/didPartiallyAcceptCompletion", {"id": "1.0", "acceptedLength": -3}),
        ("infill/didPartiallyAcceptCompletion", ["junk"]),
        ("$/cancelRequest", {"id": {"an": "object"}}),
        ("window/workDoneProgress/cancel", {"token": [1]}),
        ("workspace/didChangeConfiguration", {"settings": {"infill": {"candidates": "lots", "steps": None}}}),
        ("workspace/didChangeConfiguration", {"settings": {"infill": {"showInvalid": "x\udfff",
                                                                      "languages": {"\ud800": True}}}}),
        ("workspace/didChangeConfiguration", {"settings": {"infill": {"languages": json.loads("[" * 900 + "]" * 900)}}}),
        ("notebookDocument/didChange", {"notebookDocument": {"uri": "nb", "version": 1}, "change": {}}),
    ]:
        server.write(json_frame(notification(method, params)))
    server.write(json_frame(request("ok", "textDocument/inlineCompletion", {
        "textDocument": {"uri": DOC}, "position": {"line": 0, "character": 4}, "context": {"triggerKind": 1}})))
    assert "items" in server.wait_reply("ok", 30)["result"]
    no_tracebacks(server)


def test_lone_surrogates_and_astral_characters_in_a_document(server):
    initialize(server)
    text = "ab\ud800cd 😀\udfff x\n𝔘\U0010ffff"  # \ud800 escapes: valid JSON, not valid Unicode
    server.write(json_frame(notification("textDocument/didOpen", {"textDocument": {
        "uri": DOC, "languageId": "plaintext", "version": 1, "text": text}})))
    for character in (6, 8, 9, 30):  # 8: between the halves of 😀; 30: past the end of the line
        server.write(json_frame(request(f"c{character}", "textDocument/inlineCompletion", {
            "textDocument": {"uri": DOC}, "position": {"line": 0, "character": character},
            "context": {"triggerKind": 1}})))
        assert "items" in server.wait_reply(f"c{character}", 30)["result"]
    no_tracebacks(server)


def test_fuzz_2000_messages():
    pytest.importorskip("hypothesis")
    started = time.monotonic()
    report = fuzz.run(2000, seed=20260, restart_every=1000, reduce=False, log=lambda _: None)
    print(report.table(), f"\n{time.monotonic() - started:.0f} s with generation")
    assert report.messages >= 1990
    assert (report.deaths, report.hangs, report.tracebacks) == (0, 0, 0), report.table()
    assert (report.unanswered, report.wrong_answers, report.bad_output) == (0, 0, 0), report.table()
    assert report.probes >= 8 and report.planned_restarts == 1
