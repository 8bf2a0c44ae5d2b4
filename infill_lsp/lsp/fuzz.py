"""A structured fuzzer for `infill-lsp serve`: the real server, over stdio, as an editor sees it.

It starts the server as a subprocess and writes messages built from lsprotocol's typed classes
(hypothesis' `st.from_type`) for every method the server registers: valid params, mutated params
(wrong types, missing fields, huge numbers, lone surrogates, astral characters, positions past the
end, unknown URIs), malformed framing, invalid envelopes and ids, traffic before `initialize` and
after `shutdown`. Every `probe_every` messages a valid inlineCompletion on an open document must be
answered within `PROBE_TIMEOUT_S`. It counts deaths (the server exited on its own; it is restarted
and the run goes on), hangs (a probe not answered in time), distinct tracebacks on the server's
stderr, requests never answered and lifecycle errors with the wrong code, then replays what came
before each failure to find its shortest reproducer.

    python scripts/fuzz.py --messages 10000 --seed 1
    infill-lsp bench --fuzz 10000 --seed 1

Settings that choose or load the engine (model, engineAddress, device, dtype) are never fuzzed:
changing them swaps the model by design. Budget settings are kept small (BUDGET_LIMITS): the
server clamps them to 32 candidates x 512 tokens x 256 steps, legal but minutes per completion
with the tiny model on a CPU. Wrong types, negatives and nulls there are still sent.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import threading
import time
import typing
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TINY_MODEL = ROOT / "fixtures" / "tiny-diffusiongemma"
PROBE_TIMEOUT_S = 10.0
# plaintext: every candidate is shown (Python ones must parse), so a probe shows the model ran
PROBE_URI = "file:///fuzz/probe.txt"
PROBE_TEXT = "the probe document\nwhere the cursor is \nand one more line\n"
PROBE_POSITION = {"line": 1, "character": 20}
# Settings the probe restores, so a fuzzed budget never makes the probe itself slow.
BASELINE = {"candidates": 2, "invokedCandidates": 2, "steps": 4, "invokedSteps": 4, "maxTokens": 8,
            "languages": {"*": True}, "showInvalid": False, "contextTokens": 256, "seed": None}
WINDOW = 8  # requests in flight before the fuzzer waits for answers
ANSWER_TIMEOUT_S = 30.0  # a request still unanswered this long after it was sent is "unanswered"
SERVER_NOT_INITIALIZED, INVALID_REQUEST, METHOD_NOT_FOUND = -32002, -32600, -32601
MAX_CONTENT_LENGTH = 64 * 1024 * 1024
TRACE = os.environ.get("INFILL_FUZZ_TRACE")  # a file to log every message sent to, for debugging

# Opened (again) at every start and probe, so fuzzed requests meet open documents and the model runs.
OPEN_DOCS = {"file:///fuzz/a.py": ("python", "import os\n\ndef area(r):\n    return \n\nprint(area(2))\n"),
             "file:///fuzz/b.txt": ("plaintext", "hello wor\nsecond line\n"),
             "file:///fuzz/ü😀.rs": ("rust", "fn main() {\n    let 😀 = \n}\n")}
URIS = ["file:///fuzz/a.py", "file:///fuzz/b.txt", "file:///fuzz/c%20d.js", "untitled:Untitled-1",
        "file:///fuzz/%C3%BC%F0%9F%98%80.rs", "file:///fuzz/ü😀.rs", "file:///fuzz/never-opened.py",
        "", "file://", "file:///%zz%", "http://example.invalid/x.py", "file:///fuzz/../../etc/passwd",
        "file:///fuzz/" + "d/" * 200 + "deep.py", "file:///fuzz/nul\x00.py", "file:///fuzz/\ud800.py"]
LANGUAGES = ["python", "plaintext", "javascript", "typescript", "rust", "go", "lua", "json", "c", "",
             "no-such-language", "🐍", "binary-blob"]
SNIPPETS = ["", "x", "def f(x):\n    return \n", "a\r\nb\r\nc", "\t\t\n\n\n", "😀😀😀\n𝔘𝔫𝔦", "\x00\x01\x7f",
            "é\u0301\u200d\u202e\ufeff", "class A:\n    def m(self):\n        pass\n" * 20,
            "function f() {\n  return \n}\n", "fn main() {\n    let x = \n}\n", "\ud800 lone \udfff"]
HUGE_NUMBERS = [2**31, 2**31 - 1, 2**32, 2**53 + 1, 2**63, 2**64, 10**30, -2**31 - 1, -1, 1e308, -1e308, 1.5,
                0.5e-300, -0.0]
WEIRD_STRINGS = ["\ud800", "a\udfffb", "\udc00\ud800", "😀", "\U0010ffff", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "\x00", "\u2028\u2029",
                 "e\u0301" * 50, "\u202eevil", "", " ", "\\", "\"", "%", "%00", "\r\n\r\n",
                 "Content-Length: 5\r\n\r\n"]


# -- the subprocess ---------------------------------------------------------------------------------
def serve_command(model: str | Path = TINY_MODEL) -> list[str]:
    exe = Path(sys.executable).with_name("infill-lsp")
    head = [str(exe)] if exe.exists() else [sys.executable, "-m", "infill_lsp"]
    return [*head, "serve", "--model", str(model)]


def _key(msg_id: Any) -> str:
    return json.dumps(msg_id)


class Server:
    """`infill-lsp serve` over pipes; replies parsed on a thread, stderr scanned for tracebacks."""

    def __init__(self, command: list[str], cwd: Path = ROOT) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     cwd=cwd, env=env, bufsize=0)
        self.cond = threading.Condition()
        self.replies: dict[str, dict] = {}
        self.null_errors: list[dict] = []
        self.bad_output = 0
        self.tracebacks: list[tuple[str, str, int]] = []  # (signature, text, messages written before it)
        self.stderr_tail: deque[str] = deque(maxlen=80)
        self.written = 0  # messages written: traceback attribution
        self._block_written = 0
        self._write_lock = threading.Lock()
        self._threads = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for thread in self._threads:
            thread.start()

    # writing
    def write(self, data: bytes, count: bool = True) -> bool:
        """False when the pipe is gone (the server died)."""
        try:
            with self._write_lock:
                self.proc.stdin.write(data)
                self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            return False
        if count:
            self.written += 1
        return True

    def alive(self) -> bool:
        return self.proc.poll() is None

    # reading
    def _read_stdout(self) -> None:
        stream = self.proc.stdout
        while True:
            length = None
            while True:
                line = stream.readline()
                if not line:
                    return
                if line in (b"\r\n", b"\n"):
                    break
                match = re.match(rb"Content-Length: *(\d+)", line, re.I)
                if match:
                    length = int(match.group(1))
            if length is None:
                self.bad_output += 1
                continue
            body = b""
            while len(body) < length:  # a raw pipe returns what it has, not `length` bytes
                chunk = stream.read(length - len(body))
                if not chunk:
                    return
                body += chunk
            try:
                message = json.loads(body)
            except ValueError:
                self.bad_output += 1
                continue
            self._dispatch(message)

    def _dispatch(self, message: dict) -> None:
        if not isinstance(message, dict):
            self.bad_output += 1
            return
        if "method" in message:
            if "id" in message:  # a request from the server (progress tokens, ...): answer it
                self.write(json_frame({"jsonrpc": "2.0", "id": message["id"], "result": None}), count=False)
            return
        with self.cond:
            if message.get("id") is None:
                self.null_errors.append(message)
            else:
                self.replies[_key(message["id"])] = message
            self.cond.notify_all()

    def _read_stderr(self) -> None:
        block: list[str] | None = None
        keep = os.environ.get("INFILL_FUZZ_STDERR")  # a file to append the server's whole stderr to
        sink = open(keep, "a", encoding="utf-8") if keep else None
        for raw in iter(self.proc.stderr.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if sink:
                sink.write(line + "\n")
                sink.flush()
            self.stderr_tail.append(line)
            chained = block and any(x.startswith(("During handling", "The above exception")) for x in block[-3:])
            if line.startswith("Traceback (most recent call last):") and not chained:
                if block:
                    self._traceback(block)
                block = [line]
                self._block_written = self.written  # the culprit came before this
            elif block is not None:
                if re.match(r"\d{4}-\d\d-\d\d ", line):  # the next log record: the block is over
                    self._traceback(block)
                    block = None
                else:
                    block.append(line)
        if block:
            self._traceback(block)

    def _traceback(self, block: list[str]) -> None:
        frames = [line.strip() for line in block if line.strip().startswith('File "')]
        ends = [line for line in block if line and not line[0].isspace() and not line.startswith(
            ("Traceback", "During handling", "The above"))]
        exc = (ends[-1] if ends else "?").split(":")[0]
        where = re.sub(r'^File "(?:.*/)?([^/"]+)", line (\d+), in (.*)$', r"\1:\2 \3", frames[-1]) if frames else "?"
        with self.cond:
            self.tracebacks.append((f"{exc} at {where}", "\n".join(block), self._block_written))
            self.cond.notify_all()

    def wait_reply(self, msg_id: Any, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        key = _key(msg_id)
        with self.cond:
            while key not in self.replies:
                left = deadline - time.monotonic()
                if left <= 0 or (not self.alive() and not self._threads[0].is_alive()):
                    return None
                self.cond.wait(min(left, 0.25))
            return self.replies[key]

    def wait_exit(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                stream.close()
            except Exception:
                pass


# -- wire helpers -------------------------------------------------------------------------------------
def frame(body: bytes) -> bytes:
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


_DEEP = re.compile(rb'"\\u0000deep:(\d+)\\u0000"')


def encode(obj: Any, ascii_only: bool = True) -> bytes:
    """JSON as an editor would write it: \\u escapes, or raw UTF-8 where it can be encoded.
    The string "\\x00deep:N\\x00" becomes N nested arrays (too deep to build as Python lists)."""
    data = None
    if not ascii_only:
        try:
            data = json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates can only travel escaped
            pass
    if data is None:
        data = json.dumps(obj).encode("ascii")
    return _DEEP.sub(lambda m: b"[" * int(m.group(1)) + b"]" * int(m.group(1)), data)


def json_frame(obj: Any) -> bytes:
    return frame(encode(obj))


def request(msg_id: Any, method: str, params: Any = None) -> dict:
    message = {"jsonrpc": "2.0", "id": msg_id, "method": method}
    if params is not None:
        message["params"] = params
    return message


def notification(method: str, params: Any = None) -> dict:
    message = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = params
    return message


# -- what is sent ------------------------------------------------------------------------------------------
@dataclass
class Message:
    kind: str  # valid, mutated, framing, envelope, lifecycle
    note: str  # method and what was done to it
    data: bytes  # exactly what goes on the wire
    reply_id: Any = None  # the id an answer must come back with (well-framed request, valid id)
    method: str | None = None  # for lifecycle expectations
    chunks: int = 1  # written in this many pieces
    lazy: Callable[[], bytes] | None = None  # data too big to keep (the 64 MiB+ frame)
    cancels_latest: bool = False  # a $/cancelRequest the runner points at the latest request in flight

    def wire(self) -> bytes:
        return self.lazy() if self.lazy else self.data


def _lsp_strategies():
    """hypothesis strategies for lsprotocol's attrs classes: st.from_type, plus the ranges
    lsprotocol's validators enforce and JSON values where a field is typed Any."""
    import attrs
    from hypothesis import strategies as st
    from lsprotocol import types, validators

    scalars = (st.none() | st.booleans() | st.integers(-2**31, 2**31 - 1)
               | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
    json_values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=3)
                               | st.dictionaries(st.text(max_size=8), kids, max_size=3), max_leaves=8)

    import collections.abc as abc

    def for_hint(hint):
        if isinstance(hint, (str, typing.ForwardRef)):  # a forward reference inside a Union
            hint = getattr(types, hint if isinstance(hint, str) else hint.__forward_arg__)
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if hint is typing.Any:
            return json_values
        if hint is types.LSPObject:  # "any JSON object" in lsprotocol: an empty attrs class
            return st.dictionaries(st.text(max_size=8), json_values, max_size=3)
        if origin is typing.Union:
            return st.one_of([for_hint(a) for a in args])
        if origin is typing.Literal:
            return st.sampled_from(args)
        if origin in (list, tuple, abc.Sequence) and args:
            return st.lists(for_hint(args[0]), max_size=3)
        if origin in (dict, abc.Mapping) and len(args) == 2:
            return st.dictionaries(for_hint(args[0]), for_hint(args[1]), max_size=3)
        if isinstance(hint, type) and attrs.has(hint):
            return st.deferred(lambda: st.from_type(hint))
        return st.from_type(hint)

    def ranged(validator):
        inner = getattr(validator, "validator", validator)  # attrs' optional(...)
        if inner is validators.uinteger_validator:
            return st.integers(0, 2**31 - 1)
        if inner is validators.integer_validator:
            return st.integers(-2**31, 2**31 - 1)
        return None

    def builds(cls):
        hints = typing.get_type_hints(cls, vars(types))
        fields = {}
        for attribute in attrs.fields(cls):
            if not attribute.init:
                continue
            hint = hints.get(attribute.name, attribute.type)
            number = ranged(attribute.validator)
            if number is not None:
                optional = type(None) in typing.get_args(hint)
                fields[attribute.name] = (st.none() | number) if optional else number
            else:
                fields[attribute.name] = for_hint(hint)  # optional fields too, not only the required ones
        return st.builds(cls, **fields)

    for name in dir(types):
        cls = getattr(types, name)
        if isinstance(cls, type) and attrs.has(cls):
            # a resolver function: evaluated when first drawn, after every class is registered
            st.register_type_strategy(cls, lambda thing: builds(thing))
    return st, json_values


