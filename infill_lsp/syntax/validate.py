"""Is a candidate syntactically possible here? tree-sitter says, cheaply.

When the document around the cursor parses, a candidate is valid when `prefix + candidate +
suffix` still parses (no ERROR or MISSING node), and, for Python, CPython still compiles it (as
a notebook cell or REPL snippet when the region has top-level `await` of its own).

When it is already broken (the user is typing, or half-written code sits elsewhere), counting
errors is not enough: tree-sitter's recovery folds garbage into an ERROR node that was there
anyway, so the count does not move. There:
  1. the region is first narrowed to the nearest top-level lines around the cursor whose text
     parses; the broken code is then outside, and the strict rule above applies (not to a
     narrowing that puts the cursor in a string over several lines: it may parse inside out);
  2. failing that, a candidate is valid when it makes the region parse (and compile), or when
     no ERROR or MISSING node of the edited region touches the inserted bytes and every one of
     them is an error the region already had, in the same place. An error that already covered
     the cursor covers every candidate too, and one whose recovery the candidate moves (it
     consumed the candidate to close something earlier) cannot tell a good candidate from
     garbage: then only a candidate that repairs the region is shown. Nor can a candidate that
     only opens a comment (it moves no error): it is refused there, unless it continues a
     comment the user began.
  3. an error that begins right after the candidate (nothing but whitespace or comments between)
     may be the hole at the cursor's own: in `y = |` above `return y` tree-sitter skips `return`,
     and `x +` leaves that error where it was. So the text is also cut where that error begins,
     where nothing after it can absorb the candidate, and there the candidate may not bring an
     ERROR over itself that the cut text without it lacks. A complete candidate before an
     unrelated error (`return x` above a broken `if x`) passes; `x +` does not. (Not for Lua and
     Ruby, whose grammars make the cut's unclosed function one ERROR whatever the candidate.)
  4. (Python) a region that starts inside a bracket (no top-level line near the cursor in a long
     tuple or call) is no module: it does not compile, and its closer is unmatched. Re-opened
     (and closed) where the cut left it open, it may parse and compile; then that region is
     checked by the strict rule, and a candidate that closes the bracket early is refused.
  5. (Python) a region CPython refuses with or without the candidate (tree-sitter may take it:
     it lets a body at the wrong indentation or `a, b += c` pass) is still asked where CPython
     stops first: on a line the candidate wrote, the candidate is refused.
  6. (Python) a region that starts indented and does not compile (the cursor deep in a long
     function, or on a new line of a long bracket) is widened once to top-level lines up to
     WIDE_BEFORE/WIDE_AFTER bytes out, brackets still open at its end closed after it; if CPython
     takes that region, it is the one checked, strictly.

Cost: the comparison is made on a region around the cursor, cut at top-level lines (a line
that starts without indentation, and not with a closing bracket) about BEFORE bytes before and
AFTER bytes after it; smaller documents are checked whole. (In a brace language a region that
ends inside a long function is widened to its end, up to WIDE_AFTER: see `_widened`.)
tree-sitter's error recovery is local, so the verdicts agree, and checking 8 candidates stays
cheap in a file of any size (Python's indentation scanner defeats most subtree reuse, so a
whole-file incremental reparse still costs milliseconds per candidate). The region's baseline
is parsed once per request (a broken one a few more times, to narrow it); each candidate is an
insertion edit on a copy of that tree plus an incremental reparse, and errors are looked for only
inside subtrees flagged `has_error`. Rule 3 parses the region's text up to the cut twice more,
only for a candidate that passed rule 2 with an error right after it.
"""

from __future__ import annotations

import ast
import json
import logging
import re
import threading
import warnings
from functools import cached_property

import msgspec
import tree_sitter

from .languages import parser_for

log = logging.getLogger(__name__)

BEFORE = 2000  # bytes of context checked before the cursor (enough to establish the nesting)
AFTER = 800  # and after it: error recovery past a bad candidate costs time per byte, keep it short
# Python, when that region starts indented and CPython refuses it (the cursor deep in a long function
# or bracket): the region is widened once to top-level lines this far out, and checked strictly if
# CPython takes the wider one.
WIDE_BEFORE = 12_000
WIDE_AFTER = 4_000
WHOLE = 100_000  # bytes: a document up to this size is checked whole when every cut region is broken
# ... and in a language whose grammar reuses subtrees on an incremental reparse (all but Python, whose
# indentation scanner defeats it), up to this size: a 112 KB TypeScript declaration file with no
# top-level line for 12 KB around the cursor costs no more checked whole than cut (~17 ms for 8 candidates)
WHOLE_INCREMENTAL = 256_000


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


