"""The repository-level held-out check (repo_heldout.py): holes at names a sibling file defines."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from infill_lsp import repo_heldout
from infill_lsp.config import Settings
from infill_lsp.syntax.languages import parser_for
from infill_lsp.types import Budget

CHECKSUM = '''\
def compute_checksum(payload, seed=0):
    total = seed
    for byte in payload:
        total = (total * 31 + byte) % 65521
    return total


class RecordStore:
    def persist_record(self, record):
        return compute_checksum(record)
'''

MAIN = '''\
import os

from .checksum import compute_checksum, RecordStore


def local_helper(data):
    return len(data)


def handle_payload(payload, persist_record=None):
    store = RecordStore()
    size = local_helper(payload)
    value = compute_checksum(payload, seed=size)
    print(value, os.sep)
    return store.flush(payload)
'''

OTHER = '''\
def local_helper(items):
    return sorted(items)
'''


@pytest.fixture
def package(tmp_path: Path) -> Path:
    root = tmp_path / "pkg"
    root.mkdir()
    (root / "checksum.py").write_text(CHECKSUM)
    (root / "main.py").write_text(MAIN)
    (root / "other.py").write_text(OTHER)  # defines local_helper too: main.py's own wins
    (root / "notes.txt").write_text("compute_checksum RecordStore\n")  # not a source file
    return root


def record(root: Path, name: str = "main.py") -> dict:
    return {"path": str(root / name), "language": "python", "text": (root / name).read_text()}


def test_holes_sit_exactly_at_uses_of_names_a_sibling_defines(package):
    holes = repo_heldout.cut_holes([record(package)], per_kind=100)
    names = {h.name for h in holes if h.kind == "name"}
    # not local_helper (main.py defines it), len/print (builtins), os (a module), payload/size/store
    # (locals), persist_record (a parameter here, though checksum.py defines it), flush (defined nowhere)
    assert names == {"compute_checksum", "RecordStore"}
    expected = {m.start() for m in re.finditer(r"\b(compute_checksum|RecordStore)\b", MAIN)}
    assert {h.offset for h in holes if h.kind == "name"} == expected  # every use, the import's included
    for hole in holes:
        assert hole.text[:hole.offset] + hole.answer + hole.text[hole.offset:] == MAIN
        assert hole.defined_in == ("checksum.py",) and hole.path == str(package / "main.py")
    calls = sorted(h.answer for h in holes if h.kind == "call")
    assert calls == ["RecordStore()", "compute_checksum(payload, seed=size)"]
    seen = {h.answer: h.seen for h in holes if h.kind == "call"}
    assert seen["RecordStore()"] is True  # imported above: the name is in the prefix already
    # deterministic
    assert repo_heldout.cut_holes([record(package)], per_kind=1, seed=3) == \
        repo_heldout.cut_holes([record(package)], per_kind=1, seed=3)
    assert len(repo_heldout.cut_holes([record(package)], per_kind=1)) == 3  # one of each kind
    # typed: the name's first three characters before the cursor, the rest of it the answer
    typed = {(h.text[h.offset - 3:h.offset], h.answer) for h in holes if h.kind == "typed"}
    assert typed == {("com", "pute_checksum"), ("Rec", "ordStore")}


def test_files_without_sibling_names_and_missing_files_give_no_holes(package, tmp_path):
    assert repo_heldout.cut_holes([record(package, "checksum.py")]) == []  # uses nothing of its siblings
    gone = {"path": str(tmp_path / "gone" / "main.py"), "language": "python", "text": MAIN}
    assert repo_heldout.cut_holes([gone]) == []


def test_method_calls_and_other_packages_qualifiers(tmp_path):
    if parser_for("go") is None:
        pytest.skip("no Go grammar")
    root = tmp_path / "asm"
    root.mkdir()
    (root / "asm.go").write_text("package asm\n\nfunc (p *Parser) asmText(word string) {}\n\n"
                                 "func Printf(format string) {}\n")
    (root / "parse.go").write_text('package asm\n\nimport "fmt"\n\ntype Parser struct{}\n\n'
                                   'func (p *Parser) line(word string) {\n\tfmt.Printf("%s", word)\n'
                                   '\tp.asmText(word)\n}\n')
    holes = repo_heldout.cut_holes([{"path": str(root / "parse.go"), "language": "go",
                                     "text": (root / "parse.go").read_text()}], per_kind=10)
    assert sorted((h.kind, h.answer) for h in holes) == [("call", "asmText(word)"), ("name", "asmText"),
                                                         ("typed", "Text")]


def test_with_context_the_prompt_holds_the_siblings_definition(package, engine):
    holes = [h for h in repo_heldout.cut_holes([record(package)], per_kind=100)
             if h.kind == "call" and h.name == "compute_checksum"]
    settings = Settings(repo_context="on")
    pkg = repo_heldout.Package(holes[0].path)
    try:
        chunks, path = repo_heldout.context_for(pkg, holes[0], settings)
    finally:
        pkg.close()
    assert path == "main.py"
    assert any(c.path == "checksum.py" and "def compute_checksum(payload, seed=0):" in c.text for c in chunks)

    hits = engine.stats.get("prefix_cache_hits", 0)
    results = repo_heldout.run_holes(engine, holes, budget=Budget(candidates=2, max_middle_tokens=4, steps=2),
                                     settings=Settings())
    (result,) = results
    assert result.plain.context_tokens == 0 and result.plain.context_chunks == 0
    assert result.context.context_tokens > 0 and result.context.context_chunks >= 1
    assert result.context.reached and not result.plain.reached
    assert result.names is not None and result.names.context_tokens == 0  # read for names, not in the prompt
    assert result.context.latency_ms > 0 and result.context.warm_ms > 0
    assert engine.stats["prefix_cache_hits"] > hits  # the warm repeat reused the encoded context and prefix
    rendered = repo_heldout.table(results)
    assert "| python | all | 1 |" in rendered and "| all | call | 1 |" in rendered
    seen = repo_heldout.SEEN if result.seen else repo_heldout.UNSEEN
    assert f"| all | {seen} | 1 |" in rendered
    assert rendered.split("\n")[2].split(" | ")[3].count(" / ") == 2  # without / names only / in the prompt
    assert rendered.count("\n") == 5  # header, rule, python/all, all/call, all/<seen or not>, all/all
