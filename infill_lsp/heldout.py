"""The per-language held-out check: holes cut from files the model never trained on.

Files come from a shard directory's `heldout.jsonl.gz` (`infill-lsp corpus` keeps ~2% of files
out of training by a hash of their path). Holes are cut with a model-independent lexer (words,
numbers, single punctuation characters; whitespace is not a token), so every model is scored on
the same holes:

- `1-4 tokens` and `5-16 tokens`: the cursor sits before a lexeme inside a line, the answer is
  the next k lexemes (never past the end of the line);
- `line`: the cursor sits after a line's indentation, the answer is the rest of the line.

Each hole runs through the full pipeline (`pipeline.complete`) as an editor request would. The
judge of "shown suggestions parse" is independent of the server's validator: a fresh parse of
the whole document with the suggestion must not have more ERROR/MISSING nodes than without it,
and a Python document that compiled without the hole must compile with the suggestion.
"""

from __future__ import annotations

import random
import re
import statistics
from collections import defaultdict

import msgspec

from . import pipeline, rank
from .config import Settings
from .syntax import parser_for
from .types import Budget

LEXEME = re.compile(r"[A-Za-z_][A-Za-z_0-9]*|\d+(?:\.\d+)?|[^\sA-Za-z_0-9]")
KINDS = ("1-4 tokens", "5-16 tokens", "line")
LANGUAGES = ("python", "javascript", "typescript", "go", "rust")


class Hole(msgspec.Struct, frozen=True):
    language: str
    kind: str
    path: str
    text: str  # the document without the answer
    offset: int  # the cursor
    answer: str


class HoleResult(msgspec.Struct):
    language: str
    kind: str
    exact_top: bool
    exact_raw: bool
    shown: int
    shown_parsing: int
    latency_ms: float
    top: str | None = None
    path: str = ""  # the held-out file the hole was cut from


def _errors(language: str, source: str) -> int:
    parser = parser_for(language)
    tree = parser.parse(source.encode("utf-8", "surrogatepass"))
    count, stack = 0, [tree.root_node]
    while stack:
        node = stack.pop()
        if node.is_error or node.is_missing:
            count += 1
        if node.has_error:
            stack.extend(node.children)
    return count


def _compiles(source: str) -> bool:
    try:
        compile(source, "<heldout>", "exec", dont_inherit=True)  # parses and compiles; never runs
        return True
    except (SyntaxError, ValueError):
        return False


def suggestion_parses(hole: Hole, suggestion: str) -> bool:
    """The independent judge: no more syntax errors than the document without the hole had."""
    with_it = hole.text[:hole.offset] + suggestion + hole.text[hole.offset:]
    if _errors(hole.language, with_it) > _errors(hole.language, hole.text):
        return False
    if hole.language == "python" and _compiles(hole.text) and not _compiles(with_it):
        return False
    return True


def cut_holes(files: list[dict], *, per_kind: int = 2, files_per_language: int = 20, seed: int = 0) -> list[Hole]:
    """Deterministic holes: `per_kind` of each kind from each of the first files of every language."""
    rng = random.Random(seed)
    by_language: dict[str, list[dict]] = defaultdict(list)
    for record in sorted(files, key=lambda r: r["path"]):
        if record["language"] in LANGUAGES and len(by_language[record["language"]]) < files_per_language:
            by_language[record["language"]].append(record)
    holes = []
    for language in LANGUAGES:
        for record in by_language[language]:
            text = record["text"]
            lines, start = [], 0
            for line in text.splitlines(keepends=True):
                body = line.rstrip("\r\n")
                lexemes = [(start + m.start(), start + m.end()) for m in LEXEME.finditer(body)]
                if len(lexemes) >= 2:
                    lines.append(lexemes)
                start += len(line)
            if not lines:
                continue
            for kind in KINDS:
                for _ in range(per_kind):
                    lexemes = rng.choice(lines)
                    if kind == "line":
                        begin, end = lexemes[0][0], lexemes[-1][1]
                    else:
                        low, high = (1, 4) if kind == "1-4 tokens" else (5, 16)
                        if len(lexemes) < low + 1:
                            continue
                        i = rng.randrange(1, len(lexemes) - low + 1)
                        k = min(rng.randint(low, high), len(lexemes) - i)
                        begin, end = lexemes[i][0], lexemes[i + k - 1][1]
                    holes.append(Hole(language, kind, record["path"], text[:begin] + text[end:], begin,
                                      text[begin:end]))
    return holes


def run_holes(engine, holes: list[Hole], *, budget: Budget, settings: Settings = Settings(),
              seed: int | None = 0) -> list[HoleResult]:
    from .progress import progress

    results = []
    for hole in progress(holes, desc="held-out holes", unit="holes"):
        result = pipeline.complete(engine, hole.text, hole.offset, language_id=hole.language, settings=settings,
                                   budget=budget, seed=seed)
        top = result.items[0].text if result.items else None
        raw = rank.clean(result.raw[0].text, hole.text[hole.offset:], rank.line_before_cursor(hole.text[:hole.offset])) if result.raw else None
        answer = hole.answer.rstrip()
        results.append(HoleResult(
            language=hole.language, kind=hole.kind, top=top, path=hole.path,
            exact_top=top is not None and top.rstrip() == answer,
            exact_raw=raw is not None and raw.rstrip() == answer,
            shown=len(result.items),
            shown_parsing=sum(suggestion_parses(hole, item.text) for item in result.items),
            latency_ms=result.timings.total_ms))
    return results


def table(results: list[HoleResult]) -> str:
    """Markdown: exact match (top-ranked and one raw sample), share with a suggestion, parse share."""
    groups: dict[tuple[str, str], list[HoleResult]] = defaultdict(list)
    for r in results:
        groups[(r.language, r.kind)].append(r)
        groups[(r.language, "all")].append(r)
        groups[("all", r.kind)].append(r)
        groups[("all", "all")].append(r)
    rows = ["| language | hole | n | exact top | exact raw | lift | some suggestion | shown that parse | p50 ms |",
            "|---|---|---|---|---|---|---|---|---|"]
    for (language, kind), group in sorted(groups.items(), key=lambda kv: (kv[0][0] == "all", kv[0])):
        n = len(group)
        top = sum(r.exact_top for r in group) / n
        raw = sum(r.exact_raw for r in group) / n
        shown = sum(r.shown for r in group)
        parse = f"{sum(r.shown_parsing for r in group) / shown:.1%}" if shown else "n/a"
        rows.append(f"| {language} | {kind} | {n} | {top:.1%} | {raw:.1%} | {100 * (top - raw):+.1f} "
                    f"| {sum(r.shown > 0 for r in group) / n:.1%} | {parse} "
                    f"| {statistics.median(r.latency_ms for r in group):.0f} |")
    return "\n".join(rows)