# A line that starts at column 0 with something other than a closing bracket: where a region may be
# cut. A `}` (or `)`, `]`) at column 0 ends what the lines above opened (a Go or Rust function, a
# Python call spread over lines): a region that starts there begins with an unmatched closer, and one
# that ends just before it leaves the function open, so the right text at the cursor looked broken.
_TOP_LEVEL_LINE = re.compile(rb"\n(?=[^\s)\]}])")


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


def error_nodes(node: tree_sitter.Node) -> list[tuple[str, int, int]]:
    """(kind, start byte, end byte) of every ERROR and MISSING node, visiting only subtrees that
    contain one. The kind is "ERROR", or the missing token's type."""
    if not node.has_error:
        return []
    found, stack = [], [node]
    while stack:
        current = stack.pop()
        if current.is_error or current.is_missing:
            found.append(("ERROR" if current.is_error else current.type, current.start_byte, current.end_byte))
        stack.extend(child for child in current.children if child.has_error or child.is_missing)
    return found


def count_errors(node: tree_sitter.Node) -> int:
    """ERROR and MISSING nodes, visiting only subtrees that contain one."""
    return len(error_nodes(node))


def _touches(start: int, end: int, lo: int, hi: int) -> bool:
    """Does a node over [start, end) touch the inserted bytes [lo, hi)? An empty one (a MISSING
    token) does when it sits inside them or at either end: a bracket the insertion left open
    is missing right after it."""
    return start < hi and end > lo if end > start else lo <= start <= hi


def _compile_error(source: bytes, top_level_await: bool) -> Exception | None:
    """What CPython's compiler (nothing runs) refuses the source with, or None when it compiles.

    Compiled as text, not bytes: the editor has already decoded the file, so a coding cookie
    (`# -*- coding: latin-1 -*-`, or a comment that only looks like one) must not decode it again."""
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT if top_level_await else 0
    text = source.decode("utf-8", "replace").removeprefix("\ufeff")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compile(text, "<region>", "exec", flags=flags, dont_inherit=True)
        return None
    except Exception as error:  # SyntaxError mostly; ValueError (NUL bytes), RecursionError, MemoryError
        return error


def python_compiles(source: bytes, top_level_await: bool = False) -> bool:
    """CPython's own compiler (nothing runs): stricter than tree-sitter about indentation, and it
    knows what may stand where (`return` outside a function, `break` outside a loop)."""
    return _compile_error(source, top_level_await) is None


def python_cell_compiles(source: bytes) -> bool:
    """As a notebook cell or a REPL snippet: top-level `await`, `async for`, `async with` and async
    comprehensions are accepted there. Inside a plain `def`, a lambda or a class body they are still
    refused, and so is everything else `python_compiles` refuses."""
    return python_compiles(source, top_level_await=True)


def python_blamed_lines(source: bytes, error: Exception | None) -> tuple[int, int] | None:
    """The 1-based lines (first, last) CPython's first syntax error in `source` (`error`, what
    `_compile_error` gave) can be blamed on, or None when it compiled. An indentation error is also
    the fault of the code line before it (the previous line is what decides whether an indented
    block may follow): an unexpected indent under a candidate's line means the candidate is not the
    block opener the code below needs."""
    if not isinstance(error, SyntaxError) or error.lineno is None:
        return None
    first = error.lineno
    lines = source.split(b"\n")
    if error.msg.startswith("expected 'except' or 'finally' block"):
        # Reported where the `try` block ends, but the fault is the `try:` that opened it: blame
        # from the nearest `try:` above at that line's indentation or shallower.
        here = lines[error.lineno - 1] if error.lineno <= len(lines) else b""
        depth = len(here) - len(here.lstrip())
        for number in range(error.lineno - 1, 0, -1):
            text = lines[number - 1]
            stripped = text.strip()
            if stripped.startswith(b"try") and stripped[3:].lstrip().startswith(b":") and len(text) - len(text.lstrip()) <= depth:
                first = number
                break
    if isinstance(error, IndentationError):
        for number in range(error.lineno - 1, 0, -1):
            text = lines[number - 1].strip() if number <= len(lines) else b""
            if text and not text.startswith(b"#"):
                first = number
                break
    return first, error.lineno


