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
