"""What the editor is shown parses, and is readable: judged from outside the validator.

The server runs for real (a subprocess over stdio, the tiny random model, a fixed `seed`,
`showInvalid` false). Every suggestion it returns is applied to the document the way an editor
accepts it, and the whole edited document is judged by an independent judge: a fresh, full
tree-sitter parse (straight from the grammar wheels, every node visited, no region, no
incremental reparse) must have no ERROR/MISSING node that the document without the suggestion
does not have at the same place (so garbage folded into an error that was already there counts
as added), and for Python, CPython's `compile()` must accept it whenever it accepted the
document without it. The random model's output is mostly noise, full of control characters
and U+FFFD, which is the point: a validator that lets garbage through is caught here.

The judge is tests/judge.py. Two more tests give the pipeline candidates carrying every kind of
unreadable character (U+FFFD, controls, lone surrogates): `pipeline.complete` with a fake engine,
and the real server over stdio with a stub engine (tests/stub_server.py); none reaches the editor.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lsprotocol import types

from infill_lsp import pipeline
from infill_lsp.config import Settings
from infill_lsp.types import Budget, Candidate, EngineInfo, InfillResult
from judge import GRAMMARS, UNREADABLE, added_errors, compiles, error_nodes, problems
from lsp_harness import Editor, apply

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def test_the_judge_sees_garbage_that_an_error_count_does_not():
    broken = "def f(x):\n    if x\n        pass\n    return \n"  # the `if` lacks its colon
    offset = broken.index("return ") + len("return ")
    assert not added_errors("python", broken, offset, "x * 2")
    for garbage in ("x +", ":", "x y"):  # each leaves the error count as it was
        edited = broken[:offset] + garbage + broken[offset:]
        assert len(error_nodes("python", edited.encode())) == len(error_nodes("python", broken.encode()))
        assert added_errors("python", broken, offset, garbage), garbage
    js = "function g(a) {\n  return foo(;\n}\n"
    at = js.index("foo(") + 4
    assert not added_errors("javascript", js, at, "a)") and added_errors("javascript", js, at, "a ] (")


def _sample_holes() -> list[tuple[str, str, int, int]]:
    holes = []
    for hole in json.loads((FIXTURES / "holes.json").read_text()):
        if hole["language"] in GRAMMARS:
            text = (FIXTURES / hole["file"]).read_text()
            holes.append((hole["language"], text, hole["line"] - 1, hole["col"] - 1))
    return holes


def _marked(language: str, text: str) -> tuple[str, str, int, int]:
    """A document with its cursor written as `|`."""
    offset = text.index("|")
    text = text[:offset] + text[offset + 1:]
    line = text.count("\n", 0, offset)
    return language, text, line, offset - (text.rfind("\n", 0, offset) + 1)


HOLES = _sample_holes() + [
    _marked("python", "values = [3, 1, 2]\ntotal = |\nprint(total)\n"),
    _marked("python", "def f(x):\n    if x > 0:\n        |\n    return x\n"),
    _marked("python", "import os\n\npath = os.path.join(|)\nprint(path)\n"),  # mid-line: ")" follows
    _marked("python", "def half(:\n    pass\n\n\ndef area(w, h):\n    return |\n"),  # broken elsewhere
    _marked("python", "def g(x):\n    y = [1, 2\n    z = 3\n    return |\n"),  # broken in the same function
    _marked("python", "def h(x):\n    if x\n        pass\n    return |\n"),  # the `if` lacks its colon
    _marked("python", "def k(x):\n    y = max(|\n    return y\n"),  # broken at the cursor
    _marked("javascript", "const xs = [1, 2, 3];\nconst ys = |;\nconsole.log(ys);\n"),
    _marked("javascript", "function f(a) {\n  return |;\n}\n"),
    _marked("javascript", "function g(a) {\n  if (a) {\n    |\n  }\n}\n"),
    _marked("javascript", "function k(a) {\n  return Math.max(|;\n}\n"),  # broken at the cursor
    _marked("javascript", "function half( {\n}\n\nfunction area(w, h) {\n  return |;\n}\n"),  # broken elsewhere
]
SEEDS = (0, 1)


async def test_every_shown_suggestion_parses_by_an_independent_judge():
    assert {h[0] for h in HOLES} == set(GRAMMARS) and len(HOLES) >= 10
    editor = Editor()
    shown: dict[str, int] = {language: 0 for language in GRAMMARS}
    verdicts, compiled_checks, broken_checks = [], 0, 0
    try:
        await editor.start(init_options={"seed": SEEDS[0], "showInvalid": False, "invokedCandidates": 8,
                                         "maxTokens": 8, "invokedSteps": 4})
        stats = await editor.wait_ready()
        assert stats["engineReady"], stats
        for seed in SEEDS:
            editor.client.workspace_did_change_configuration(
                types.DidChangeConfigurationParams(settings={"infill": {"seed": seed}}))
            for index, (language, text, line, column) in enumerate(HOLES):
                uri = f"file:///tmp/shown/{seed}/{index}.{'py' if language == 'python' else 'js'}"
                editor.open(uri, text, language)
                baseline_compiles = language == "python" and compiles(text)
                baseline_broken = bool(error_nodes(language, text.encode()))
                rest = text.split("\n")[line][column:]
                offset = sum(len(row) + 1 for row in text.split("\n")[:line]) + column
                for item in (await editor.complete(uri, line, column)).items:
                    shown[language] += 1
                    compiled_checks += baseline_compiles
                    broken_checks += baseline_broken
                    assert item.insert_text.endswith(rest)
                    middle = item.insert_text[: len(item.insert_text) - len(rest)]
                    edited = apply(text, line, item)
                    assert edited == text[:offset] + middle + text[offset:]
                    verdicts.append((language, seed, index, middle,
                                     not UNREADABLE.search(item.insert_text),
                                     not added_errors(language, text, offset, middle),
                                     not baseline_compiles or compiles(edited)))
    finally:
        await editor.close()
    # the precondition: there is something to judge, in both languages, by each judge, in documents
    # that parsed and in documents that were already broken
    print(f"judged {shown}, {compiled_checks} by compile(), {broken_checks} in broken documents")
    assert all(count >= 3 for count in shown.values()), shown
    assert compiled_checks >= 3 and broken_checks >= 3 and sum(shown.values()) - broken_checks >= 3
    bad = [v for v in verdicts if not all(v[4:])]
    assert not bad, bad


# -- pipeline with a fake engine: nothing unreadable is ever returned ---------------------------

SPLIT = b"x + len('caf\xc3".decode("utf-8", errors="replace")  # a byte-level token split inside "é"
RAW = [
    "x + 1\ufffd",  # U+FFFD at the end: cut, "x + 1" shown
    SPLIT,  # cut to "x + len('caf": invalid, not shown
    "x * 2\x00 + 1",  # NUL
    "x - 3\x1b[31m",  # an escape sequence
    "x // 4\rprint(x)",  # a bare carriage return
    "x % 5\ud83d",  # a lone surrogate (half of a UTF-16 pair)
    "\ufffd\x00",  # nothing readable at all
    "x ** 6\x07\x0b\x0c\x7f\x85",
    "\ud83d\ude00 + x",  # a surrogate pair left as two code points
    "abs(x)\r\n",  # CRLF is a newline, not a bare carriage return
]
BAD_CHARACTERS = ["\ufffd", "\x00", "\x1b", "\r", "\ud83d", "\ude00", "\x07", "\x0b", "\x0c", "\x7f", "\x85"]


class FakeEngine:
    info = EngineInfo(model="fake", backend="test")

    def __init__(self, texts: list[str]):
        self.texts = texts

    def infill(self, request, cancel=None):
        return InfillResult(candidates=[Candidate(text=t, score=-0.01 * i) for i, t in enumerate(self.texts)])

    def close(self) -> None:
        pass


@pytest.mark.parametrize("show_invalid", [False, True])
@pytest.mark.parametrize("language_id,text,offset", [
    ("python", "def f(x):\n    return \n", len("def f(x):\n    return ")),
    ("plaintext", "value: \n", len("value: ")),  # no grammar: nothing is validated, still cleaned
])
def test_pipeline_never_returns_unreadable_characters(language_id, text, offset, show_invalid):
    assert all(any(bad in raw for raw in RAW) for bad in BAD_CHARACTERS)  # the engine does send them
    result = pipeline.complete(FakeEngine(RAW), text, offset, language_id=language_id,
                               settings=Settings(show_invalid=show_invalid), budget=Budget(candidates=len(RAW)))
    texts = [item.text for item in result.items]
    assert len(texts) >= 6, texts  # the precondition: items to check
    for item in texts:
        assert not any(bad in item for bad in BAD_CHARACTERS), repr(item)
    # cut before the first unreadable character, not dropped
    assert {"x + 1", "x * 2", "x - 3", "x // 4", "x % 5", "x ** 6", "abs(x)"} <= set(texts)
    if language_id == "python" and not show_invalid:
        assert "x + len('caf" not in texts  # what is left of the split is invalid: not shown


SHOWN_CLEAN = {"x + 1", "x * 2", "x - 3", "x // 4", "x % 5", "x ** 6", "abs(x)"}  # each raw's readable head


async def test_unreadable_candidates_are_never_shown_over_stdio():
    """The server over stdio, its model a stub that answers RAW: what the editor gets is judged."""
    documents = [  # (language, uri, text, line, column): the cursor ends its line
        ("plaintext", "file:///tmp/unreadable.txt", "value: \n", 0, 7),  # no grammar: nothing validated
        ("python", "file:///tmp/unreadable.py", "def f(x):\n    return \n", 1, 11),
    ]
    editor = Editor()
    try:
        await editor.start(stub=RAW, init_options={"invokedCandidates": len(RAW), "showInvalid": False})
        stats = await editor.wait_ready()
        assert stats["engineReady"], stats
        for language, uri, text, line, column in documents:
            editor.open(uri, text, language)
            offset = sum(len(row) + 1 for row in text.split("\n")[:line]) + column
            items = (await editor.complete(uri, line, column)).items
            shown = [item.insert_text for item in items]
            assert len(shown) >= len(SHOWN_CLEAN), (language, shown)  # the precondition: items to judge
            for item in items:
                assert item.range.start == item.range.end == types.Position(line, column)
                assert apply(text, line, item) == text[:offset] + item.insert_text + text[offset:]
                assert not any(bad in item.insert_text for bad in BAD_CHARACTERS), (language, item.insert_text)
                assert not problems(language, text, offset, item.insert_text), (language, item.insert_text)
            # cut before the first unreadable character, not dropped: each raw candidate's readable head
            assert SHOWN_CLEAN <= set(shown), (language, shown)
    finally:
        await editor.close()


class RecordingEngine(FakeEngine):
    def __init__(self, texts: list[str]):
        super().__init__(texts)
        self.requests = []

    def infill(self, request, cancel=None):
        self.requests.append(request)
        return super().infill(request, cancel)


LINE_ABOVE = "def total(xs):\n    result = 0\n    return result\n"  # the cursor: before `    return`


def test_at_a_line_start_before_text_suggestions_are_whole_lines_above_it():
    """HumanEval single-line's cursor. The engine sees the suffix after a line break (the hole ends
    before the break, as in the file's tokens), and each candidate gets the break back: what is
    shown inserts whole lines above the cursor's line; one that would not parse there is refused."""
    offset = LINE_ABOVE.index("    return")
    engine = RecordingEngine(["    for x in xs:", "    result += sum(xs)", "   "])
    result = pipeline.complete(engine, LINE_ABOVE, offset, language_id="python", budget=Budget(candidates=3))
    assert engine.requests[0].suffix == "\n" + LINE_ABOVE[offset:]
    assert engine.requests[0].prefix == LINE_ABOVE[:offset]
    # a `for` with no body above `return` does not parse; whitespace is nothing to show
    assert [item.text for item in result.items] == ["    result += sum(xs)\n"]
    assert [row.text for row in result.raw] == ["    for x in xs:\n", "    result += sum(xs)\n", "   "]
    # mid-line, the request is the document's own split
    pipeline.complete(engine, LINE_ABOVE, offset + 4, language_id="python", budget=Budget(candidates=3))
    assert engine.requests[1].suffix == LINE_ABOVE[offset + 4:]


async def test_over_stdio_a_suggestion_at_a_line_start_inserts_a_whole_line():
    """The server as an editor drives it, its model a stub: the cursor at column 0 of `    return`."""
    editor = Editor()
    uri = "file:///tmp/line_above.py"
    try:
        await editor.start(stub=["    result += sum(xs)"], init_options={"showInvalid": False})
        assert (await editor.wait_ready())["engineReady"]
        editor.open(uri, LINE_ABOVE, "python")
        items = (await editor.complete(uri, 2, 0)).items
        assert len(items) == 1, items
        edited = apply(LINE_ABOVE, 2, items[0])
        assert edited == "def total(xs):\n    result = 0\n    result += sum(xs)\n    return result\n"
        assert compiles(edited)
    finally:
        await editor.close()