# A language's stricter parsers, strictest first. A region that parses is held to the strictest
# one that accepts it (a module gets no top-level `await` from a candidate; a cell keeps its own);
# a repair of a broken region, whose kind can't be told, to the most lenient.
STRICT_PARSERS = {"python": (python_compiles, python_cell_compiles)}


def _only_extras(node: tree_sitter.Node, lo: int, hi: int) -> bool:
    """Is there no token but extras (comments) of `node` between bytes lo and hi?"""
    stack = [node]
    while stack:
        current = stack.pop()
        if current.end_byte <= lo or current.start_byte >= hi or current.is_extra:
            continue
        if not current.child_count:  # a token in the way
            return False
        stack.extend(current.children)
    return True


def _opens_only_comments(root: tree_sitter.Node, data: bytes, lo: int, hi: int) -> bool:
    """Is the text inserted at [lo, hi) nothing but whitespace and comments it opens itself?

    In a broken region such a candidate is refused: no parser can tell it from garbage (a comment
    moves no error), and it cannot be the code the region lacks. In HumanEval/20 a removed `if`
    line left `else:` unmatched, and `# test_raises(n2:` in its place kept the region exactly as
    broken, so the rules below let it through. A comment the user already began (the candidate
    continues it) is not refused: the inserted bytes then lie inside a comment that starts before
    them."""
    text = data[lo:hi]
    first = lo + (len(text) - len(text.lstrip()))
    if first >= hi or not _only_extras(root, lo, hi):
        return False
    node = root.descendant_for_byte_range(first, first + 1)
    return node is not None and node.is_extra and node.start_byte >= lo


def _adds_error_over(errors: list[tuple[str, int, int]], before: list[tuple[str, int, int]],
                     lo: int, hi: int) -> bool:
    """Is one of `errors` (of a text with bytes [lo, hi) inserted) over the inserted bytes, and not
    one of `before` (of the text without them)? One that starts before them and ends past them is
    the old one when `before` has it with the same start, ending that much earlier. A MISSING token
    right after them is not over them: what a cut leaves open (a "}" in C) is missing after the
    last token, the candidate's or not, and it may be missing only then (Go's empty block is an
    ERROR)."""
    shift, old = hi - lo, set(before)
    return any(start < hi and end > lo and not (start < lo and end > hi and (kind, start, end - shift) in old)
               for kind, start, end in errors)


def json_loads(data: bytes) -> bool:
    """Does Python's JSON reader take it? Stricter than tree-sitter-json, which takes comments and
    raw control characters in strings (JSON with comments is the `jsonc` language, not checked so)."""
    try:
        json.loads(data)
        return True
    except (ValueError, RecursionError):
        return False


_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def _json_extras(root: tree_sitter.Node, data: bytes, lo: int, hi: int) -> bool:
    """Does the text inserted at [lo, hi) bring a comment or a raw control character into JSON?"""
    if _CONTROL.search(data, lo, hi):
        return True
    node = root.descendant_for_byte_range(lo, hi)
    stack = [node] if node is not None else []
    while stack:
        current = stack.pop()
        if current.type == "comment" and current.start_byte < hi and current.end_byte > lo:
            return True
        stack.extend(child for child in current.children if child.start_byte < hi and child.end_byte > lo)
    return False


# Grammars whose cut text says nothing: they close no `end` a cut leaves open with a MISSING token,
# and the unclosed function becomes one ERROR that ends at the last token or at the cut, whatever
# the candidate is. The cut check is skipped for them.
UNCUT = frozenset({"lua", "ruby"})


