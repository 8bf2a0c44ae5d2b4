from infill_lsp.rank import UNREADABLE, Ranked, clean, line_before_cursor, rank, readable
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


# -- nothing unreadable is shown --------------------------------------------------------------

UNREADABLE_SAMPLES = ["\ufffd", "\x00", "\x07", "\x1b", "\r", "\x7f", "\x85", "\ud83d", "\udc00", "\u2028",
                      "\u202e", "\u2066", "\uffff", "\x0b", "\x0c"]


def test_a_split_multibyte_character_is_cut_off_not_the_candidate():
    # a middle whose last byte-level token ends inside "é" (0xC3 0xA9) decodes with U+FFFD at its end
    split = b"name = 'caf\xc3".decode("utf-8", errors="replace")
    assert split.endswith("\ufffd")
    assert readable(split) == "name = 'caf"
    assert clean(split, "'\n") == "name = 'caf"
    assert readable("x\ufffd\ufffd + 1") == "x"  # cut before the first one, whatever follows


def test_every_unreadable_character_cuts_the_candidate_before_it():
    for bad in UNREADABLE_SAMPLES:
        assert UNREADABLE.search(bad), repr(bad)
        assert readable("ok" + bad + "tail") == "ok", repr(bad)
        assert clean("ok" + bad + "tail\nmore", "\n") == "ok", repr(bad)
        assert clean(bad + "tail", "\n") == "", repr(bad)  # nothing readable left: empty, dropped later


def test_readable_text_is_untouched_and_crlf_becomes_a_newline():
    text = "s = 'naïve café 😀 日本'\n\tif x:\n\t\treturn  y"
    assert readable(text) == text
    assert readable("a = 1\r\nb = 2") == "a = 1\nb = 2"  # not a bare carriage return
    assert clean("a = 1\r\nb = 2\r\n", "\n") == "a = 1\nb = 2"
    assert readable("a = 1\rb = 2") == "a = 1"  # a bare one is


def test_rank_never_returns_unreadable_text_even_when_handed_some():
    candidates = [_c("ok\x00no", -0.1), _c("fine", -0.2), _c("bad\ufffd", -0.05)]
    validations = [_v("ok\x00no"), _v("fine"), _v("bad\ufffd")]
    assert [r.text for r in rank(candidates, validations, show_invalid=True)] == ["fine"]


# -- clean: what a suggestion looks like, given the text after the cursor ---------------------


def test_trailing_whitespace_goes_when_the_cursor_ends_its_line():
    # the line ends at the cursor: end of file, a newline (LF or CRLF), or only blanks after it
    for suffix in ("", "\n", "\nfoo()\n", "\r\nfoo()\r\n", "  \n\n"):
        assert clean("return x  ", suffix) == "return x", repr(suffix)
        assert clean("if x:  \n    return 1 \n\n", suffix) == "if x:\n    return 1", repr(suffix)


def test_indentation_inside_a_suggestion_is_kept():
    assert clean("if x:\n    return 1", "\n") == "if x:\n    return 1"
    assert clean("    y = 1\n    return y", "\n") == "    y = 1\n    return y"


def test_the_part_of_a_suggestion_already_after_the_cursor_is_trimmed():
    cases = [
        # suggestion, suffix, shown
        ("items)", '), end="")\n', "items"),  # only the head of the rest of the line is repeated
        ("size = MAX", "MAX\n", "size = "),  # the rest of the line is an identifier
        ("x  # note   ", "  # note   \n", "x"),  # the rest of the line, trailing spaces included
        ("f(x)", ")\r\nnext\r\n", "f(x"),  # a CRLF document
    ]
    for text, suffix, shown in cases:
        assert clean(text, suffix) == shown, (text, suffix)


def test_lines_repeating_the_line_below_are_dropped_from_the_end():
    below = "\n    return y\n\ndef g():\n    pass\n"  # more lines below the next one
    assert clean("y = 1\nreturn y", below) == "y = 1"
    assert clean("y = 1\nz = 2\nreturn y", below) == "y = 1\nz = 2"
    assert clean("y = 1\nreturn y\nreturn y", below) == "y = 1"
    assert clean("    y = 1\n\n    return y", below) == "    y = 1"  # with the blank line before it
    assert clean("return y\n    return y", below) == "return y"  # the first line always stays


def test_the_line_below_is_compared_only_when_the_cursor_ends_its_line():
    # inside "f(|)": what follows the cursor's line is not what the suggestion runs into
    assert clean("a,\n    return y", ")\n    return y\n") == "a,\n    return y"


def test_rank_keeps_whether_a_suggestion_was_checked():
    ranked = rank([_c("x", -0.1), _c("y", -0.2)], [_v("x", checked=False), _v("y")])
    assert [(r.text, r.checked) for r in ranked] == [("x", False), ("y", True)]


def test_clean_puts_code_that_leaves_a_blank_indented_line_on_that_line():
    # The cursor after "    " on an otherwise blank line: the model's blank first line and the
    # indentation it repeats are dropped, deeper indentation is kept.
    assert clean("   \n    return 1", "", "    ") == "return 1"
    assert clean("\n        x = 1\n    y = 2", "", "    ") == "    x = 1\n    y = 2"
    assert clean("\n\n    pass", "\nnext", "    ") == "pass"
    # Shallower than the cursor (code at column 0 below an empty block): not for here.
    assert clean("   \nhas.dir", "", "    ") == ""


def test_clean_keeps_a_leading_newline_where_the_line_has_text_or_no_indentation():
    assert clean("\n    return 1", "", "def f():") == "\n    return 1"
    assert clean("\ndef g():", "", "") == "\ndef g():"
    assert clean("x = 1", "", "    ") == "x = 1"


def test_line_before_cursor_splits_at_every_lsp_line_break():
    assert line_before_cursor("a\n    ") == "    "
    assert line_before_cursor("a\r\n  b") == "  b"
    assert line_before_cursor("a\r\t") == "\t"
    assert line_before_cursor("abc") == "abc"


def test_a_bare_comment_marker_is_dropped_like_whitespace():
    """`        #` passed validation above a broken block (HumanEval/75/L1: a comment fits anywhere) and
    showed as ghost text that adds nothing; a comment with words, `;` and `--` are kept."""
    texts = ["        #", "//", "/* */", "# check the divisor", ";", "--", "x"]
    candidates = [Candidate(text=t, score=-0.1 * i, tokens=1) for i, t in enumerate(texts)]
    shown = rank(candidates, [Validation(text=t, valid=True) for t in texts])
    assert [r.text for r in shown] == ["# check the divisor", ";", "--", "x"]
