import pytest

from infill_lsp.syntax import language_for, validate
from infill_lsp.syntax.validate import region_end, region_start

CASES = [
    # language, prefix, suffix, a valid middle, an invalid middle
    ("python", "def f(x):\n    return ", "\n", "x + 1", "x +"),
    ("javascript", "function f(x) {\n  return ", ";\n}\n", "x * 2", "x *"),
    ("typescript", "function f(x: number): number {\n  return ", ";\n}\n", "x as number", "x as"),
    ("tsx", "const App = () => <div>", "</div>;\n", "{count}", "{count"),
    ("rust", "fn f(x: i32) -> i32 {\n    ", "\n}\n", "x + 1", "x +"),
    ("go", "package main\n\nfunc f(x int) int {\n\treturn ", "\n}\n", "x + 1", "x +"),
    ("java", "class A {\n  int f(int x) {\n    return ", ";\n  }\n}\n", "x + 1", "x +"),
    ("c", "int f(int x) {\n    return ", ";\n}\n", "x + 1", "x +"),
    ("cpp", "int f(int x) {\n    return ", ";\n}\n", "static_cast<int>(x)", "static_cast<int>("),
    ("lua", "local function f(x)\n  return ", "\nend\n", "x + 1", "x +"),
    ("bash", 'if [ -f "$1" ]; then\n  echo ', "\nfi\n", '"found"', '"found'),
    ("json", '{\n  "a": 1', "\n}\n", ',\n  "b": [2]', ',\n  "b": [2'),
    ("ruby", "def f(x)\n  ", "\nend\n", "x + 1", "x +"),
]


@pytest.mark.parametrize("language,prefix,suffix,good,bad", CASES, ids=[c[0] for c in CASES])
def test_valid_and_invalid_middles(language, prefix, suffix, good, bad):
    ok, broken = validate(language, prefix, suffix, [good, bad])
    assert ok.valid and ok.checked and ok.text == good
    assert not broken.valid and broken.checked


def test_document_that_is_already_broken_judges_only_what_the_candidate_adds():
    prefix = "def f(x):\n    y = (\n\ndef g():\n    return "
    ok, broken = validate("python", prefix, "\n", ["1", "1 +"])
    assert ok.valid and not broken.valid


def test_truncation_keeps_the_longest_valid_line_prefix():
    result = validate("python", "def f(x):\n    ", "\n", ["y = x + 1\n    z = y * 2\n    if z"])[0]
    assert result.valid and result.truncated and result.text == "y = x + 1\n    z = y * 2"
    untouched = validate("python", "def f(x):\n    ", "\n", ["y = (x +"], truncate=True)[0]
    assert not untouched.valid and untouched.text == "y = (x +"
    assert not validate("python", "def f(x):\n    ", "\n", ["a\n    if z"], truncate=False)[0].valid


def test_unknown_language_and_odd_input_are_unchecked_never_raised():
    assert validate(None, "a", "b", ["c"])[0] == validate("", "a", "b", ["c"])[0]
    assert not validate(None, "a", "b", ["c"])[0].checked and validate(None, "a", "b", ["c"])[0].valid
    assert validate("python", "", "", ["x = 1"])[0].valid
    assert validate("python", "x = '\ud83d", "'\n", ["a"])[0].checked  # a lone surrogate from a split pair
    assert validate("python", "\x00\x01 = ", "\n", ["1"])[0].checked
    assert validate("python", "x = ", "\n", []) == []


def test_language_ids_and_extensions():
    assert language_for("python") == "python"
    assert language_for("typescriptreact") == "tsx"
    assert language_for("javascriptreact") == "javascript"
    assert language_for("shellscript") == "bash"
    assert language_for(None, "/src/a/main.rs") == "rust"
    assert language_for("plaintext", "notes.hpp") == "cpp"
    assert language_for("markdown", "README.md") is None
    assert language_for(None, None) is None


def test_region_is_cut_at_top_level_lines():
    before = b"".join(b"def f%d():\n    return %d\n\n" % (i, i) for i in range(500))
    start = region_start(before, 300)
    assert len(before) - start <= 300 and before[start:].startswith(b"def f")
    after = b"    pass\n" + before
    end = region_end(after, 300)
    assert end <= 300 and after[end:].startswith(b"def f")
    assert region_start(b"short", 300) == 0 and region_end(b"short", 300) == 5


def test_far_away_errors_do_not_make_a_big_file_invalid():
    body = "".join(f"def f{i}(v):\n    return v + {i}\n\n" for i in range(2000))
    prefix = "def broken(:\n" + body + "def target(x):\n    return "
    ok, bad = validate("python", prefix, "\n\n" + body, ["x * 2", "x *"])
    assert ok.valid and not bad.valid


def test_python_indentation_errors_tree_sitter_tolerates_are_caught():
    prefix = "def f(x):\n    y = 1\n"
    bad_indent = "      z = 2\n"  # deeper than the block: tree-sitter shrugs, CPython refuses
    good = "    z = 2\n"
    assert [v.valid for v in validate("python", prefix, "    return y\n", [good, bad_indent])] == [True, False]
    # a region CPython already rejects gives no stricter verdict than tree-sitter's
    assert validate("python", "def f(:\n    ", "\n", ["1"])[0].valid