class RegionChecker:
    """The region around the cursor, parsed once; candidates are checked as insertions into it.

    Where a language has a stricter parser of its own (Python: `compile`), a candidate must also
    keep the region accepted by it whenever the region was accepted before.
    """

    def __init__(self, parser: tree_sitter.Parser, before: bytes, after: bytes, language: str = "",
                 tree: tree_sitter.Tree | None = None):
        self.parser = parser
        self.at = len(before)
        self.data = before + after
        self.tree = tree if tree is not None else parser.parse(self.data)
        self.baseline_errors = set(error_nodes(self.tree.root_node))
        self.errors = count_errors(self.tree.root_node)
        self.language = language
        strict = STRICT_PARSERS.get(language, ())
        self.repair_check = strict[-1] if strict else None  # a broken region is "repaired" only if this accepts it
        self.strict = next((check for check in strict if check(self.data)), None)  # the strictest that accepts it
        self.json_strict = language == "json" and json_loads(self.data)  # a region JSON reads must stay so

    def in_long_literal(self) -> bool:
        """Is the cursor inside a string or comment that spans lines? A broken region narrowed to lines
        that only look top-level (Go tests keep whole programs in raw strings: `package main` at column
        0) may parse inside out, its code a string and the string's text code; then every candidate
        is string content and passes (a `}` that closed the function early, in sizes_test.go). Such a
        narrowing is not taken."""
        node = self.tree.root_node.descendant_for_byte_range(self.at, self.at)
        while node is not None:
            if (("string" in node.type or "comment" in node.type) and node.start_byte < self.at < node.end_byte
                    and node.start_point[0] < node.end_point[0]):
                return True
            node = node.parent
        return False

    def _edited(self, inserted: bytes) -> tuple[bytes, tree_sitter.Tree]:
        tree = self.tree.copy()
        start = _point(self.data, self.at)
        tree.edit(start_byte=self.at, old_end_byte=self.at, new_end_byte=self.at + len(inserted),
                  start_point=start, old_end_point=start, new_end_point=_end_point(start, inserted))
        data = self.data[: self.at] + inserted + self.data[self.at:]
        return data, self.parser.parse(data, tree)

    def errors_with(self, inserted: bytes) -> int:
        return count_errors(self._edited(inserted)[1].root_node)

    @property
    def broken(self) -> bool:
        """Is the region broken without any candidate (tree-sitter or, for Python, CPython says so)?"""
        return bool(self.errors) or (self.repair_check is not None and self.strict is None)

    def accepts(self, inserted: bytes) -> bool:
        data, tree = self._edited(inserted)
        errors = error_nodes(tree.root_node)
        lo, hi = self.at, self.at + len(inserted)
        if self.broken and _opens_only_comments(tree.root_node, data, lo, hi):
            return False
        if self.language == "json" and (not json_loads(data) if self.json_strict
                                        else _json_extras(tree.root_node, data, lo, hi)):
            return False
        if not self.errors:  # the region parsed: it must still parse (and compile, where it compiled)
            if self.strict is not None:
                return not errors and self.strict(data)
            # tree-sitter took it, CPython did not (an indentation tree-sitter lets pass): the
            # candidate must at least not be where CPython stops
            return not errors and not self._error_on_its_lines(data, lo, hi)
        if not errors:  # it makes the region parse: a repair (when CPython agrees, for Python)
            return self.repair_check is None or self.repair_check(data)
        # Still broken: no error may touch the inserted text (tree-sitter folds garbage into the
        # ERROR node that was there), and each must be one the region had, where it was: a
        # candidate that moves the error recovery elsewhere has added an error too.
        return (len(errors) <= self.errors and all(self._kept(error, lo, hi) for error in errors)
                and not self._unfinished(data, tree, errors, lo, hi) and not self._error_on_its_lines(data, lo, hi))

    def _error_on_its_lines(self, data: bytes, lo: int, hi: int) -> bool:
        """Python, where tree-sitter can leave indentation and assignment-target mistakes unflagged
        (`next, dbuf, balance += op`, a body at column 1): does CPython stop first on a line the
        candidate at [lo, hi) wrote (or, for an indentation error, right under it), or newly on a
        dedent that matches no outer block? Its first error elsewhere (before the cursor, or further
        below) says nothing about the candidate, and then tree-sitter's verdict stands."""
        if self.language != "python":
            return False
        error = _compile_error(data, top_level_await=True)
        blamed = python_blamed_lines(data, error)
        if blamed is not None and blamed[0] <= data.count(b"\n", 0, hi) + 1 and blamed[1] > data.count(b"\n", 0, lo):
            return True
        return self._mismatched_unindent(error, data, lo, hi) or (error is not None and self._breaks_statement(data, lo, hi))

    @cached_property
    def _statement(self) -> tuple[int, int] | None:
        """The top-level statements around the cursor, [start, end) in bytes, when they compile on
        their own; None otherwise. In a file CPython refuses somewhere else (syntax newer than the
        server's Python: a `type` alias, PEP 695 generics; or a half-written line far above), its
        first error hides the candidate's: the statements the candidate is written into are asked
        instead. The one before the cursor and the one after it are in, with any that contains it:
        a candidate may continue the one before (`else:` after an `if`) or head the one after (a
        `for` line over the indented body below it)."""
        children = [child for child in self.tree.root_node.children if not child.is_extra]
        before = [i for i, child in enumerate(children) if child.start_byte < self.at]
        after = [i for i, child in enumerate(children) if child.end_byte > self.at]
        if not before and not after:
            return None
        first = before[-1] if before else after[0]
        last = after[0] if after else before[-1]
        start, end = children[first].start_byte, children[max(first, last)].end_byte
        if start and self.data[start - 1:start] != b"\n":  # not at the start of a line: not a statement
            return None
        if _compile_error(self.data[start:end], top_level_await=True) is not None:
            return None
        return start, end

    def _breaks_statement(self, data: bytes, lo: int, hi: int) -> bool:
        """Does the candidate at [lo, hi) keep the statements around the cursor from compiling?"""
        if self._statement is None:
            return False
        start, end = self._statement
        return _compile_error(data[start:end + (hi - lo)], top_level_await=True) is not None

    @cached_property
    def _baseline_compile_error(self) -> Exception | None:
        return _compile_error(self.data, top_level_await=True)

    def _mismatched_unindent(self, after: Exception | None, data: bytes, lo: int, hi: int) -> bool:
        """Does CPython (`after`: its error with the candidate in) now stop on a dedent that matches
        no outer block below the candidate, where it did not before? A `try:` or `if x:` written at
        the wrong depth over the suffix's indented lines fixes the "unexpected indent" the hole left
        and breaks the block structure further down, below the lines blamed on it."""
        if not isinstance(after, IndentationError) or not str(after.msg).startswith("unindent does not match"):
            return False
        before = self._baseline_compile_error
        shift = data.count(b"\n", lo, hi)
        return not (isinstance(before, IndentationError) and before.msg == after.msg
                    and before.lineno is not None and after.lineno == before.lineno + shift)

    def _kept(self, error: tuple[str, int, int], lo: int, hi: int) -> bool:
        kind, start, end = error
        if _touches(start, end, lo, hi):
            return False
        shift = 0 if start < lo else hi - lo  # not touching: wholly before the insertion or after it
        return (kind, start - shift, end - shift) in self.baseline_errors

    def _unfinished(self, data: bytes, tree: tree_sitter.Tree, errors: list[tuple[str, int, int]],
                    lo: int, hi: int) -> bool:
        """Does the candidate at [lo, hi) leave the code up to the error right after it (if there
        is one) less finished than it was? Judged on the text cut where that error begins, with
        and without the candidate."""
        nexts = [start for _, start, _ in errors if start >= hi]
        if self.language in UNCUT or not nexts or not _only_extras(tree.root_node, hi, min(nexts)):
            return False
        cut = min(nexts)
        before = error_nodes(self.parser.parse(self.data[: cut - (hi - lo)]).root_node)
        return _adds_error_over(error_nodes(self.parser.parse(data[:cut]).root_node), before, lo, hi)

    def check(self, middle: str, truncate: bool) -> Validation:
        def ok(text: str) -> bool:
            return self.accepts(_encode(text))

        if ok(middle):
            return Validation(text=middle, valid=True)
        if truncate:  # the longest prefix of whole lines that parses (SAFIM-style post-processing)
            lines = middle.split("\n")
            # A middle of whole lines (it ends with a line break: the text after it starts a line)
            # keeps the break, or its last kept line would run into the line below.
            ending = "\n" if lines[-1] == "" else ""
            if ending:
                lines.pop()
            for keep in range(len(lines) - 1, 0, -1):
                head = "\n".join(lines[:keep]) + ending
                if head.strip() and ok(head):
                    return Validation(text=head, valid=True, truncated=True)
        return Validation(text=middle, valid=False)