class Generator:
    """Draws one message at a time from hypothesis' `data` (an st.data() draw in a @given run)."""

    def __init__(self) -> None:
        from lsprotocol import types
        from lsprotocol.converters import get_converter

        from . import protocol
        from .server import build_server

        self.st, self.json_values = _lsp_strategies()
        self.st.register_type_strategy(protocol.PartialAccept, self.st.builds(
            protocol.PartialAccept, id=self.st.text(max_size=8), accepted_length=self.st.integers(0, 2**31 - 1)))
        self.types = types
        self.converter = get_converter()
        fm = build_server().protocol.fm
        lifecycle = {types.INITIALIZE, types.SHUTDOWN, types.EXIT}
        self.methods = sorted((set(fm.features) | set(fm.builtin_features) | {types.CANCEL_REQUEST}) - lifecycle)
        self.params_types: dict[str, Any] = {}
        for method in self.methods:
            entry = types.METHOD_TO_TYPES.get(method)
            if entry is not None:
                self.params_types[method] = entry[2]
            elif method in protocol.CUSTOM_MESSAGE_TYPES:
                self.params_types[method] = typing.get_type_hints(protocol.CUSTOM_MESSAGE_TYPES[method])["params"]
            else:
                self.params_types[method] = None  # infill/stats, infill/health: anything
        self.requests = {m for m in self.methods if (types.METHOD_TO_TYPES.get(m, (None,))[0] or object).__name__
                         .endswith("Request")} | {"infill/stats", protocol.HEALTH}
        self.counter = 0

    def next_id(self, data) -> Any:
        self.counter += 1
        style = data.draw(self.st.sampled_from(["int", "int", "int", "str", "big", "neg", "weird"]))
        return {"int": self.counter, "str": f"req-{self.counter}", "big": 10**30 + self.counter,
                "neg": -self.counter, "weird": f"{self.counter}-😀\ud800"}[style]

    # -- params ------------------------------------------------------------------------------------
    def params(self, data, method: str) -> Any:
        st = self.st
        kind = self.params_types[method]
        if kind is None:
            return data.draw(st.one_of(st.just({}), self.json_values.filter(lambda v: isinstance(v, (dict, list)))))
        value = self.converter.unstructure(data.draw(st.from_type(kind)))
        if data.draw(st.integers(0, 9)) < 7:  # realistic: the documents and commands the server knows
            value = self.realistic(data, method, value)
        return value

    def realistic(self, data, method: str, value: Any) -> Any:
        st = self.st
        uri = data.draw(st.sampled_from(list(OPEN_DOCS)) | st.sampled_from(URIS))
        text = data.draw(st.sampled_from(SNIPPETS) | st.text(max_size=200)
                         | st.builds(lambda s, n: s * n, st.sampled_from(SNIPPETS[2:]), st.integers(1, 2000)))
        line = data.draw(st.integers(0, 6) | st.integers(0, 100) | st.sampled_from([2**31 - 1, 10**6]))
        character = data.draw(st.integers(0, 12) | st.integers(0, 100) | st.sampled_from([2**31 - 1, 10**6]))
        position = {"line": line, "character": character}
        t = self.types
        if method == t.TEXT_DOCUMENT_DID_OPEN:
            return {"textDocument": {"uri": uri, "languageId": data.draw(st.sampled_from(LANGUAGES)),
                                     "version": data.draw(st.integers(-5, 100)), "text": text}}
        if method == t.TEXT_DOCUMENT_DID_CHANGE:
            changes = []
            for _ in range(data.draw(st.integers(0, 3))):
                if data.draw(st.booleans()):
                    changes.append({"text": text})
                else:
                    end = {"line": data.draw(st.integers(0, 30)), "character": data.draw(st.integers(0, 40))}
                    changes.append({"range": {"start": position, "end": end}, "text": text[:50]})
            return {"textDocument": {"uri": uri, "version": data.draw(st.integers(0, 100))}, "contentChanges": changes}
        if method == t.TEXT_DOCUMENT_DID_CLOSE:
            return {"textDocument": {"uri": uri}}
        if method == t.TEXT_DOCUMENT_INLINE_COMPLETION:
            context = {"triggerKind": data.draw(st.sampled_from([1, 2]))}
            if data.draw(st.booleans()):  # the completion menu open: its item's range around the cursor, or anywhere
                before = {"line": line, "character": data.draw(st.integers(0, character))}
                after = {"line": line + data.draw(st.sampled_from([0, 0, 1])), "character": data.draw(st.integers(0, 60))}
                start, end = data.draw(st.sampled_from([(position, position), (before, position), (before, after),
                                                        (after, before)]))
                context["selectedCompletionInfo"] = {"range": {"start": start, "end": end}, "text": text[:20]}
            return {"textDocument": {"uri": uri}, "position": position, "context": context}
        if method == t.WORKSPACE_DID_CHANGE_CONFIGURATION:
            return {"settings": {"infill": self.settings(data)}}
        if method == t.WORKSPACE_EXECUTE_COMMAND:
            item = {"id": data.draw(st.sampled_from(["1.0", "2.1", "nope"]) | st.text(max_size=5))}
            return {"command": data.draw(st.sampled_from(["infill.accept", "infill.accept", "no.such.command"])),
                    "arguments": data.draw(st.sampled_from([[item], [], [item, item], [5], None]))}
        if method == "infill/didShowCompletion":
            return {"id": data.draw(st.sampled_from(["1.0", "1.1"]) | st.text(max_size=5))}
        if method == "infill/didPartiallyAcceptCompletion":
            return {"id": data.draw(st.sampled_from(["1.0", "1.1"]) | st.text(max_size=5)),
                    "acceptedLength": data.draw(st.integers(0, 100))}
        return value

    def settings(self, data) -> dict:
        st = self.st
        budget = {"candidates": st.integers(1, 4), "invokedCandidates": st.integers(1, 4),
                  "steps": st.integers(1, 8), "invokedSteps": st.integers(1, 8), "maxTokens": st.integers(1, 16),
                  "contextTokens": st.integers(16, 1024), "showInvalid": st.booleans(),
                  "seed": st.none() | st.integers(0, 2**31 - 1),
                  "languages": st.dictionaries(st.sampled_from(LANGUAGES + ["*"]), st.booleans(), max_size=3)}
        keys = data.draw(st.lists(st.sampled_from(sorted(budget)), max_size=4, unique=True))
        return {key: data.draw(budget[key]) for key in keys}

    # -- mutations -----------------------------------------------------------------------------------
    def mutate(self, data, value: Any) -> tuple[Any, str]:
        st = self.st
        notes = []
        for _ in range(data.draw(st.integers(1, 3))):
            paths = list(_paths(value))
            path = data.draw(st.sampled_from(paths))
            op = data.draw(st.sampled_from(["wrong type", "delete", "huge number", "lone surrogate", "astral",
                                            "long string", "past end", "unknown uri", "deep nesting", "null",
                                            "empty"]))
            old = _get_path(value, path)
            if op == "wrong type":
                new = data.draw(self.json_values.filter(lambda v, old=old: type(v) is not type(old)))
            elif op == "delete":
                if not path:
                    return None, "params removed"
                value = _del_path(value, path)
                notes.append(f"delete {_show(path)}")
                continue
            elif op == "huge number":
                new = data.draw(st.sampled_from(HUGE_NUMBERS))
            elif op == "lone surrogate":
                new = (old if isinstance(old, str) else "x") + data.draw(st.sampled_from(["\ud800", "\udfff", "\udc00x"]))
            elif op == "astral":
                new = data.draw(st.sampled_from(WEIRD_STRINGS))
            elif op == "long string":
                new = "x" * data.draw(st.sampled_from([10_000, 100_000, 1_000_000]))
            elif op == "past end":
                new = data.draw(st.sampled_from([2**31 - 1, 10**6, 99_999]))
            elif op == "unknown uri":
                new = data.draw(st.sampled_from(URIS[5:]))
            elif op == "deep nesting":
                new = f"\x00deep:{data.draw(st.sampled_from([50, 500, 5000]))}\x00"  # see encode()
            elif op == "null":
                new = None
            else:
                new = data.draw(st.sampled_from([{}, [], ""]))
            value = _set_path(value, path, new)
            notes.append(f"{op} at {_show(path)}")
        return value, ", ".join(notes)

    # -- one message ---------------------------------------------------------------------------------
    def draw(self, data, kind: str, method: str) -> Message:
        """One message of `kind` (for valid and mutated ones, of `method`); hypothesis draws the rest."""
        st = self.st
        if kind == "framing":
            return self.framing(data)
        if kind == "envelope":
            return self.envelope(data)
        if kind == "lifecycle":
            return self.lifecycle(data)
        params = self.params(data, method)
        note = method
        if kind == "mutated":
            params, what = self.mutate(data, params)
            note = f"{method}: {what}"
        if method == self.types.WORKSPACE_DID_CHANGE_CONFIGURATION:
            params = _tame_budget(params)
        is_request = method in self.requests
        msg_id = self.next_id(data) if is_request else None
        obj = request(msg_id, method, params) if is_request else notification(method, params)
        if params is None and kind == "mutated":
            obj.pop("params", None)
        deep = isinstance(obj.get("params"), str) and obj["params"].startswith("\x00deep:")  # an array on the wire
        if "params" in obj and not isinstance(obj["params"], (dict, list)) and not deep:
            method = "$envelope"  # params neither object nor array: InvalidRequest in any state
        if method == self.types.CANCEL_REQUEST and kind == "valid":
            obj["params"] = {"id": max(1, self.counter - data.draw(st.integers(0, 20)))}
        body = encode(obj, ascii_only=data.draw(st.booleans()))
        if b"[" * 1000 in body:  # deeper than a JSON parser goes: a parse error, answered with id null
            msg_id = None
        return Message(kind, note, frame(body), reply_id=msg_id, method=method,
                       chunks=data.draw(st.sampled_from([1] * 9 + [3])),
                       cancels_latest=method == self.types.CANCEL_REQUEST and kind == "valid")

    def valid_body(self, data) -> tuple[bytes, Any, str]:
        msg_id = self.next_id(data)
        obj = request(msg_id, "infill/stats", {})
        return encode(obj), msg_id, "infill/stats"

    def framing(self, data) -> Message:
        st = self.st
        body, msg_id, method = self.valid_body(data)
        variant = data.draw(st.sampled_from([
            "oversize", "oversize 64 MiB + 1", "oversize with the body sent", "no Content-Length", "negative length",
            "non-numeric length", "fractional length", "empty length", "LF-only headers", "lowercase header",
            "extra headers", "truncated body", "short length", "invalid UTF-8", "invalid JSON", "garbage",
            "zero length", "long header line", "CR-only line ends", "two lengths", "UTF-8 BOM", "deep JSON",
            "huge number literal", "NUL bytes", "split in pieces", "blank lines before"]))
        reply = None  # whether the server must still answer the request inside
        if variant == "oversize":
            data_ = b"Content-Length: 99999999999999\r\n\r\n" + body
        elif variant == "oversize 64 MiB + 1":
            data_ = b"Content-Length: %d\r\n\r\n" % (MAX_CONTENT_LENGTH + 1) + body
        elif variant == "oversize with the body sent":
            if data.draw(st.integers(0, 19)) != 0:  # 70 MB writes are slow: keep them rare
                data_ = b"Content-Length: %d\r\n\r\n" % (2**40) + body
            else:
                size = MAX_CONTENT_LENGTH + 1
                lazy = lambda: b"Content-Length: %d\r\n\r\n" % size + b'{"x": "' + b"a" * (size - 9) + b'"}'
                return Message("framing", variant, b"", lazy=lazy)
        elif variant == "no Content-Length":
            data_ = b"Content-Type: application/vscode-jsonrpc; charset=utf-8\r\n\r\n" + body
        elif variant == "negative length":
            data_ = b"Content-Length: -%d\r\n\r\n" % len(body) + body
        elif variant == "non-numeric length":
            data_ = b"Content-Length: " + data.draw(st.sampled_from([b"abc", b"0x10", b"1e3", b"\xff\xfe", b"12 34"])) \
                + b"\r\n\r\n" + body
        elif variant == "fractional length":
            data_ = b"Content-Length: %d.5\r\n\r\n" % len(body) + body
        elif variant == "empty length":
            data_ = b"Content-Length: \r\n\r\n" + body
        elif variant == "LF-only headers":
            data_, reply = b"Content-Length: %d\n\n" % len(body) + body, msg_id
        elif variant == "lowercase header":
            data_, reply = b"content-length: %d\r\n\r\n" % len(body) + body, msg_id
        elif variant == "extra headers":
            data_, reply = (b"Content-Type: application/vscode-jsonrpc; charset=utf-8\r\nX-Fuzz: 1\r\n"
                            b"Content-Length: %d\r\n\r\n" % len(body) + body), msg_id
        elif variant == "truncated body":
            data_ = b"Content-Length: %d\r\n\r\n" % (len(body) + data.draw(st.integers(1, 3000))) + body
        elif variant == "short length":
            data_ = b"Content-Length: %d\r\n\r\n" % max(1, len(body) // 2) + body
        elif variant == "invalid UTF-8":
            bad = body.replace(b"stats", b"st\xff\xfe\xc3ts")
            data_ = frame(bad)
        elif variant == "invalid JSON":
            data_ = frame(data.draw(st.sampled_from([body[:-1], b"{", b"{this is not json", b"nul", b"'x'",
                                                      body + b"}", b"NaN", b'{"a": 1,}'])))
        elif variant == "garbage":
            data_ = data.draw(st.binary(min_size=1, max_size=300))
        elif variant == "zero length":
            data_ = b"Content-Length: 0\r\n\r\n"
        elif variant == "long header line":
            data_, reply = b"X-Long: " + b"a" * data.draw(st.integers(9000, 100_000)) + b"\r\n" + frame(body), None
        elif variant == "CR-only line ends":
            data_ = b"Content-Length: %d\r\r" % len(body) + body
        elif variant == "two lengths":
            data_ = b"Content-Length: %d\r\nContent-Length: %d\r\n\r\n" % (len(body) + 7, len(body)) + body
        elif variant == "UTF-8 BOM":
            data_ = frame(b"\xef\xbb\xbf" + body)
        elif variant == "deep JSON":
            depth = data.draw(st.sampled_from([1000, 100_000]))
            data_ = frame(b"[" * depth + b"]" * depth)
        elif variant == "huge number literal":
            data_ = frame(b'{"jsonrpc": "2.0", "id": 1' + b"9" * 5000 + b', "method": "infill/stats"}')
        elif variant == "NUL bytes":
            data_ = frame(body[:10] + b"\x00\x00" + body[10:])
        elif variant == "split in pieces":
            return Message("framing", variant, frame(body), reply_id=msg_id, method=method, chunks=7)
        else:  # blank lines before a good frame
            data_, reply = b"\r\n\r\n\n" + frame(body), msg_id
        return Message("framing", variant, data_, reply_id=reply, method=method if reply is not None else None)

    def envelope(self, data) -> Message:
        st = self.st
        variant = data.draw(st.sampled_from([
            "id object", "id array", "id float", "id bool", "id null", "jsonrpc missing", "jsonrpc 1.0",
            "jsonrpc number", "method number", "method null", "params number", "params string", "top-level array",
            "top-level number", "top-level string", "top-level null", "empty object", "batch",
            "unknown response", "malformed error response", "request on a notification method",
            "notification on a request method", "id empty string"]))
        good = request(0, "infill/stats", {})
        reply_id = None
        obj: Any
        if variant.startswith("id ") and variant != "id empty string":
            bad = {"id object": {"a": 1}, "id array": [1], "id float": 1.5, "id bool": True, "id null": None}[variant]
            obj = {**good, "id": bad}
        elif variant == "id empty string":
            obj, reply_id = {**good, "id": ""}, ""
        elif variant == "jsonrpc missing":
            obj = {k: v for k, v in good.items() if k != "jsonrpc"}
        elif variant == "jsonrpc 1.0":
            obj = {**good, "jsonrpc": "1.0"}
        elif variant == "jsonrpc number":
            obj = {**good, "jsonrpc": 2.0}
        elif variant == "method number":
            obj = {**good, "method": 5}
        elif variant == "method null":
            obj = {**good, "method": None}
        elif variant == "params number":
            obj = {**good, "params": 5}
        elif variant == "params string":
            obj = {**good, "params": "x"}
        elif variant == "top-level array":
            obj = []
        elif variant == "top-level number":
            obj = 5
        elif variant == "top-level string":
            obj = "x"
        elif variant == "top-level null":
            obj = None
        elif variant == "empty object":
            obj = {}
        elif variant == "batch":
            obj = [request(self.next_id(data), "infill/stats", {})] * 2
        elif variant == "unknown response":
            obj = {"jsonrpc": "2.0", "id": 987654321, "result": {"x": 1}}
        elif variant == "malformed error response":
            obj = {"jsonrpc": "2.0", "id": 987654322, "error": data.draw(self.json_values)}
        elif variant == "request on a notification method":
            reply_id = self.next_id(data)
            obj = request(reply_id, "textDocument/didClose", {"textDocument": {"uri": URIS[0]}})
        else:
            obj = notification("textDocument/inlineCompletion", {"textDocument": {"uri": URIS[0]},
                                                                  "position": {"line": 0, "character": 0},
                                                                  "context": {"triggerKind": 1}})
        if reply_id is not None:
            obj["id"] = reply_id
        method = "$invalid" if variant == "request on a notification method" else "infill/stats"
        return Message("envelope", variant, frame(encode(obj)), reply_id=reply_id, method=method)

    def lifecycle(self, data) -> Message:
        st = self.st
        variant = data.draw(st.sampled_from(["initialize again", "unknown request", "unknown $/ request",
                                             "unknown notification", "unknown $/ notification", "initialized again"]))
        if variant == "initialize again":
            msg_id = self.next_id(data)
            obj = request(msg_id, "initialize", {"processId": None, "capabilities": {}})
            return Message("lifecycle", variant, json_frame(obj), reply_id=msg_id, method="initialize")
        if variant in ("unknown request", "unknown $/ request"):
            msg_id = self.next_id(data)
            name = data.draw(st.sampled_from(["textDocument/completion", "workspace/symbol", "foo", "", "😀"])
                             | st.text(max_size=10))
            name = ("$/" + name) if "$/" in variant else name
            known = name in self.types.METHOD_TO_TYPES or name in self.methods  # hypothesis reuses literals
            return Message("lifecycle", variant, json_frame(request(msg_id, name, {})), reply_id=msg_id,
                           method=None if known else "$unknown")
        if variant == "initialized again":
            return Message("lifecycle", variant, json_frame(notification("initialized", {})))
        name = data.draw(st.sampled_from(["textDocument/didSave", "$/setTrace", "$/progress", "foo"]))
        name = ("$/" + name.lstrip("$/")) if "$/" in variant else name
        return Message("lifecycle", variant, json_frame(notification(name, {})))


# The server clamps budgets to 32 candidates x 512 tokens x 256 steps, which is legal input but
# takes minutes per completion with the tiny model on a CPU: the fuzzer keeps numbers small there.
BUDGET_LIMITS = {"candidates": 4, "invokedCandidates": 4, "steps": 8, "invokedSteps": 8, "maxTokens": 16,
                 "contextTokens": 1024, "suffixTokens": 64, "prefixChars": 20000, "suffixChars": 4000}


def _tame_budget(params: Any) -> Any:
    settings = params.get("settings") if isinstance(params, dict) else None
    infill = settings.get("infill", settings) if isinstance(settings, dict) else None
    if isinstance(infill, dict):
        for key, limit in BUDGET_LIMITS.items():
            value = infill.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > limit:
                infill[key] = limit
    return params


def _paths(value: Any, prefix: tuple = ()):
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, prefix + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value[:5]):
            yield from _paths(item, prefix + (index,))


