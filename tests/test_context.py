import pytest

from infill_lsp import context
from infill_lsp.context import UTF8, UTF16, UTF32


def test_cursor_in_ascii_line():
    text = "ab\ncdef\n"
    cursor = context.cursor_at(text, 1, 2)
    assert cursor.offset == 5 and text[: cursor.offset] == "ab\ncd"
    assert (cursor.line_start, cursor.line_end) == (3, 7)


def test_character_past_end_of_line_clamps_to_line_end():
    text = "ab\ncd"
    assert context.cursor_at(text, 0, 99).offset == 2
    assert context.cursor_at(text, 1, 99).offset == 5


def test_line_past_end_of_file_is_none():
    assert context.cursor_at("ab\ncd", 2, 0) is None
    assert context.cursor_at("", 1, 0) is None
    assert context.cursor_at("x", -1, 0) is None


def test_empty_document_has_a_cursor_at_zero():
    assert context.cursor_at("", 0, 0).offset == 0


def test_utf16_surrogate_pairs_and_split_positions():
    line = "a😀b"  # the emoji is 2 UTF-16 units, 4 UTF-8 bytes, 1 code point
    assert context.column_to_index(line, 1, UTF16) == 1
    assert context.column_to_index(line, 3, UTF16) == 2
    assert context.column_to_index(line, 2, UTF16) == 1  # inside the pair: snap to its start
    assert context.column_to_index(line, 5, UTF8) == 2
    assert context.column_to_index(line, 3, UTF8) == 1  # inside the emoji's bytes
    assert context.column_to_index(line, 2, UTF32) == 2
    for encoding in (UTF8, UTF16, UTF32):
        for index in range(len(line) + 1):
            assert context.column_to_index(line, context.index_to_column(line, index, encoding), encoding) == index


def test_crlf_line_end_excludes_carriage_return():
    cursor = context.cursor_at("ab\r\ncd", 0, 10)
    assert cursor.offset == 2 and cursor.line_end == 2


def test_window_cuts_at_line_boundaries():
    text = "".join(f"line {i}\n" for i in range(1000))
    offset = text.index("line 500")
    win = context.window(text, offset, prefix_chars=100, suffix_chars=50)
    assert win.prefix.startswith("line ") and win.prefix.endswith("line 499\n")
    assert len(win.prefix) <= 100 + context.WINDOW_STEP and len(win.suffix) <= 50
    assert win.suffix.startswith("line 500") and not win.suffix.endswith("\n")
    whole = context.window(text, offset)
    assert whole.prefix == text[:offset]


def test_window_of_a_ten_megabyte_file_is_bounded():
    text = "x" * 10_000_000
    win = context.window(text, 5_000_000)
    assert len(win.prefix) <= 8000 + context.WINDOW_STEP and len(win.suffix) <= 4000


def test_window_start_stays_put_while_typing():
    text = "".join(f"row {i}\n" for i in range(5000))
    offset = len(text) // 2
    starts = set()
    for typed in range(200):
        edited = text[:offset] + "x" * typed + text[offset:]
        win = context.window(edited, offset + typed, prefix_chars=2000)
        starts.add(edited[: offset + typed].rfind(win.prefix[:20]))
    assert len(starts) <= 2


# -- positions: lines ---------------------------------------------------------------------------


def test_lines_are_found_whatever_their_length_including_empty_ones():
    text = "\nab\n\ncd\nef"  # an empty first line, an empty line in the middle, no final newline
    lines = text.split("\n")
    start = 0
    for number, line in enumerate(lines):
        end = start + len(line)
        cursor = context.cursor_at(text, number, 99)  # past the end: the end of that line
        assert cursor == context.Cursor(offset=end, line=number, line_start=start, line_end=end), number
        assert context.cursor_at(text, number, 0).offset == start
        start = end + 1
    assert context.cursor_at(text, len(lines), 0) is None


def test_first_line_of_a_longer_document_ends_at_its_own_newline():
    text = "ab\ncd\nef\n"
    assert context.cursor_at(text, 0, 99) == context.Cursor(offset=2, line=0, line_start=0, line_end=2)


