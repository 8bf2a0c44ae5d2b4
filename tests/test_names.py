"""Finishing the name being typed with one the prompt holds (names.py): units, the pipeline with a
fake engine, and the server over stdio as an editor drives it."""

from __future__ import annotations

import pytest

from infill_lsp import names, pipeline
from infill_lsp.config import Settings
from infill_lsp.rank import Ranked
from infill_lsp.types import Budget, Candidate, ContextChunk, EngineInfo, InfillResult
from lsp_harness import Editor, apply

SOURCE = "def compute_checksum(data):\n    return sum(data)\n\n\ntotal = compute_ch"
UTIL = ContextChunk(path="pkg/util.py", text="def create_dist(options):\n    credentials = options.get('token')\n")


@pytest.mark.parametrize("prefix,suffix,typed", [
    ("x = compute_ch", "\n", "compute_ch"),
    ("x = compute_ch", "(data)\n", "compute_ch"),  # a call's brackets after the cursor
    ("x = co", "\n", ""),  # too short to guess from
    ("x = compute_ch", "ecksum(data)\n", ""),  # inside a word: the rest is there already
    ("def comp", "\n", ""),  # a name being defined
    ("    let tot", " = 0;\n", ""),
    ("func (r *Reader) Rea", "() {}\n", ""),  # a Go method being declared
    ("x = 12abc", "\n", ""),  # not a name
])
def test_the_word_being_typed(prefix, suffix, typed):
    assert names.typed_word(prefix, suffix) == typed


def test_a_name_from_the_window_finishes_the_word():
    completion = names.complete(SOURCE, "\n")
    assert completion is not None
    assert (completion.name, completion.text) == ("compute_checksum", "ecksum")


def test_a_name_from_the_repository_context_finishes_the_word_and_the_model_picks_among_several():
    assert names.complete("x = cre", "\n") is None  # the window alone holds no such name
    by_use = names.complete("x = cre", "\n", (UTIL,))
    voted = names.complete("x = cre", "\n", (UTIL,), model_texts=["ate_", "zz"])
    assert by_use is not None and voted is not None
    assert by_use.name in {"create_dist", "credentials"}
    assert voted.name == "create_dist"  # the model's candidate shares "ate_" with it
    assert names.complete("x = cre", "\n", (UTIL,), model_texts=["dent"]).name == "credentials"


def test_a_name_the_prompt_defines_beats_a_name_it_only_uses():
    window = "create(a)\ncreate(b)\ncreate(c)\nx = cre"
    assert names.complete(window, "\n").name == "create"
    chunk = ContextChunk(path="pkg/dist.py", text="def create_dist(options):\n    pass\n")
    assert names.complete(window, "\n", (chunk,)).name == "create_dist"
    go = ContextChunk(path="pkg/r.go", text="func (r *Reader) ReadRune() (rune, error) {\n}\n")
    assert names.complete("x := r.Rea", "\n", (go, ContextChunk(path="b.go", text="Reader Reader Reader\n"))).name == "ReadRune"


def test_names_the_workspace_index_defines_finish_the_word_at_request_time(tmp_path):
    """The definition index answers at once, before the ring of chunks is ranked again on idle."""
    from infill_lsp.definitions import DefinitionIndex

    (tmp_path / "util.py").write_text("def verify_checksum(payload, expected):\n    return True\n\n\n"
                                      "def verify_signature(blob):\n    return False\n")
    index = DefinitionIndex()
    index.watch([str(tmp_path)])
    try:
        assert index.wait(30)
        text = "ok = verify_ch\n"
        assert names.workspace_names(index, text, len("ok = verify_ch")) == ("verify_checksum",)
        assert names.workspace_names(index, text, len("ok = ve")) == ()  # too short to ask
        assert names.workspace_names(None, text, len("ok = verify_ch")) == ()
        completion = names.complete("ok = verify_", "\n", workspace_names=names.workspace_names(
            index, "ok = verify_\n", len("ok = verify_")), model_texts=["sig"])
        assert completion.name == "verify_signature"  # the model's candidate voted for it
    finally:
        index.close()


def test_a_word_that_is_a_known_name_already_is_left_alone():
    assert names.complete("data = 1\nx = data", "\n", (ContextChunk(path="a.py", text="database = 2\n"),)) is None


def test_the_completion_goes_first_unless_the_model_already_finished_the_word_with_a_known_name():
    completion = names.complete(SOURCE, "\n")
    mine = Ranked(text="ecksum", score=-0.5, valid=True)
    noise = Ranked(text="ecksm", score=-0.1, valid=True)
    assert names.put_first([noise, mine], completion) == [mine, noise]
    model_right = Ranked(text="ecksum(data)", score=-0.1, valid=True)
    assert names.put_first([model_right, mine], completion) == [model_right, mine]
    invalid = Ranked(text="ecksum", score=-0.5, valid=False)
    assert names.put_first([noise, invalid], completion) == [noise, invalid]  # never an invalid one first
    assert names.put_first([noise], None) == [noise]


class FakeEngine:
    info = EngineInfo(model="fake", backend="test")

    def __init__(self, texts: list[str]):
        self.texts = texts
        self.requests = []

    def infill(self, request, cancel=None):
        self.requests.append(request)
        return InfillResult(candidates=[Candidate(text=t, score=-0.1 * (i + 1)) for i, t in enumerate(self.texts)])

    def close(self) -> None:
        pass


def test_the_pipeline_shows_the_completion_first_validated_and_can_turn_it_off():
    text = SOURCE + "\n"
    engine = FakeEngine(["ecksm", "ecksum(", "eck"])
    items = pipeline.complete(engine, text, len(SOURCE), language_id="python", budget=Budget(candidates=3)).items
    assert items[0].text == "ecksum" and items[0].valid
    assert "ecksum(" not in [item.text for item in items]  # the model's unclosed call does not parse
    off = pipeline.complete(engine, text, len(SOURCE), language_id="python", budget=Budget(candidates=3),
                            settings=Settings(complete_names=False)).items
    assert "ecksum" not in [item.text for item in off]
    # the context chunks sent to the engine are read as well
    chunked = pipeline.complete(FakeEngine(["zz"]), "x = cre\n", 7, language_id="python", repo=(UTIL,),
                                repo_path="pkg/main.py").items
    assert chunked[0].text in {"ate_dist", "dentials"}


async def test_over_stdio_typing_a_defined_name_shows_it_finished_first():
    """The server as an editor drives it: the document defines `compute_checksum`, the user types
    `compute_ch`, and the first inline item finishes the name (whatever the tiny model writes)."""
    ed = Editor()
    try:
        await ed.start(init_options={"candidates": 2, "maxTokens": 8, "steps": 3, "seed": 0})
        await ed.wait_ready()
        uri = "file:///tmp/names_example.py"
        ed.open(uri, SOURCE + "\n", "python")
        items = (await ed.complete(uri, 4, len("total = compute_ch"), invoked=False)).items
        assert items, "no suggestion"
        assert apply(SOURCE + "\n", 4, items[0]).splitlines()[4] == "total = compute_checksum"
    finally:
        await ed.close()