NARROW_STARTS = 2  # top-level lines before the cursor tried as the start of a narrowed region
NARROW_ENDS = 2  # and after it as its end


def _top_level_lines(data: bytes) -> list[int]:
    return [match.start() + 1 for match in _TOP_LEVEL_LINE.finditer(data)]


_OPENERS = {b")": b"_(", b"]": b"[", b"}": b"{"}  # what stands before an unmatched closer (a call takes keywords)
_CLOSERS = {b"(": b")", b"[": b"]", b"{": b"}"}


def _unbalanced(data: bytes, tree: tree_sitter.Tree) -> tuple[bytes, bytes]:
    """The brackets the region's cut leaves open at either end: the closers of brackets opened
    before its start (as the openers that make them whole, outermost first) and the openers still
    open at its end (as their closers). Brackets in strings and comments are not tokens."""
    open_, unmatched = [], []
    cursor = tree.walk()
    while True:
        node = cursor.node
        if node.child_count == 0 or node.type in ("string", "comment"):
            token = data[node.start_byte:node.end_byte]
            if node.type in ("(", "[", "{") and token in _CLOSERS:
                open_.append(token)
            elif node.type in (")", "]", "}") and token in _OPENERS:
                if open_:
                    open_.pop()  # what closes it is the grammar's business, not this count
                else:
                    unmatched.append(token)
            descend = False
        else:
            descend = True
        if descend and cursor.goto_first_child():
            continue
        while not cursor.goto_next_sibling():
            if not cursor.goto_parent():
                return (b"".join(_OPENERS[c] for c in reversed(unmatched)),
                        b"".join(_CLOSERS[o] for o in reversed(open_)))


