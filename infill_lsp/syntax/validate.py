"""Is a candidate syntactically possible here? tree-sitter says, cheaply.

A candidate is valid when `prefix + candidate + suffix` has no more ERROR/MISSING nodes than
`prefix + suffix` (the document as it stands, which may already be broken while typing).

Cost: the comparison is made on a region around the cursor, cut at top-level lines (a line
that starts without indentation) about BEFORE bytes before and AFTER bytes after it; smaller
documents are checked whole. tree-sitter's error recovery is local, so the counts compare the same way,
and checking 8 candidates stays cheap in a file of any size (Python's indentation scanner
defeats most subtree reuse, so a whole-file incremental reparse still costs milliseconds per
candidate). The region's baseline is parsed once per request; each candidate is an insertion
edit on a copy of that tree plus an incremental reparse, and errors are counted only inside
subtrees flagged `has_error`.
"""

from __future__ import annotations

import ast
import logging
import re
import threading
import warnings

import msgspec
import tree_sitter

from .languages import parser_for

log = logging.getLogger(__name__)

BEFORE = 2000  # bytes of context checked before the cursor (enough to establish the nesting)
AFTER = 800  # and after it: error recovery past a bad candidate costs time per byte, keep it short


class Validation(msgspec.Struct, frozen=True):
    text: str  # the candidate as it should be shown (maybe cut to a valid line-prefix)
    valid: bool
    truncated: bool = False
    checked: bool = True  # False when no grammar applies or the document is too big (valid is then True)


def _encode(text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:  # lone surrogates (a client split a pair): parse them as U+FFFD
        return text.encode("utf-8", errors="surrogatepass").decode("utf-8", errors="replace").encode()


def _point(data: bytes, offset: int) -> tuple[int, int]:
    """(row, column in bytes) of a byte offset, as tree-sitter counts them."""
    row = data.count(b"\n", 0, offset)
    return row, offset - (data.rfind(b"\n", 0, offset) + 1)


def _end_point(start: tuple[int, int], inserted: bytes) -> tuple[int, int]:
    newlines = inserted.count(b"\n")
    if not newlines:
        return start[0], start[1] + len(inserted)
    return start[0] + newlines, len(inserted) - (inserted.rfind(b"\n") + 1)


_TOP_LEVEL_LINE = re.compile(rb"\n(?=[^\s])")


def region_start(before: bytes, radius: int) -> int:
    """Where the checked region begins: the first top-level line within `radius` of the cursor."""
    if len(before) <= radius:
        return 0
    lo = len(before) - radius
    match = _TOP_LEVEL_LINE.search(before, lo - 1)
    if match is not None:
        return match.start() + 1
    newline = before.find(b"\n", lo)
    return newline + 1 if newline >= 0 else lo


def region_end(after: bytes, radius: int) -> int:
    """Where it ends: just before the last top-level line within `radius` after the cursor."""
    if len(after) <= radius:
        return len(after)
    last = None
    for last in _TOP_LEVEL_LINE.finditer(after, 0, radius):
        pass
    if last is not None:
        return last.start() + 1
    newline = after.rfind(b"\n", 0, radius)
    return newline + 1 if newline >= 0 else radius


def count_errors(node: tree_sitter.Node) -> int:
    """ERROR and MISSING nodes, visiting only subtrees that contain one."""
    if not node.has_error:
        return 0
    count, stack = 0, [node]
    while stack:
        current = stack.pop()
        if current.is_error or current.is_missing:
            count += 1
        stack.extend(child for child in current.children if child.has_error or child.is_missing)
    return count


def python_compiles(source: bytes) -> bool:
    """CPython's own parser (parse only, nothing runs): stricter than tree-sitter about indentation."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ast.parse(source)
        return True
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False


STRICT_PARSERS = {"python": python_compiles}


class RegionChecker:
    """The region around the cursor, parsed once; candidates are checked as insertions into it.

    Where a language has a stricter parser of its own (Python: `ast`), a candidate must also
    keep the region accepted by it whenever the region was accepted before.
    """

    def __init__(self, parser: tree_sitter.Parser, before: bytes, after: bytes, language: str = ""):
        self.parser = parser
        self.at = len(before)
        self.data = before + after
        self.tree = parser.parse(self.data)
        self.errors = count_errors(self.tree.root_node)
        strict = STRICT_PARSERS.get(language)
        self.strict = strict if strict is not None and strict(self.data) else None

    def errors_with(self, inserted: bytes) -> int:
        tree = self.tree.copy()
        start = _point(self.data, self.at)
        tree.edit(start_byte=self.at, old_end_byte=self.at, new_end_byte=self.at + len(inserted),
                  start_point=start, old_end_point=start, new_end_point=_end_point(start, inserted))
        new_tree = self.parser.parse(self.data[: self.at] + inserted + self.data[self.at:], tree)
        return count_errors(new_tree.root_node)

    def check(self, middle: str, truncate: bool) -> Validation:
        def ok(text: str) -> bool:
            inserted = _encode(text)
            if self.errors_with(inserted) > self.errors:
                return False
            return self.strict is None or self.strict(self.data[: self.at] + inserted + self.data[self.at:])

        if ok(middle):
            return Validation(text=middle, valid=True)
        if truncate:  # the longest prefix of whole lines that parses (SAFIM-style post-processing)
            lines = middle.split("\n")
            for keep in range(len(lines) - 1, 0, -1):
                head = "\n".join(lines[:keep])
                if head.strip() and ok(head):
                    return Validation(text=head, valid=True, truncated=True)
        return Validation(text=middle, valid=False)


_parsers: dict[str, tree_sitter.Parser | None] = {}
_lock = threading.Lock()


def validate(language: str | None, prefix: str, suffix: str, middles: list[str], truncate: bool = True,
             before_bytes: int = BEFORE, after_bytes: int = AFTER) -> list[Validation]:
    """Check each middle at the cursor between `prefix` and `suffix` (the whole document)."""
    unchecked = [Validation(text=m, valid=True, checked=False) for m in middles]
    if not language or not middles:
        return unchecked
    try:
        with _lock:  # parsers are not thread-safe; one per language is plenty
            if language not in _parsers:
                _parsers[language] = parser_for(language)
            parser = _parsers[language]
            if parser is None:
                return unchecked
            before = _encode(prefix[-before_bytes * 4:])  # characters are at most 4 bytes
            after = _encode(suffix[: after_bytes * 4])
            checker = RegionChecker(parser, before[region_start(before, before_bytes):],
                                    after[: region_end(after, after_bytes)], language)
            return [checker.check(middle, truncate) for middle in middles]
    except Exception:  # a grammar bug must not cost the user their suggestions
        log.exception("syntax validation failed for %s; showing candidates unchecked", language)
        return unchecked
