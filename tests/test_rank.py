from infill_lsp.rank import Ranked, clean, rank
from infill_lsp.syntax import Validation
from infill_lsp.types import Candidate


def test_clean_trims_the_rest_of_the_line_already_present():
    assert clean("foo(x)", ")\nnext") == "foo(x"
    assert clean("x);", ");") == "x"
    assert clean(")", ")") == ""  # nothing new: dropped later as empty
    assert clean("a  b", " b") == "a "  # only a non-blank overlap is trimmed


def test_clean_removes_trailing_whitespace_but_keeps_spaces_before_a_suffix():
    assert clean("a = 1   \nb = 2  \n\n", "\nx") == "a = 1\nb = 2"
    assert clean("x = ", "1\n") == "x = "
    assert clean("return x  ", "") == "return x"


def test_clean_drops_lines_that_repeat_the_line_below():
    assert clean("y = 1\nreturn y", "\n    return y\n") == "y = 1"
    assert clean("return y", "\n    return y\n") == "return y"  # a single line is the user's call


def _c(text, score):
    return Candidate(text=text, score=score)


def _v(text, valid=True, checked=True, truncated=False):
    return Validation(text=text, valid=valid, checked=checked, truncated=truncated)


def test_valid_first_then_score_dedupe_and_drop_empty():
    candidates = [_c("a", -1.0), _c("b", -0.1), _c("a", -0.5), _c("  ", -0.01), _c("c", -0.2)]
    validations = [_v("a"), _v("b", valid=False), _v("a"), _v("  "), _v("c")]
    ranked = rank(candidates, validations)
    assert [r.text for r in ranked] == ["c", "a"]
    assert ranked[1].score == -0.5  # the best copy of a duplicate survives
    shown_all = rank(candidates, validations, show_invalid=True)
    assert [r.text for r in shown_all] == ["c", "a", "b"] and not shown_all[-1].valid
    assert rank(candidates, validations, limit=1) == [Ranked(text="c", score=-0.2, valid=True)]


def test_truncated_text_is_what_is_ranked():
    ranked = rank([_c("x\nbad(", -0.3)], [_v("x", truncated=True)])
    assert ranked == [Ranked(text="x", score=-0.3, valid=True, truncated=True)]
