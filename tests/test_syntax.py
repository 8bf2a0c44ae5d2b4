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


# Broken documents: a candidate is shown only when it adds no ERROR/MISSING node over the text it
# inserts, or repairs the region. Counting errors is not enough: tree-sitter folds garbage into an
# ERROR node that was there anyway (every "garbage" below was shown by the error-count rule).
BROKEN = [
    # language, prefix, suffix, good, garbage (candidates at the cursor of a region with an unrelated error)
    ("python", "def f(x):\n    if x\n        pass\n    return ", "\n",  # same function, narrowing can't help
     "x * 2", ["for ]", "lambda in", ",", "x y", ":"]),  # ":" closes the `if`, moving the error
    ("python", "def f(x):\n    y = [1, 2\n    z = 3\n    return ", "\n", "z + 1", ["x y z", "lambda", ": :"]),
    ("python", "def broken(:\n    pass\n\ndef target(x):\n    return ", "\n\ndef h():\n    pass\n",
     "x + 1", ["x +", "x + )]", "[[["]),
    ("javascript", "function broken( {\n  return 1;\n}\n\nfunction g(x) {\n  return ", ";\n}\n",
     "x * 2", ["; [ + [", "x ) ] (", "if ( ] x"]),
    ("javascript", "function g(x) {\n  return ", ";\n}\n\nconst z = (1 + ;\n", "x * 2", ["x }", "] x"]),
    ("javascript", "function g(x) {\n  let a = ;\n  return ", ";\n}\n", "x * 2", ["x *", ")]", "x y z"]),
]


@pytest.mark.parametrize("language,prefix,suffix,good,garbage", BROKEN, ids=[f"{c[0]}-{i}" for i, c in enumerate(BROKEN)])
def test_broken_document_good_candidate_shown_garbage_rejected(language, prefix, suffix, good, garbage):
    from infill_lsp.syntax import parser_for

    assert parser_for(language).parse((prefix + suffix).encode()).root_node.has_error  # the precondition
    results = validate(language, prefix, suffix, [good, *garbage], truncate=False)
    assert results[0].valid and results[0].checked, good
    assert [r.valid for r in results[1:]] == [False] * len(garbage), garbage


REPAIRS = [
    # language, prefix, suffix, repairing candidates, candidates that leave the break at the cursor
    ("python", "def f(x):\n    y = foo(", "\n    return y\n", ["x)", "x, 1)"], ["x", "x, )]", "x y z"]),
    ("python", "def f(x):\n    if x", "\n        return 1\n", [" > 0:", ":"], [" > 0", " >"]),
    ("javascript", "function g(x) {\n  return foo(", ";\n}\n", ["x)", "1, 2)"], ["x", "x y z", ")]"]),
    ("javascript", "const a = [1, 2", ";\nconsole.log(a);\n", ["]", ", 3]"], [", 3", ")"]),
]


@pytest.mark.parametrize("language,prefix,suffix,repairs,leaves", REPAIRS, ids=[f"{c[0]}-{i}" for i, c in enumerate(REPAIRS)])
def test_candidate_that_repairs_the_broken_region_is_shown(language, prefix, suffix, repairs, leaves):
    from infill_lsp.syntax import parser_for

    assert parser_for(language).parse((prefix + suffix).encode()).root_node.has_error
    results = validate(language, prefix, suffix, repairs + leaves, truncate=False)
    assert [r.valid for r in results] == [True] * len(repairs) + [False] * len(leaves)


def test_broken_region_that_cannot_be_narrowed_shows_only_repairs():
    # The unclosed "(" swallows everything after it into one ERROR node around the cursor: no
    # candidate can be judged on its own, so only one that makes the region parse is shown.
    prefix, suffix = "x = foo(1,\ny = ", "\nz = 3\n"
    results = validate("python", prefix, suffix, ["2", "2)", "2)\n"], truncate=False)
    assert [r.valid for r in results] == [False, True, True]


def test_candidate_that_moves_an_earlier_error_is_not_shown():
    # tree-sitter takes any expression here as the missing operand of "x +" and reports "return" as
    # the error instead: it cannot tell a good candidate from garbage, so only a repair is shown
    prefix, suffix = "def f(x):\n    y = x +\n    return ", "\n"
    assert [r.valid for r in validate("python", prefix, suffix, ["x * 2", "]", "return"], truncate=False)] == [False] * 3
    assert validate("python", "def f(x):\n    y = x +", "\n    return y\n", [" 1"])[0].valid


def test_repair_must_satisfy_cpython_too():
    # tree-sitter accepts the over-indented line; CPython does not, so it is not a repair
    prefix, suffix = "def f(x):\n    y = foo(", "\n    return y\n"
    bad, good = validate("python", prefix, suffix, ["x)\n        z = 1", "x)\n    z = 1"], truncate=False)
    assert good.valid and not bad.valid


def test_broken_document_candidate_checks_keep_incremental_speed():
    import time

    body = "".join(f"def f{i}(v):\n    w = [v, {i}]\n    return sum(w)\n\n" for i in range(3000))
    prefix = body + "def target(x):\n    if x\n        pass\n    return "
    middles = ["x * 2", "x y", "len(x)\n    y = 2", "foo(x, [1, 2])", "]]", "x) + (", "x if x else 0", ":"]
    validate("python", prefix, "\n\n" + body, middles)
    started = time.perf_counter()
    results = validate("python", prefix, "\n\n" + body, middles)
    elapsed = time.perf_counter() - started
    assert [r.valid for r in results] == [True, False, True, True, False, False, True, False]
    assert elapsed < 0.25, elapsed  # a few ms in practice: a small region, not a ~150 KB file


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
