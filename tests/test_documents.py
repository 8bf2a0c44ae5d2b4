"""The server's copy of a document follows LSP's rules for lines and positions, so it stays the
editor's copy through any sequence of incremental edits."""

import random
import re

from lsprotocol import types
from pygls.workspace import PositionCodec

from infill_lsp.lsp.documents import LspTextDocument, split_lines


def doc(text: str, encoding=types.PositionEncodingKind.Utf16) -> LspTextDocument:
    return LspTextDocument("file:///t", text, sync_kind=types.TextDocumentSyncKind.Incremental,
                           position_codec=PositionCodec(encoding))


def edit(d: LspTextDocument, start: tuple[int, int], end: tuple[int, int], text: str) -> str:
    d.apply_change(types.TextDocumentContentChangePartial(
        range=types.Range(types.Position(*start), types.Position(*end)), text=text))
    return d.source


def test_only_cr_lf_and_crlf_break_lines():
    assert split_lines("a\x0cb\nc\u2028d\re\r\nf") == ["a\x0cb\n", "c\u2028d\r", "e\r\n", "f"]
    assert split_lines("") == [] and split_lines("x\n") == ["x\n"] and split_lines("\n\n") == ["\n", "\n"]


def test_edit_after_a_form_feed_lands_on_its_line():
    # pygls' splitlines-based copy replaced the "c" of line 1 here: the document drifted
    assert edit(doc("a\x0cb\nc\u2028d\re\r\nf"), (2, 0), (2, 1), "X") == "a\x0cb\nc\u2028d\rX\r\nf"


def test_columns_past_the_line_end_stop_before_its_terminator():
    assert edit(doc("ab\r\ncd"), (0, 99), (0, 99), "!") == "ab!\r\ncd"
    assert edit(doc("ab\rcd"), (0, 2), (0, 50), "") == "ab\rcd"


def test_lines_past_the_end_mean_the_end():
    assert edit(doc("ab\n"), (5, 3), (9, 0), "z") == "ab\nz"


def test_astral_characters_in_utf16_and_utf8():
    assert edit(doc("a😀b"), (0, 3), (0, 4), "") == "a😀"  # UTF-16: the emoji is 2 units
    assert edit(doc("a😀b", types.PositionEncodingKind.Utf8), (0, 5), (0, 6), "") == "a😀"  # UTF-8: 4 bytes
    assert edit(doc("a😀b"), (0, 2), (0, 2), "x") == "ax😀b"  # inside the pair: snaps to its start


def _position(full: str, offset: int) -> types.Position:
    """The client's position of a code-point offset, computed independently: lines counted by
    LSP's breaks, columns in UTF-16 units."""
    head = full[:offset]
    breaks = list(re.finditer(r"\r\n|\r|\n", head))
    line_start = breaks[-1].end() if breaks else 0
    return types.Position(len(breaks), len(head[line_start:].encode("utf-16-le")) // 2)


def test_random_edits_match_a_reference_buffer():
    rng = random.Random(7)
    pieces = ["a", "bc", "\n", "\r\n", "\r", "\x0c", "\u2028", "\x85", "é", "😀", " "]
    full, d = "", doc("")
    for _ in range(500):
        offsets = [i for i in range(len(full) + 1) if not (0 < i < len(full) and full[i - 1] == "\r" and full[i] == "\n")]
        start, end = sorted(rng.choice(offsets) for _ in range(2))
        new = "".join(rng.choice(pieces) for _ in range(rng.randrange(4)))
        d.apply_change(types.TextDocumentContentChangePartial(
            range=types.Range(_position(full, start), _position(full, end)), text=new))
        full = full[:start] + new + full[end:]
        assert d.source == full