def _get_path(value: Any, path: tuple) -> Any:
    for step in path:
        value = value[step]
    return value


def _set_path(value: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    parent = _get_path(value, path[:-1])
    parent[path[-1]] = new
    return value


def _del_path(value: Any, path: tuple) -> Any:
    parent = _get_path(value, path[:-1])
    del parent[path[-1]]
    return value


def _show(path: tuple) -> str:
    return "params" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


# The requests that run the pipeline and the notifications that change what it sees come up more often.
METHOD_WEIGHTS = {"textDocument/inlineCompletion": 5, "textDocument/didChange": 2, "textDocument/didOpen": 2}
KINDS = {"valid": 35, "mutated": 30, "framing": 15, "envelope": 12, "lifecycle": 8}  # weights, %


def generate(count: int, seed: int) -> list[Message]:
    """`count` messages, the same ones for the same seed. A seeded Random lays out the mix (which
    kind of message, which method: hypothesis would favour the first of each list); hypothesis
    (generate phase only, seeded) fills in each stratum's messages."""
    generator = Generator()
    rng = random.Random(seed)
    kinds = rng.choices(list(KINDS), weights=list(KINDS.values()), k=count)
    weights = [METHOD_WEIGHTS.get(method, 1) for method in generator.methods]
    plan = [(kind, rng.choices(generator.methods, weights)[0] if kind in ("valid", "mutated") else "")
            for kind in kinds]
    pools = {stratum: _draw_many(generator, stratum, need, seed * 7919 + number)
             for number, (stratum, need) in enumerate(sorted(Counter(plan).items()))}
    return [pools[stratum].pop() for stratum in plan]


def _draw_many(generator: Generator, stratum: tuple[str, str], count: int, seed: int) -> list[Message]:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st

    out: list[Message] = []
    for attempt in range(20):  # a small space (3 valid $/setTrace params) runs dry: go again
        @settings(max_examples=count - len(out), database=None, phases=[Phase.generate], deadline=None,
                  suppress_health_check=list(HealthCheck))
        @hypothesis_seed(seed * 100 + attempt)
        @given(st.data())
        def draw(data) -> None:
            if len(out) < count:
                out.append(generator.draw(data, *stratum))

        draw()
        if len(out) >= count:
            break
    while len(out) < count:  # still short: repeat what there is
        out.append(out[len(out) % max(1, len(out))])
    out.reverse()  # popped from the end: hypothesis' order
    return out


# -- the run ----------------------------------------------------------------------------------------------
@dataclass
class Failure:
    what: str  # death, hang, traceback
    signature: str
    windows: list[list[Message]]  # per occurrence, what was sent just before it (oldest first)
    detail: str = ""
    count: int = 1
    reproducer: list[Message] | None = None
    reproduced: bool = False

    def describe_reproducer(self) -> str:
        repro = self.reproducer
        if not repro:
            return "(not reduced)"
        head = "" if self.reproduced else "not reproduced on a fresh server; sent before it: "
        if len(repro) > 1:
            head += f"{len(repro)} messages, the last: "
        return f"{head}{repro[-1].note}: `{_show_bytes(repro[-1].wire())}`"


@dataclass
class Report:
    messages: int = 0
    seed: int = 0
    seconds: float = 0.0
    deaths: int = 0
    hangs: int = 0
    tracebacks: int = 0  # distinct signatures
    unanswered: int = 0
    wrong_answers: int = 0
    planned_restarts: int = 0
    probes: int = 0
    probes_with_items: int = 0  # probes the model answered with at least one suggestion
    probe_ms_max: float = 0.0
    bad_output: int = 0  # frames from the server the fuzzer could not parse
    completions: int = 0  # inlineCompletion requests that reached the pipeline (infill/stats)
    shown: int = 0
    kinds: Counter = field(default_factory=Counter)
    failures: list[Failure] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)

    def ok(self) -> bool:
        return not (self.deaths or self.hangs or self.tracebacks or self.unanswered or self.wrong_answers
                    or self.bad_output)

    def table(self) -> str:
        rows = [("messages sent", self.messages), ("deaths", self.deaths), ("hangs", self.hangs),
                ("distinct tracebacks", self.tracebacks), ("unanswered requests", self.unanswered),
                ("wrong lifecycle/method errors", self.wrong_answers),
                ("malformed frames from the server", self.bad_output), ("probes answered (with suggestions)", f"{self.probes} ({self.probes_with_items})"),
                ("slowest probe (ms)", f"{self.probe_ms_max:.0f}"),
                ("completions run (model or typing cache)", self.completions), ("planned restarts", self.planned_restarts),
                ("wall time (s)", f"{self.seconds:.0f}")]
        out = [f"infill-lsp fuzz: seed {self.seed}", "", "| | |", "|---|---|"]
        out += [f"| {name} | {value} |" for name, value in rows]
        out += ["", "sent by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(self.kinds.items()))]
        if self.failures:
            out += ["", "| failure | count | shortest reproducer |", "|---|---|---|"]
            for failure in self.failures:
                out.append(f"| {failure.what}: {failure.signature} | {failure.count} | {failure.describe_reproducer()} |")
        for line in self.wrong[:10]:
            out.append(f"wrong answer: {line}")
        return "\n".join(out)


def _show_bytes(data: bytes, limit: int = 240) -> str:
    text = repr(data)[2:-1]
    return text if len(text) <= limit else text[:limit] + f"... ({len(data)} bytes)"


class Runner:
    def __init__(self, command: list[str], *, probe_every: int = 250, restart_every: int = 2500,
                 log: Callable[[str], None] = print) -> None:
        self.command = command
        self.probe_every = probe_every
        self.restart_every = restart_every
        self.log = log
        self.report = Report()
        self.server: Server | None = None
        self.state = "down"  # pre-init, running, shut down
        self.outstanding: dict[str, tuple[float, Message, int | None]] = {}
        self.history: deque[tuple[int, int, Message]] = deque(maxlen=400)  # (server, messages written, message)
        self.serial = 0  # which server: `written` counts from 0 on each
        self.seen_tracebacks = 0
        self.ids = 0

    # -- server lifecycle ----------------------------------------------------------------------------
    def start(self, pre_init: list[Message] = ()) -> None:
        """A new server; `pre_init` goes before initialize (requests must get ServerNotInitialized)."""
        self.server = Server(self.command)
        self.serial += 1
        self.seen_tracebacks = 0
        self.outstanding.clear()
        self.state = "pre-init"
        for message in pre_init:
            if message.method != "initialize":  # that one would initialize it
                self.send(message)
                if self.state != "pre-init":  # it died and was restarted
                    return
        self.initialize()

    def _id(self, prefix: str) -> str:
        self.ids += 1
        return f"{prefix}-{self.ids}"

    def initialize(self) -> None:
        server = self.server
        msg_id = self._id("init")
        params = {"processId": None, "capabilities": {"general": {"positionEncodings": ["utf-16"]}},
                  "initializationOptions": BASELINE}
        server.write(json_frame(request(msg_id, "initialize", params)), count=False)
        reply = server.wait_reply(msg_id, 60)
        if reply is None or "result" not in reply:
            raise RuntimeError(f"the server did not initialize: {reply}; stderr: {list(server.stderr_tail)[-10:]}")
        server.write(json_frame(notification("initialized", {})), count=False)
        self.state = "running"
        self.open_probe()
        self.drain(ANSWER_TIMEOUT_S)  # the pre-initialize requests

    def open_probe(self) -> None:
        """Baseline settings, the probe's document and the documents fuzzed requests aim at."""
        self.server.write(json_frame(notification("workspace/didChangeConfiguration",
                                                  {"settings": {"infill": BASELINE}})), count=False)
        for uri, (language, text) in {PROBE_URI: ("plaintext", PROBE_TEXT), **OPEN_DOCS}.items():
            self.server.write(json_frame(notification("textDocument/didOpen", {"textDocument": {
                "uri": uri, "languageId": language, "version": 1, "text": text}})), count=False)

    def count_completions(self) -> None:
        """How many completions this server ran (infill/stats), for the report."""
        msg_id = self._id("stats")
        self.server.write(json_frame(request(msg_id, "infill/stats", {})), count=False)
        reply = self.server.wait_reply(msg_id, PROBE_TIMEOUT_S)
        result = reply.get("result") if reply else None
        if isinstance(result, dict):
            self.report.completions += int(result.get("requests") or 0)
            self.report.shown += int(result.get("shown") or 0)

    def restart(self) -> None:
        self.collect_tracebacks()
        self.server.kill()
        self.report.bad_output += self.server.bad_output
        self.start()

    def died(self, during: str) -> None:
        code = self.server.proc.poll()
        tail = " | ".join(list(self.server.stderr_tail)[-3:])
        self.report.deaths += 1
        self.fail("death", f"exit code {code}", detail=f"during {during}; stderr: {tail}", candidates=self.recent(64))
        self.restart()

    def hang(self, what: str) -> None:
        self.report.hangs += 1
        self.fail("hang", what, candidates=self.recent(self.probe_every))
        self.restart()

    def exit_server(self) -> None:
        """exit: the process must end, with 0 after shutdown and 1 without (LSP)."""
        server = self.server
        expected = 0 if self.state == "shut down" else 1
        self.drain(ANSWER_TIMEOUT_S)
        server.write(json_frame(notification("exit")), count=False)
        code = server.wait_exit(PROBE_TIMEOUT_S)
        self.collect_tracebacks()
        if code is None:
            self.hang("exit did not end the process")
            return
        if code != expected:
            self.report.wrong_answers += 1
            self.report.wrong.append(f"exit ended the process with {code}, expected {expected}")
        server.kill()
        self.report.bad_output += server.bad_output
        self.server = None
        self.state = "down"

    def shutdown(self) -> bool:
        self.drain(ANSWER_TIMEOUT_S)
        self.count_completions()
        msg_id = self._id("shutdown")
        self.server.write(json_frame(request(msg_id, "shutdown")), count=False)
        if self.server.wait_reply(msg_id, PROBE_TIMEOUT_S) is None:
            self.hang("shutdown not answered")
            return False
        self.state = "shut down"
        return True

    # -- sending -----------------------------------------------------------------------------------
    def recent(self, count: int, upto: int | None = None) -> list[Message]:
        """The last `count` messages sent, or those the current server had read by its `upto`th."""
        return [m for serial, n, m in self.history if upto is None or (serial == self.serial and n <= upto)][-count:]

    def send(self, message: Message) -> None:
        server = self.server
        data = message.wire()
        if message.cancels_latest and self.outstanding:
            target = json.loads(next(reversed(self.outstanding)))
            data = json_frame(notification("$/cancelRequest", {"id": target}))
        self.report.messages += 1
        self.report.kinds[message.kind] += 1
        if message.chunks > 1:
            step = max(1, len(data) // message.chunks)
            ok = True
            for start in range(0, len(data), step):
                ok = ok and server.write(data[start:start + step], count=False)
                time.sleep(0.002)
            server.written += 1
        else:
            ok = server.write(data)
        self.history.append((self.serial, server.written, message))
        if TRACE:
            with open(TRACE, "a", encoding="utf-8") as sink:
                sink.write(f"{time.strftime('%H:%M:%S')} #{self.report.messages} {message.kind}: "
                           f"{message.note[:100]!r} {_show_bytes(data, 160)}\n")
        if message.reply_id is not None:
            self.outstanding[_key(message.reply_id)] = (time.monotonic(), message, self.expected_code(message))
        if not ok or not server.alive():
            if not server.alive() or server.wait_exit(2) is not None:
                self.died(message.note)
            return
        if len(self.outstanding) >= WINDOW:
            self.drain(ANSWER_TIMEOUT_S, keep=WINDOW // 2)
        if len(server.tracebacks) > self.seen_tracebacks:
            self.collect_tracebacks()

    def expected_code(self, message: Message) -> int | None:
        """The error code the protocol prescribes for this request now, when it does."""
        if message.method == "$envelope":
            return INVALID_REQUEST
        if self.state == "pre-init":
            return SERVER_NOT_INITIALIZED
        if self.state == "shut down":
            return INVALID_REQUEST
        return {"$invalid": INVALID_REQUEST, "initialize": INVALID_REQUEST,
                "$unknown": METHOD_NOT_FOUND}.get(message.method or "")

    def drain(self, timeout: float, keep: int = 0) -> None:
        """Wait for answers until at most `keep` requests are in flight; one still unanswered
        `timeout` seconds after it was sent is counted."""
        server = self.server
        while len(self.outstanding) > keep:
            key, (sent_at, message, code) = next(iter(self.outstanding.items()))
            reply = server.wait_reply(json.loads(key), max(0.0, sent_at + timeout - time.monotonic()))
            del self.outstanding[key]
            if reply is None:
                if not server.alive():
                    self.outstanding.clear()
                    return
                self.report.unanswered += 1
                self.fail("unanswered", message.note, candidates=[message])
                continue
            self.check_reply(message, reply, code)

    def check_reply(self, message: Message, reply: dict, code: int | None) -> None:
        error = reply.get("error")
        got = error.get("code") if isinstance(error, dict) else None
        if code is not None and got != code:
            self.report.wrong_answers += 1
            self.report.wrong.append(f"{message.note}: expected error {code}, got {got or 'a result'}")

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the engine is loaded (or failed): a settings change that reloads it would otherwise
        make the probe's answer an empty list. The probe's own 10 s start after this."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.server.alive():
            msg_id = self._id("ready")
            self.server.write(json_frame(request(msg_id, "infill/stats", {})), count=False)
            reply = self.server.wait_reply(msg_id, PROBE_TIMEOUT_S)
            result = reply.get("result") if reply else None
            if not isinstance(result, dict) or result.get("engineReady") or result.get("engineError"):
                return
            time.sleep(0.1)

    def probe(self) -> None:
        server = self.server
        self.open_probe()
        self.wait_ready()
        msg_id = self._id("probe")
        started = time.monotonic()
        server.write(json_frame(request(msg_id, "textDocument/inlineCompletion", {
            "textDocument": {"uri": PROBE_URI}, "position": PROBE_POSITION, "context": {"triggerKind": 1}})),
            count=False)
        reply = server.wait_reply(msg_id, PROBE_TIMEOUT_S)
        elapsed = (time.monotonic() - started) * 1000
        if reply is None:
            if not server.alive():
                self.died("probe")
            else:
                self.hang(f"probe unanswered after {PROBE_TIMEOUT_S:.0f} s")
            return
        result = reply.get("result")
        if not isinstance(result, dict) or not isinstance(result.get("items"), list):
            self.report.wrong_answers += 1
            self.report.wrong.append(f"probe answered {str(reply)[:200]}")
        self.report.probes += 1
        if isinstance(result, dict) and result.get("items"):
            self.report.probes_with_items += 1
        self.report.probe_ms_max = max(self.report.probe_ms_max, elapsed)
        self.drain(ANSWER_TIMEOUT_S)
        self.collect_tracebacks()

    def collect_tracebacks(self) -> None:
        server = self.server
        if server is None:
            return
        with server.cond:
            new = server.tracebacks[self.seen_tracebacks:]
            self.seen_tracebacks = len(server.tracebacks)
        for signature, text, written in new:
            # the server is behind the writer by at most a pipe's worth of messages
            self.fail("traceback", signature, detail=text, candidates=self.recent(64, upto=written))

    def fail(self, what: str, signature: str, detail: str = "", candidates: list[Message] | None = None) -> None:
        for failure in self.report.failures:
            if failure.what == what and failure.signature == signature:
                failure.count += 1
                if len(failure.windows) < 8:
                    failure.windows.append(list(candidates or []))
                return
        self.report.failures.append(Failure(what, signature, [list(candidates or [])], detail))
        self.log(f"  {what}: {signature}")

    # -- the whole run --------------------------------------------------------------------------------
    def run(self, messages: list[Message], seed: int) -> Report:
        started = time.monotonic()
        self.report.seed = seed
        pre = 5  # messages sent before each initialize
        self.start(pre_init=messages[:pre])
        index, cycle = pre, 0
        while index < len(messages):
            if self.server is None:  # after a planned exit: a new server, pre-initialize traffic first
                self.start(pre_init=messages[index:index + pre])
                index += pre
                continue
            self.send(messages[index])
            index += 1
            if index % self.probe_every == 0 and self.state == "running":
                self.probe()
                self.log(f"  {index} messages: {self.report.deaths} deaths, {self.report.hangs} hangs, "
                         f"{len({f.signature for f in self.report.failures if f.what == 'traceback'})} tracebacks")
            if self.restart_every and index % self.restart_every == 0 and index + 2 * pre < len(messages):
                # every other cycle shutdown first; then a few messages, which after shutdown must be
                # refused with InvalidRequest; then exit, which must end the process (0 or 1)
                cycle += 1
                if cycle % 2 == 1 and not self.shutdown():
                    continue
                for message in messages[index:index + pre]:
                    self.send(message)
                index += pre
                if self.state == "running":
                    self.count_completions()
                self.report.planned_restarts += 1
                self.exit_server()
        if self.server is not None and self.state == "running":
            self.probe()
        if self.server is not None:
            if self.state == "running":
                self.shutdown()
            if self.server is not None:
                self.exit_server()
        self.report.seconds = time.monotonic() - started
        self.report.tracebacks = len({f.signature for f in self.report.failures if f.what == "traceback"})
        return self.report

    # -- reproducers -----------------------------------------------------------------------------------
    def reduce(self, budget_s: float = 600.0, per_failure_s: float = 240.0) -> None:
        """For each failure, replay what was sent before its first occurrence on a fresh server
        (after initialize), then shrink it by delta debugging (ddmin: keep a chunk, or drop one,
        while the rest still fails the same way); a single message left is then swapped for a
        shorter one of the same method that fails too. What is left is the reproducer."""
        deadline = time.monotonic() + budget_s
        for failure in self.report.failures:
            window = failure.windows[0] if failure.windows else []
            if not window or time.monotonic() > deadline:
                continue
            if not self.replay(failure, window):
                failure.reproducer = window  # needs more than what was sent just before it
                continue
            stop = min(deadline, time.monotonic() + per_failure_s)
            current = _ddmin(window, lambda messages: self.replay(failure, messages), stop)
            if len(current) == 1:
                method = current[0].note.split(":")[0]
                pool = {m.wire(): m for w in failure.windows for m in w}.values()
                shorter = sorted((m for m in pool if m.note.split(":")[0] == method
                                  and len(m.wire()) < len(current[0].wire())), key=lambda m: len(m.wire()))
                for message in shorter[:3]:
                    if time.monotonic() < stop and self.replay(failure, [message]):
                        current = [message]
                        break
            failure.reproducer, failure.reproduced = current, True

    def replay(self, failure: Failure, messages: list[Message]) -> bool:
        runner = Runner(self.command, probe_every=10**9, restart_every=0, log=lambda _: None)
        try:
            runner.start()
            for message in messages:
                runner.send(message)
            if failure.what == "death":
                return runner.report.deaths > 0 or runner.server.wait_exit(3) is not None
            runner.probe()
            if failure.what == "unanswered":
                runner.drain(ANSWER_TIMEOUT_S)
            time.sleep(0.5)
            runner.collect_tracebacks()
            return any(f.what == failure.what and f.signature == failure.signature for f in runner.report.failures)
        except Exception:
            return False
        finally:
            if runner.server is not None:
                runner.server.kill()


def _ddmin(items: list, fails: Callable[[list], bool], deadline: float) -> list:
    """Zeller's delta debugging: a smaller list that still `fails` (1-minimal when time allows)."""
    granularity = 2
    while len(items) >= 2 and time.monotonic() < deadline:
        size = -(-len(items) // granularity)
        chunks = [items[i:i + size] for i in range(0, len(items), size)]
        for chunk in reversed(chunks):  # the trigger is usually near the end
            if time.monotonic() < deadline and fails(chunk):
                items, granularity = chunk, 2
                break
        else:
            for index in range(len(chunks)):
                rest = [m for j, c in enumerate(chunks) if j != index for m in c]
                if time.monotonic() < deadline and fails(rest):
                    items, granularity = rest, max(granularity - 1, 2)
                    break
            else:
                if granularity >= len(items):
                    break
                granularity = min(len(items), granularity * 2)
    return items


def run(messages: int = 10_000, seed: int = 1, *, model: str | Path = TINY_MODEL, probe_every: int = 250,
        restart_every: int = 2500, reduce: bool = True, log: Callable[[str], None] = print) -> Report:
    log(f"generating {messages} messages (seed {seed})")
    plan = generate(messages, seed)
    log(f"fuzzing `{' '.join(serve_command(model))}`")
    runner = Runner(serve_command(model), probe_every=probe_every, restart_every=restart_every, log=log)
    report = runner.run(plan, seed)
    if reduce and report.failures:
        log("reducing failures to their shortest reproducer")
        runner.reduce()
    return report


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", "-n", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--model", default=str(TINY_MODEL))
    parser.add_argument("--probe-every", type=int, default=250)
    parser.add_argument("--restart-every", type=int, default=2500,
                        help="shutdown/exit and start a new server every this many messages (0: never)")
    parser.add_argument("--no-reduce", action="store_true", help="do not look for shortest reproducers")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    return fuzz_main(args.messages, args.seed, model=args.model, probe_every=args.probe_every,
                     restart_every=args.restart_every, reduce=not args.no_reduce, json_path=args.json)


def fuzz_main(messages: int, seed: int, *, model: str | Path = TINY_MODEL, probe_every: int = 250,
              restart_every: int = 2500, reduce: bool = True, json_path: str | None = None) -> int:
    try:
        import hypothesis  # noqa: F401
    except ImportError:
        print("the fuzzer needs hypothesis: pip install 'infill-lsp[test]'", file=sys.stderr)
        return 2
    report = run(messages, seed, model=model, probe_every=probe_every, restart_every=restart_every, reduce=reduce,
                 log=lambda line: print(line, file=sys.stderr, flush=True))
    print(report.table())
    if json_path:
        Path(json_path).write_text(json.dumps({
            "messages": report.messages, "seed": seed, "seconds": round(report.seconds, 1), "deaths": report.deaths,
            "hangs": report.hangs, "tracebacks": report.tracebacks, "unanswered": report.unanswered,
            "wrong_answers": report.wrong_answers, "probes": report.probes, "kinds": dict(report.kinds),
            "failures": [{"what": f.what, "signature": f.signature, "count": f.count,
                          "reproducer": [_show_bytes(m.wire(), 2000) for m in f.reproducer or []],
                          "reproduced": f.reproduced}
                         for f in report.failures]}, indent=2))
    return 0 if report.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