# -- positions: columns in every encoding -------------------------------------------------------

# Characters on each side of every UTF-8 length boundary (1/2/3/4 bytes) and of the UTF-16
# surrogate-pair boundary.
BOUNDARY_CHARS = ["\x7f", "\x80", "\u07ff", "\u0800", "\uffee", "\U00010000", "\U0010fffd"]


def _units_in(text, encoding):
    """An independent count: what the client's own encoder says."""
    if encoding == UTF8:
        return len(text.encode("utf-8"))
    if encoding == UTF16:
        return len(text.encode("utf-16-le")) // 2
    return len(text)


def test_columns_count_the_units_of_the_negotiated_encoding():
    for char in BOUNDARY_CHARS:
        line = "a" + char + "b" + char
        for encoding in (UTF8, UTF16, UTF32):
            for index in range(len(line) + 1):
                column = _units_in(line[:index], encoding)
                assert context.index_to_column(line, index, encoding) == column, (hex(ord(char)), encoding, index)
                assert context.column_to_index(line, column, encoding) == index, (hex(ord(char)), encoding, index)


def test_cursor_at_uses_the_negotiated_encoding():
    text = "x = 'é😀' + y\n"
    offset = text.index("+")
    for encoding in (UTF8, UTF16, UTF32):
        cursor = context.cursor_at(text, 0, _units_in(text[:offset], encoding), encoding)
        assert cursor.offset == offset, encoding
    assert context.cursor_at(text, 0, _units_in(text[:offset], UTF8)).offset != offset  # UTF-16 by default


# -- the window ---------------------------------------------------------------------------------


def test_a_short_file_is_seen_whole():
    text = "import os\n\ndef f():\n    return 1\n"
    for offset in range(len(text) + 1):
        win = context.window(text, offset)
        assert (win.prefix, win.suffix) == (text[:offset], text[offset:]), offset


def test_at_the_start_of_a_line_with_text_the_suggestion_is_lines_above_it():
    # HumanEval single-line's cursor: the hole's line is gone, the cursor sits before the next line's
    # indentation. The engine sees the line break before the suffix (a BPE merges it with that
    # indentation in the file), and the pipeline ends each candidate with it.
    text = "def f(xs):\n    total = 0\n    return total\n"
    at = text.index("    return")
    win = context.window(text, at)
    assert (win.prefix, win.suffix, win.line_break) == (text[:at], text[at:], "\n")
    assert context.window(text, 0).line_break == "\n"  # the file's first line
    crlf = text.replace("\n", "\r\n")
    assert context.window(crlf, crlf.index("    return")).line_break == "\r\n"
    # Not on an empty line, mid-line, after a lone CR, or at the end of the file.
    for doc, offset in [("a\n\nb\n", 2), (text, at + 2), (text, text.index("total")), ("a\rb", 2), (text, len(text))]:
        assert context.window(doc, offset).line_break == "", (doc, offset)


def test_the_prefix_keeps_the_files_first_line_when_the_window_reaches_the_start():
    # The start moves in WINDOW_STEP steps; when a step lands on the file's start, that is a
    # line start already and nothing is cut (the first line, often an import, used to be dropped).
    text = "import os\n" + "".join(f"x{i} = {i}\n" for i in range(2000))
    for offset in (8100, 8500, 9000):
        assert context.window(text, offset).prefix == text[:offset]


def test_window_keeps_whole_lines_and_fills_the_budget():
    text = "".join(f"line {i}\n" for i in range(1000))  # lines of 7 to 9 characters
    longest = max(len(line) + 1 for line in text.split("\n"))
    for offset in range(3000, 3200, 7):
        win = context.window(text, offset, prefix_chars=100, suffix_chars=50)
        lo, hi = offset - len(win.prefix), offset + len(win.suffix)
        assert (win.prefix, win.suffix) == (text[lo:offset], text[offset:hi])
        assert text[lo - 1] == "\n" and text[hi] == "\n"  # a line start and a line end
        assert 100 - longest <= len(win.prefix) < 100 + context.WINDOW_STEP  # the start moves in steps
        assert 50 - longest <= len(win.suffix) <= 50  # as many whole lines as fit


