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


def test_an_edit_far_from_the_cursor_is_a_change_too():
    """`return total` was validated inside `def run`; the header, 300+ characters above, became an
    `if` (same length, the offsets do not move): typing `ret` must not finish a `return` that no
    longer compiles there, so the cache has no answer and the pipeline validates again. The same
    for an edit far below the cursor."""
    body = "".join(f"    value_{i} = compute_something({i}, total)\n" for i in range(8))
    text = "def run(items):\n    total = 0\n" + body + "    \n" + body
    offset = text.index("    \n") + 4
    cache = TypingCache()
    cache.remember("file:///a.py", text, offset, [Ranked("return total", -0.1, True)])
    typed = text[:offset] + "ret" + text[offset:]
    assert texts(cache.lookup("file:///a.py", typed, offset + 3)) == ["urn total"]
    header_changed = typed.replace("def run(items):", "if run(items) :", 1)
    assert len(header_changed) == len(typed)
    assert cache.lookup("file:///a.py", header_changed, offset + 3) is None
    below_changed = typed[:-10] + typed[-10:].replace("total", "TOTAL")
    assert cache.lookup("file:///a.py", below_changed, offset + 3) is None