def _bracketed(parser: tree_sitter.Parser, checker: RegionChecker, before: bytes, after: bytes,
               language: str) -> RegionChecker | None:
    """A Python region cut inside brackets (a long tuple, a call's arguments) is no module: its lines
    are not statements and its closer is unmatched, so it is broken or at least does not compile,
    and then a candidate that closes the bracket early and leaves a bare `+ zero` behind is judged
    by the lenient rules. Re-opened (and closed) where the cut left them, it may parse and compile:
    then that region, strictly checked, is the checker."""
    if language != "python" or before.lstrip(b"\n")[:1] not in (b" ", b"\t"):  # cut at a top-level line: no bracket
        return None
    head, tail = _unbalanced(checker.data, checker.tree)
    if not head and not tail:
        return None
    wrapped = RegionChecker(parser, head + before, after + tail, language)
    return wrapped if not wrapped.errors and wrapped.strict is not None else None


def checker_for(parser: tree_sitter.Parser, before: bytes, after: bytes, language: str = "") -> RegionChecker:
    """The checker for the region `before` + cursor + `after`; when that region is already broken,
    the narrowest one cut at top-level lines nearer the cursor that parses, if there is one (and
    compiles, for Python: tree-sitter takes "y = \\nz = 3" for one statement, so a cut inside
    an open bracket could look clean)."""
    checker = RegionChecker(parser, before, after, language)
    if not checker.errors and (checker.strict is not None or checker.repair_check is None):
        return checker
    bracketed = _bracketed(parser, checker, before, after, language)
    if bracketed is not None:
        return bracketed
    if not checker.errors:
        return checker
    starts = _top_level_lines(before)[::-1][:NARROW_STARTS] + [0]
    ends = _top_level_lines(after)[:NARROW_ENDS] + [len(after)]
    strict = STRICT_PARSERS.get(language, (None,))[-1]  # the most lenient: a cell's region may be narrowed to
    for start in starts:
        for end in ends:
            if (start, end) == (0, len(after)):
                continue
            data = before[start:] + after[:end]
            tree = parser.parse(data)
            if not tree.root_node.has_error and (strict is None or strict(data)):
                narrowed = RegionChecker(parser, before[start:], after[:end], language, tree)
                if not narrowed.in_long_literal():
                    return narrowed
    return checker


def _ends_at_top_level(after: bytes, end: int) -> bool:
    """Does a region cut `after` at `end` end where the document does, or right before a top-level
    line (not in the middle of a function or bracket)?"""
    return end >= len(after) or (after[end - 1:end] == b"\n" and _TOP_LEVEL_LINE.match(after, end - 1) is not None)


