"""A scripted inline-completion server for client tests: it answers like infill-lsp (insertText =
middle + rest of the line, range = [cursor, end of line], an infill.accept command per item) with
middles the test chooses, and logs every message it gets as a JSON line.

    python scripted_server.py LOG_PATH '{"middles": ["a", "b\\nc"], "delay": 0.0}'

Optional: "version" (initialize's serverInfo.version; none without it); "load" (seconds: like
infill-lsp while its model loads, infill/status `loading` after initialized and empty answers until
`idle`, which comes that long after the first inlineCompletion request); "replace_rest": true (items
replace the rest of the line: insertText = middle alone); "hang_on_shutdown": true (no answer to
shutdown, exit ignored: only a signal stops it). Its process id is logged as {"pid": N}.

Only the standard library: it stands in for the real server where a test needs exact text
(several lines, tabs, non-ASCII) that the random fixture model cannot be asked for.
"""

import json
import os
import sys
import threading
import time

log_path, script = sys.argv[1], json.loads(sys.argv[2])
documents: dict[str, str] = {}
write_lock = threading.Lock()
request_count = 0
ready = threading.Event()
if script.get("load") is None:
    ready.set()


def log(message):
    with open(log_path, "a", encoding="utf-8") as f:
        f.write(json.dumps(message) + "\n")


def send(message):
    body = json.dumps(message).encode()
    with write_lock:
        sys.stdout.buffer.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        sys.stdout.buffer.flush()


def read():
    headers = {}
    while True:
        line = sys.stdin.buffer.readline()
        if not line:
            return None
        line = line.strip()
        if not line:
            break
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    return json.loads(sys.stdin.buffer.read(int(headers["content-length"])))


def utf16_to_index(line: str, character: int) -> int:
    units = 0
    for i, ch in enumerate(line):
        if units >= character:
            return i
        units += 2 if ord(ch) > 0xFFFF else 1
    return len(line)


def utf16_len(text: str) -> int:
    return sum(2 if ord(ch) > 0xFFFF else 1 for ch in text)


def complete(message):
    global request_count
    request_count += 1
    params = message["params"]
    lines = documents[params["textDocument"]["uri"]].split("\n")
    pos = params["position"]
    line = lines[pos["line"]]
    rest = line[utf16_to_index(line, pos["character"]):]
    if not ready.is_set():
        send({"jsonrpc": "2.0", "id": message["id"], "result": {"items": []}})
        if request_count == 1:
            threading.Timer(script["load"], become_ready).start()
        return
    time.sleep(script.get("delay", 0))
    items = [
        {
            "insertText": middle if script.get("replace_rest") else middle + rest,
            "range": {"start": pos, "end": {"line": pos["line"], "character": utf16_len(line)}},
            "command": {"title": "accept", "command": "infill.accept", "arguments": [{"id": f"{request_count}.{i}"}]},
        }
        for i, middle in enumerate(script["middles"])
    ]
    send({"jsonrpc": "2.0", "id": message["id"], "result": {"items": items}})


def become_ready():
    ready.set()
    send({"jsonrpc": "2.0", "method": "infill/status", "params": {"state": "idle"}})


def main():
    while (message := read()) is not None:
        log(message)
        method = message.get("method")
        if method == "initialize":
            log({"pid": os.getpid()})
            result = {"capabilities": {
                "textDocumentSync": 1,
                "inlineCompletionProvider": {},
                "executeCommandProvider": {"commands": ["infill.accept"]},
            }}
            if script.get("version") is not None:
                result["serverInfo"] = {"name": "infill-lsp", "version": script["version"]}
            send({"jsonrpc": "2.0", "id": message["id"], "result": result})
        elif method == "initialized" and not ready.is_set():
            send({"jsonrpc": "2.0", "method": "infill/status", "params": {"state": "loading", "percent": 0}})
        elif method == "textDocument/didOpen":
            documents[message["params"]["textDocument"]["uri"]] = message["params"]["textDocument"]["text"]
        elif method == "textDocument/didChange":
            documents[message["params"]["textDocument"]["uri"]] = message["params"]["contentChanges"][-1]["text"]
        elif method == "textDocument/inlineCompletion":
            threading.Thread(target=complete, args=(message,), daemon=True).start()
        elif method in ("shutdown", "exit") and script.get("hang_on_shutdown"):
            continue
        elif method == "shutdown":
            send({"jsonrpc": "2.0", "id": message["id"], "result": None})
        elif method == "exit":
            return
        elif "id" in message and method is not None:
            send({"jsonrpc": "2.0", "id": message["id"], "result": None})


if __name__ == "__main__":
    main()
