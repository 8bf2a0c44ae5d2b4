"""An independent judge of what the editor is shown, for tests: never the server's own validator.

A suggestion is judged by applying it to the whole document and parsing the result afresh with
tree-sitter, straight from the grammar wheels (`tree_sitter` + `tree_sitter_python` /
`tree_sitter_javascript`, not `infill_lsp.syntax`): every node of the full tree is visited (no
region, no incremental reparse), and the suggestion may add no ERROR or MISSING node that the
document without it does not have at the same place (garbage folded into an error that was
already there counts as added). For Python, CPython's `compile()` must accept the edited document
whenever it accepted the document without the suggestion. And a suggestion may carry no
unreadable character (controls other than tab and newline, lone surrogates, U+FFFD).
"""

from __future__ import annotations

import re
import warnings
from collections import Counter

import tree_sitter
import tree_sitter_javascript
import tree_sitter_python

# Unreadable in a suggestion: controls but tab/newline (CR included), surrogates, U+FFFD.
UNREADABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\ufffd]")

GRAMMARS = {
    "python": tree_sitter.Language(tree_sitter_python.language()),
    "javascript": tree_sitter.Language(tree_sitter_javascript.language()),
}


def error_nodes(language: str, source: bytes) -> list[tuple[str, int, int]]:
    """(kind, start, end) of the ERROR and MISSING nodes of a full parse, every node visited."""
    tree = tree_sitter.Parser(GRAMMARS[language]).parse(source)
    found, cursor, visited = [], tree.walk(), False
    while True:  # pre-order walk with a TreeCursor
        if not visited:
            node = cursor.node
            if node.is_error or node.is_missing:
                found.append(("ERROR" if node.is_error else node.type, node.start_byte, node.end_byte))
            if cursor.goto_first_child():
                continue
        if cursor.goto_next_sibling():
            visited = False
            continue
        if not cursor.goto_parent():
            return found
        visited = True


def added_errors(language: str, document: str, offset: int, middle: str) -> list[tuple[str, int, int]]:
    """ERROR/MISSING nodes of the document with `middle` inserted at `offset` that the document
    without it does not have, at the same place. A node that starts or ends inside the inserted
    text is new; one that grew over it (same start, same end past it) is the old one."""
    before = document[:offset].encode()
    inserted = middle.encode()
    lo, hi = len(before), len(before) + len(inserted)
    old = Counter(error_nodes(language, document.encode()))

    def back_start(position: int) -> int | None:
        return position if position < lo else position - len(inserted) if position >= hi else None

    def back_end(position: int) -> int | None:
        return position if position <= lo else position - len(inserted) if position >= hi else None

    added = []
    for kind, start, end in error_nodes(language, before + inserted + document[offset:].encode()):
        if start == end == lo:  # empty, right before the insertion: it was there before it too
            mapped = (kind, lo, lo)
        else:
            mapped = (kind, back_start(start), back_end(end))
        if None in mapped or old[mapped] == 0:
            added.append((kind, start, end))
        else:
            old[mapped] -= 1
    return added


def compiles(source: str) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compile(source, "<judged>", "exec", dont_inherit=True)
        return True
    except (SyntaxError, ValueError):
        return False


def problems(language: str, document: str, offset: int, middle: str) -> list[str]:
    """Why `middle`, inserted into `document` at `offset` (a str index), should not have been
    shown; empty when the judge finds nothing wrong. `language` is "python", "javascript" or
    anything else (then only readability is judged)."""
    found = []
    if (bad := UNREADABLE.search(middle)) is not None:
        found.append(f"unreadable character {bad.group()!r}")
    if language in GRAMMARS and (added := added_errors(language, document, offset, middle)):
        found.append(f"adds parse errors {added}")
    if language == "python" and compiles(document) and not compiles(document[:offset] + middle + document[offset:]):
        found.append("compile() accepts the document but not the document with it")
    return found
