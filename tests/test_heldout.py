"""The per-language held-out check (heldout.py): the holes it cuts, its judge, its table."""

from infill_lsp import heldout
from infill_lsp.engine.transformers_backend import TransformersEngine
from infill_lsp.types import Budget

from conftest import ROOT, TINY_MODEL

SAMPLES = ROOT / "fixtures" / "samples"


def _files():
    by_suffix = {".py": "python", ".js": "javascript", ".ts": "typescript", ".go": "go", ".rs": "rust",
                 ".c": "c"}
    return [{"path": str(p), "language": by_suffix[p.suffix], "text": p.read_text()}
            for p in sorted(SAMPLES.iterdir()) if p.suffix in by_suffix]


def test_holes_are_deterministic_lexeme_spans_and_whole_line_rests():
    holes = heldout.cut_holes(_files(), per_kind=3)
    assert holes == heldout.cut_holes(_files(), per_kind=3)  # every model is scored on the same holes
    assert holes != heldout.cut_holes(_files(), per_kind=3, seed=1)
    assert {h.language for h in holes} == set(heldout.LANGUAGES)  # C is not one of the checked languages
    for hole in holes:
        original = next(f["text"] for f in _files() if f["path"] == hole.path)
        assert hole.text[:hole.offset] + hole.answer + hole.text[hole.offset:] == original
        assert hole.answer.strip() and "\n" not in hole.answer
        lexemes = heldout.LEXEME.findall(hole.answer)
        if hole.kind == "1-4 tokens":
            assert 1 <= len(lexemes) <= 4
        elif hole.kind == "5-16 tokens":
            assert 5 <= len(lexemes) <= 16
        else:  # the rest of the line after its indentation
            line_start = original.rfind("\n", 0, hole.offset) + 1
            assert not original[line_start:hole.offset].strip()
            assert original[hole.offset + len(hole.answer):].startswith(("\n", "\r")) or \
                hole.offset + len(hole.answer) == len(original)
    assert len(heldout.cut_holes(_files(), per_kind=1, files_per_language=0)) == 0


def test_the_judge_counts_only_errors_the_suggestion_adds():
    hole = heldout.Hole("python", "line", "x.py", "def f(x):\n    \n", 14, "return x")
    assert heldout.suggestion_parses(hole, "return x")
    assert not heldout.suggestion_parses(hole, "return (x")
    assert not heldout.suggestion_parses(hole, "return x x")  # parses as an error node
    broken = heldout.Hole("go", "1-4 tokens", "x.go", "func f( {\n\treturn \n}\n", 18, "1")
    assert heldout.suggestion_parses(broken, "1")  # the document's own error is not the suggestion's


def test_a_run_records_each_hole_and_the_table_sums_them():
    engine = TransformersEngine(str(TINY_MODEL), device="cpu")
    holes = [h for h in heldout.cut_holes(_files(), per_kind=1) if h.language in ("python", "go")]
    results = heldout.run_holes(engine, holes, budget=Budget(candidates=2, max_middle_tokens=4, steps=2), seed=0)
    assert [(r.language, r.kind, r.path) for r in results] == [(h.language, h.kind, h.path) for h in holes]
    for r in results:
        assert 0 <= r.shown_parsing <= r.shown and r.latency_ms > 0
        assert (r.top is None) == (r.shown == 0)
    rows = heldout.table(results).splitlines()
    total = next(row for row in rows if row.startswith("| all | all |"))
    assert f"| {len(results)} |" in total
    assert any(row.startswith("| python | line | ") for row in rows) and any(row.startswith("| go | all |") for row in rows)