def _widened(parser: tree_sitter.Parser, prefix: str, suffix: str, checker: RegionChecker,
             language: str = "python", end_cut: bool = False) -> RegionChecker:
    """A region cut inside a long function, class or bracket (it starts indented) is judged by the
    lenient rules: in Python it does not compile ("unexpected indent"), so CPython could not judge a
    candidate there (inside a 256-line tuple of strings, `__` between two of them parsed for
    tree-sitter as a statement of its own); in a brace language it starts in a method body of a
    class and its closers are unmatched, and there a `}` that ends the method early moved no error
    while the right line did. Cut wider, at top-level lines (Python: the brackets still open at its
    end closed after it), the region may parse (and compile): then that one is the checker.

    In a brace language the region is also widened when it ends inside a function (`end_cut`: more
    than AFTER bytes of it after the cursor): cut there, the function is unclosed, one ERROR spans
    the region and touches every candidate, and even the right text was refused. The wider region,
    cut at top-level lines at both ends, is the checker even when it does not parse: its errors are
    then the document's own (the user's half-typed line), not the cut's."""
    end_cut = end_cut and language != "python"
    if not checker.data[:1].isspace() and not end_cut:
        return checker
    before = _encode(prefix[-WIDE_BEFORE * 4:])
    after = _encode(suffix[: WIDE_AFTER * 4])
    start, end = region_start(before, WIDE_BEFORE), region_end(after, WIDE_AFTER)
    while before[start:start + 1] in (b")", b"]", b"}"):  # the end of something before: start after it
        later = [line for line in _top_level_lines(before[start:]) if line > 0]
        if not later:
            break
        start += later[0]
    starts_clean, ends_clean = not before[start:][:1].isspace(), _ends_at_top_level(after, end)
    wider = len(before) - start > checker.at or end > len(checker.data) - checker.at
    if not wider or not (starts_clean or (end_cut and ends_clean)):
        return checker  # no top-level line in reach, or no wider than before
    wide = RegionChecker(parser, before[start:], after[:end], language)
    if language != "python":
        return wide if not wide.errors or (starts_clean and ends_clean) else checker
    if wide.errors or wide.strict is None:  # it may end inside the bracket: closed there, it may compile
        head, tail = _unbalanced(wide.data, wide.tree)
        if tail and not head:
            wide = RegionChecker(parser, before[start:], after[:end] + b"\n" + tail + b"\n", "python")
    return wide if not wide.errors and wide.strict is not None else checker


def _whole(parser: tree_sitter.Parser, prefix: str, suffix: str, checker: RegionChecker,
           language: str) -> RegionChecker:
    """Every region cut from the document is broken (or, in Python, does not compile): a cut inside
    a long class, a table or a doc comment leaves brackets unmatched, and one ERROR spanning the
    cursor refused every candidate, the removed text included (32 of 535 held-out holes, in files
    that parse). A document up to WHOLE bytes (WHOLE_INCREMENTAL outside Python) is then checked
    whole: its errors, if it has any, are its own (the line being typed), not a cut's.

    Also asked when a region that parses puts the cursor in a string or comment over
    several lines: a cut between two multi-line strings (two embedded programs in a test file, Go
    raw strings, JavaScript templates) can parse inside out, the code between them a string and
    theirs code, and then any candidate is string content. Checked whole, the cursor is in code
    again (and the caller takes the whole document only then; a real docstring keeps its region)."""
    limit = WHOLE if language == "python" else WHOLE_INCREMENTAL
    if len(prefix) + len(suffix) > limit:  # at least as many bytes: too big, whatever the encoding
        return checker
    before, after = _encode(prefix), _encode(suffix)
    if len(before) + len(after) > limit or len(before) + len(after) == len(checker.data):
        return checker
    return RegionChecker(parser, before, after, language)


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
            end = region_end(after, after_bytes)
            checker = checker_for(parser, before[region_start(before, before_bytes):], after[:end], language)
            whole = None  # the whole document's checker, built at most once
            if checker.in_long_literal() and len(prefix) + len(suffix) <= WHOLE:
                # the cut may have turned strings inside out: the whole document says (up to WHOLE, in
                # any language: this costs a whole parse for every request in a long comment)
                whole = _whole(parser, prefix, suffix, checker, language)
                if whole is not checker and not whole.in_long_literal():
                    checker = whole
            if (checker.strict is None and language == "python") or (checker.errors and language != "python"):
                checker = _widened(parser, prefix, suffix, checker, language,
                                   end_cut=not _ends_at_top_level(after, end))
            if checker.errors or (checker.strict is None and language == "python"):
                checker = whole if whole is not None and whole is not checker else \
                    _whole(parser, prefix, suffix, checker, language)
            return [checker.check(middle, truncate) for middle in middles]
    except Exception:  # a grammar bug must not cost the user their suggestions
        log.exception("syntax validation failed for %s; showing candidates unchecked", language)
        return unchecked
