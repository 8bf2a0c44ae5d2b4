"""What stands between the same neighbours elsewhere in the document (repeats.py): units, the
pipeline with a fake engine, and the server over stdio as an editor drives it."""

from __future__ import annotations

import pytest

from infill_lsp import pipeline, rank, repeats
from infill_lsp.config import Settings
from infill_lsp.rank import Ranked
from infill_lsp.types import Budget, Candidate, EngineInfo, InfillResult
from lsp_harness import Editor, apply

SOURCE = (
    "class Stack:\n"
    "    def push(self, item):\n"
    "        self.items.append(item)\n"
    "\n"
    "    def extend(self, more):\n"
    "        for item in more:\n"
    "            self.|(item)\n"
)


def cursor(source: str) -> tuple[str, int]:
    return source.replace("|", ""), source.index("|")


def test_the_text_between_the_same_neighbours_above_is_the_repeat():
    text, offset = cursor(SOURCE)
    repeat = repeats.find(text, offset)
    assert repeat is not None
    assert (repeat.text, repeat.count) == ("items.append", 1)


def test_anchors_count_characters_not_whitespace():
    # the anchor before the cursor is its last 16, 8 or 4 non-whitespace characters: after `return `,
    # the 4 are `urn`+` `... and indentation alone is never an anchor
    text, offset = cursor("def f(a):\n    return a.total + 1\n\ndef g(b):\n    return |.total + 2\n")
    assert repeats.find(text, offset).text == "a"
    text, offset = cursor("x = 1\n\n\n    |\n    y = 2\n")
    assert repeats.find(text, offset) is None


def test_the_most_frequent_repeat_wins_then_the_nearest():
    # the anchor after the cursor is `)` and the line break: the line holds no second character
    text, offset = cursor("f(x.foo)\nf(x.foo)\nf(x.bar)\nf(x.|)\n")
    assert repeats.find(text, offset).text == "foo"
    assert repeats.find(text, offset).count == 2
    text, offset = cursor("f(x.foo)\nf(x.bar)\nf(x.|)\n")
    assert repeats.find(text, offset).text == "bar"  # one each: the nearer one


@pytest.mark.parametrize("source", [
    "x = 1\ny = |\n",  # nothing after the cursor to anchor on
    "x = 1\ny = |",  # nor here
    "value = compute(a)\nother = |(b)\n",  # `(b` stands nowhere else
    "f(a)\nf(|)\n",  # only an empty text between them
    "a = [1,\n 2]\nb = [|2]\n",  # what stands between them spans lines
    "|x = 1\n",  # nothing before the cursor
])
def test_no_repeat(source):
    text, offset = cursor(source)
    assert repeats.find(text, offset) is None


def test_the_cursor_itself_is_not_a_match():
    text, offset = cursor("print(|)\n")
    assert repeats.find(text, offset) is None


def test_a_repeat_longer_than_the_limit_is_not_taken():
    long_name = "n" * (repeats.MAX_CHARS + 1)
    text, offset = cursor(f"call({long_name})\ncall(|)\n")
    assert repeats.find(text, offset) is None


def test_a_huge_document_answers_quickly_and_reads_only_around_the_cursor():
    filler = "value = other.attribute(1)\n" * 40_000  # ~1 MB of anchors
    text, offset = cursor(filler + "value = other.|(1)\n" + filler)
    repeat = repeats.find(text, offset)
    assert repeat is not None and repeat.text == "attribute"
    assert repeat.count <= repeats.MAX_MATCHES


def test_put_first_orders_a_valid_repeat_first_and_never_an_invalid_one():
    model = Ranked(text="pop", score=-0.1, valid=True)
    mine = Ranked(text="items.append", score=-0.1, valid=True)
    assert rank.put_first([model, mine], "items.append") == [mine, model]
    invalid = Ranked(text="items.append", score=-0.1, valid=False)
    assert rank.put_first([model, invalid], "items.append") == [model, invalid]
    assert rank.put_first([model], None) == [model]
    assert rank.put_first([model], "") == [model]


class FakeEngine:
    info = EngineInfo(model="fake", backend="test")

    def __init__(self, texts: list[str]):
        self.texts = texts

    def infill(self, request, cancel=None):
        return InfillResult(candidates=[Candidate(text=t, score=-0.1 * (i + 1)) for i, t in enumerate(self.texts)])

    def close(self) -> None:
        pass


def test_the_pipeline_shows_the_repeat_first_validated_and_can_turn_it_off():
    text, offset = cursor(SOURCE)
    engine = FakeEngine(["pop", "items.append((", "items.remove"])
    items = pipeline.complete(engine, text, offset, language_id="python", budget=Budget(candidates=3)).items
    assert [item.text for item in items] == ["items.append", "pop", "items.remove"]  # the unclosed call does not parse
    off = pipeline.complete(engine, text, offset, language_id="python", budget=Budget(candidates=3),
                            settings=Settings(complete_repeats=False)).items
    assert [item.text for item in off] == ["pop", "items.remove"]


def test_a_repeat_that_does_not_parse_here_is_not_shown():
    # in the string above, `a b` stands between `call(` and `))`; as code it does not parse
    text, offset = cursor('s = "call(a b))"\nprint(call(|))\n')
    assert repeats.find(text, offset) is not None
    items = pipeline.complete(FakeEngine(["f(): pass"]), text, offset, language_id="python",
                              budget=Budget(candidates=1)).items
    assert "a b" not in [item.text for item in items]


async def test_over_stdio_the_repeat_is_the_first_inline_item():
    """The server as an editor drives it: the user types `self.` before `(item)`, and the first
    inline item is what the document already wrote there (whatever the tiny model writes)."""
    text, offset = cursor(SOURCE)
    line = text[:offset].count("\n")
    character = offset - (text.rfind("\n", 0, offset) + 1)
    ed = Editor()
    try:
        await ed.start(init_options={"candidates": 2, "maxTokens": 8, "steps": 3, "seed": 0})
        await ed.wait_ready()
        uri = "file:///tmp/repeats_example.py"
        ed.open(uri, text, "python")
        items = (await ed.complete(uri, line, character, invoked=False)).items
        assert items, "no suggestion"
        assert apply(text, line, items[0]).splitlines()[line] == "            self.items.append(item)"
    finally:
        await ed.close()
