"""Typing through a suggestion (infill_lsp/lsp/typing_cache.py): when the last answer still holds."""

from infill_lsp.lsp.typing_cache import TypingCache
from infill_lsp.rank import Ranked


def texts(items):
    return None if items is None else [item.text for item in items]


def test_typed_characters_that_begin_a_suggestion_leave_its_rest():
    cache = TypingCache()
    cache.remember("file:///a.py", "x = foo\nprint(x)\n", 7, [Ranked("(a)", -0.1, True), Ranked("[0]", -0.2, True)])
    assert texts(cache.lookup("file:///a.py", "x = foo(\nprint(x)\n", 8)) == ["a)"]
    assert texts(cache.lookup("file:///a.py", "x = foo\nprint(x)\n", 7)) == ["(a)", "[0]"]
    assert cache.lookup("file:///a.py", "x = foo{\nprint(x)\n", 8) is None  # not what it shows
    assert cache.lookup("file:///b.py", "x = foo(\nprint(x)\n", 8) is None


def test_a_bracket_the_editor_closed_at_the_end_of_the_document_is_a_change_after_the_cursor():
    """At the end of a file with no final newline the text after the cursor was empty; `()` typed
    with the editor closing the bracket puts `)` after the cursor: the suggestion's `a)` would
    double it (`foo(a))`), so the cache has no answer and the pipeline (which trims it) runs."""
    cache = TypingCache()
    cache.remember("file:///a.py", "x = foo", 7, [Ranked("(a)", -0.1, True)])
    assert texts(cache.lookup("file:///a.py", "x = foo(", 8)) == ["a)"]
    assert cache.lookup("file:///a.py", "x = foo()", 8) is None