def test_window_cuts_a_line_longer_than_the_budget_rather_than_showing_nothing():
    minified = "var a=1;" * 3000  # one 24,000-character line
    text = "// header\n" + minified + "\n// footer\n"
    offset = text.index("var") + 12_000
    win = context.window(text, offset, prefix_chars=1000, suffix_chars=1000)
    assert win.prefix and text[:offset].endswith(win.prefix) and len(win.prefix) < 1000 + context.WINDOW_STEP
    assert win.suffix == text[offset : offset + 1000]


def test_the_suffix_ends_at_the_cursors_own_line_end_when_the_next_line_does_not_fit():
    text = "\n" + "x" * 100 + "\n"
    assert context.window(text, 0, suffix_chars=50).suffix == ""
    assert context.window("ab\n" + "x" * 100, 2, suffix_chars=50).suffix == ""


def test_default_budget_is_8000_characters_before_and_4000_after():
    text = "x" * 20_000  # no line to cut at: the budgets show exactly
    for offset in range(8000, 8000 + 3 * context.WINDOW_STEP):
        win = context.window(text, offset)
        assert 8000 <= len(win.prefix) < 8000 + context.WINDOW_STEP, offset
        assert len(win.suffix) == 4000


def test_only_lsp_line_breaks_end_lines():
    # \n, \r\n and a lone \r end a line; a form feed or U+2028 does not (Python's splitlines would)
    text = "\ra\x0cb\nc\u2028d\re\r\nf"
    lines = [("", 0), ("a\x0cb", 1), ("c\u2028d", 5), ("e", 9), ("f", 12)]  # (text, start offset)
    for number, (line, start) in enumerate(lines):
        end = start + len(line)
        assert context.cursor_at(text, number, 99) == context.Cursor(offset=end, line=number, line_start=start,
                                                                       line_end=end), number
        assert context.cursor_at(text, number, 1).offset == min(start + 1, end), number
    assert context.cursor_at(text, len(lines), 0) is None
    assert context.cursor_at("a\r", 1, 0) == context.Cursor(offset=2, line=1, line_start=2, line_end=2)


def test_the_negotiated_encoding_is_named_by_its_value():
    from lsprotocol.types import PositionEncodingKind

    assert context.encoding_name(None) == UTF16  # not negotiated: LSP's default
    assert context.encoding_name(PositionEncodingKind.Utf8) == UTF8  # the enum's value, not its name
    assert context.encoding_name(PositionEncodingKind.Utf16) == UTF16
    assert context.encoding_name(PositionEncodingKind.Utf32) == UTF32
    assert context.encoding_name("utf-8") == UTF8


@pytest.mark.parametrize("text, offset, expected", [
    ("ab\ncd", 4, context.Cursor(offset=4, line=1, line_start=3, line_end=5)),
    ("ab\r\ncd", 5, context.Cursor(offset=5, line=1, line_start=4, line_end=6)),
    ("a\rb", 2, context.Cursor(offset=2, line=1, line_start=2, line_end=3)),
    ("x\n", 2, context.Cursor(offset=2, line=1, line_start=2, line_end=2)),
    ("", 0, context.Cursor(offset=0, line=0, line_start=0, line_end=0)),
])
def test_cursor_at_offset_is_the_inverse_of_cursor_at(text, offset, expected):
    cursor = context.cursor_at_offset(text, offset)
    assert cursor == expected
    assert context.cursor_at(text, cursor.line, cursor.offset - cursor.line_start) == cursor


def test_a_selected_completion_leaves_the_document_with_its_text_and_the_cursor_after_it():
    text = "x = f(pri)\ny"
    selection = context.Selection(start=context.cursor_at(text, 0, 6), end=context.cursor_at(text, 0, 9),
                                  text="print_all")
    accepted, cursor = selection.document(text)
    assert accepted == "x = f(print_all)\ny"
    assert accepted[:cursor.offset] == "x = f(print_all" and (cursor.line, cursor.line_end) == (0, 16)
