"""The repository-level held-out check (issue 14): holes whose answer is defined in a sibling file.

The single-file held-out check (heldout.py) cannot tell whether repository context helps: its
answers are mostly in the file already. Here a hole sits at a use of a name that the held-out file
does not define but a file next to it does (its package: the directory's other source files), so
the answer is out of reach of a prompt holding the current file only.

Files come from a shard directory's `heldout.jsonl.gz`, as for heldout.py; each record's `path` is
the file's place on this machine, and its directory's other files (those definitions.py indexes)
are the repository. Holes (`cut_holes`):

- `name`: the cursor at the start of a use (tree-sitter identifiers, so not in strings or
  comments, not where a name is bound) of a name defined in 1 to `repo_context.MAX_NAME_FILES`
  sibling files (a name defined in more is not looked up by the server either), never one the file
  defines itself, a very common name, a keyword or (Python) a builtin; the answer is the name;
- `call`: the same use when it is called and the call ends on that line (`name(args)`, or
  `.method(args)` from the method's name); the answer runs to the call's closing bracket;
- `typed`: a `name` hole of a name of 6 characters or more with its first `TYPED` (3) typed
  already, as when a user pauses mid-name: the answer is the rest of it.

Each hole runs through `pipeline.complete` three times, modes interleaved (which goes first rotates)
so that machine load weighs on all alike: once without repository context, once with the context
read only to finish a typed name (`hints`: names.py; what `repoContext: "auto"` gives a checkpoint
that declares no layout, such as infill-small), once with the context
the server would send (`context_for`: the package copied to a temporary workspace folder, its
definition index built and waited for before any request, the document opened as the editor's
didOpen would, `RepoContext.for_request` at the cursor as the server's `_repo_for` calls it; on
even for a checkpoint that declares no layout, as `repoContext: "on"` forces it). The copy keeps
the measurement to the package: a workspace folder at the real directory would walk its
subdirectories too (the whole standard library under `lib/python3.11`), and files under this
repository's `.venv` are ignored by its `.gitignore`, so the server would admit nothing there.

Latency: the first request of each mode is cold for the engine's encoded-prefix checkpoint (the
other mode's prompt, or the previous hole's, is in it); the same request again right after it
(`warm_ms`) encodes only the prompt's tail, as a keystroke that leaves the checkpoint in place
does. Issue 14's latency target (<= +10% p50 with context) is about the latter.
"""

from __future__ import annotations

import builtins
import os
import random
import re
import shutil
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import msgspec

from . import definitions, names, pipeline, rank, repo_context
from .bench import percentile
from .config import Settings
from .types import Budget, ContextChunk

KINDS = ("name", "call", "typed")
TYPED = 3  # a `typed` hole: the name's first characters are typed already (repo_context.TYPED_MIN)
LANGUAGES = ("python", "javascript", "typescript", "go", "rust")
MAX_CALL_CHARS = 120  # a longer call is not a `call` hole (still a `name` one)
MAX_SIBLINGS = definitions.MAX_FILES  # sibling files read per package (runtime/ in Go has 650)

_NAME_NODES = frozenset({"identifier", "type_identifier", "field_identifier", "property_identifier", "constant"})
_CALLS = frozenset({"call", "call_expression"})
_MEMBERS = frozenset({"attribute", "member_expression", "selector_expression", "field_expression",
                      "scoped_identifier"})
_BUILTINS = frozenset(dir(builtins))
# JavaScript's own methods and properties: `queue.push` is Array's, whatever a sibling class defines
_JS_BUILTINS = frozenset(
    "length push pop shift unshift slice splice concat indexOf lastIndexOf includes has delete toString valueOf "
    "then catch finally forEach filter reduce some every find findIndex entries size clear join replace trim "
    "startsWith endsWith match test exec bind call apply constructor prototype hasOwnProperty sort reverse "
    "Promise Object Array Map Set WeakMap String Number Boolean Error TypeError JSON Math Date RegExp Symbol "
    "console require module exports process Buffer undefined resolve reject emit on once assign freeze".split())
_TARGETS = frozenset({"pattern_list", "tuple_pattern", "list_pattern", "expression_list", "tuple", "list",
                      "parenthesized_expression", "array_pattern", "object_pattern", "as_pattern_target",
                      "parenthesized_pattern", "mut_pattern", "ref_pattern", "reference_pattern"})
_BINDING_FIELDS = ("name", "left", "pattern", "alias")
_LABELS = frozenset({"keyword_argument", "pair", "field_initializer", "keyed_element"})


class Hole(msgspec.Struct, frozen=True):
    language: str
    kind: str  # "name", "call" or "typed" (the rest of a name whose first TYPED characters are typed)
    path: str  # the held-out file, as the record names it
    text: str  # the document without the answer
    offset: int  # the cursor
    answer: str
    name: str  # the identifier the answer starts with
    defined_in: tuple[str, ...]  # the sibling files that define it (names in the package directory)
    seen: bool  # the name occurs before the cursor already (the model could copy it from the file)


class Run(msgspec.Struct):
    """One mode's request for one hole."""

    exact_top: bool
    exact_raw: bool
    name_top: bool  # the top suggestion starts with the right name (an exact `name` hole, or a call with other args)
    shown: int
    latency_ms: float  # cold: the engine's prefix checkpoint held another prompt
    warm_ms: float  # the same request again: the checkpoint in place, as for the next keystroke
    context_tokens: int = 0
    context_chunks: int = 0
    reached: bool = False  # a chunk in the prompt contains the name (its definition reached the model)
    top: str | None = None


class HoleResult(msgspec.Struct):
    language: str
    kind: str
    path: str
    name: str
    seen: bool
    plain: Run  # no repository context
    context: Run  # the context the server would send, in the prompt
    rank_ms: float = 0.0  # ranking the context for this place (the server does it once per document and on idle)
    names: Run | None = None  # the same context read only to finish a typed name (names.py; not in the prompt)


# -- cutting holes --------------------------------------------------------------------------------
def _siblings(path: str) -> list[str]:
    """The package: the other files of `path`'s directory that the definition index would parse."""
    directory = os.path.dirname(path)
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    out = []
    for name in names:
        full = os.path.join(directory, name)
        if full == path or definitions.language_of(name) is None or os.path.islink(full):
            continue
        try:
            if not os.path.isfile(full) or os.path.getsize(full) > definitions.MAX_FILE_BYTES:
                continue
        except OSError:
            continue
        out.append(full)
        if len(out) >= MAX_SIBLINGS:
            break
    return out


def _read(path: str) -> str | None:
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    return None if b"\0" in data else data.decode("utf-8", "replace")


def package_definitions(path: str, cache: dict | None = None) -> dict[str, tuple[str, ...]]:
    """name -> the sibling files (base names) of `path` that define it, by definitions.py's extraction."""
    directory = os.path.dirname(path)
    if cache is not None and directory in cache:
        found = cache[directory]
    else:
        found: dict[str, set[str]] = defaultdict(set)
        for sibling in _siblings(os.path.join(directory, "")):  # every source file there; `path` is dropped below
            text = _read(sibling)
            language = definitions.language_of(sibling)
            if text is None or language is None:
                continue
            for name, *_ in definitions.extract(language, text.encode("utf-8", "surrogatepass")):
                found[name].add(os.path.basename(sibling))
        if cache is not None:
            cache[directory] = found
    here = os.path.basename(path)
    return {name: tuple(sorted(files - {here})) for name, files in found.items() if files - {here}}


def _own_names(language: str, text: str) -> set[str]:
    """What the file defines itself: its definitions, and what the server's own scan finds."""
    own = {name for name, *_ in definitions.extract(language, text.encode("utf-8", "surrogatepass"))}
    own.update(repo_context._DEFINES.findall(text, 0, repo_context.DEFINES_SCAN))
    return own


def _wanted(name: str, language: str) -> bool:
    return not (len(name) < 3 or (name.startswith("__") and name.endswith("__"))
                or name in repo_context.COMMON_NAMES or name.lower() in repo_context._STOP
                or (language == "python" and name in _BUILTINS)
                or (language in ("javascript", "typescript", "tsx") and name in _JS_BUILTINS))


def _binds(node) -> bool:
    """This occurrence binds the name here: a definition, a parameter, an assignment's or a loop's
    target, a `let` pattern, an import's alias (through tuples and lists of targets)."""
    child, parent = node, node.parent
    while parent is not None and parent.type in _TARGETS:
        child, parent = parent, parent.parent
    if parent is None or parent.type.startswith("scoped") or parent.type in _LABELS:
        return False
    if "parameter" in parent.type:
        return True
    fields = _BINDING_FIELDS + (("property",) if parent.type.endswith("field_definition") else ())
    return any((bound := parent.child_by_field_name(field)) is not None and bound.id == child.id
               for field in fields)


def _label(node) -> bool:
    """A keyword argument's name, an object literal's key, an attribute's meta item: not a use."""
    parent = node.parent
    if parent is not None and parent.type in _LABELS and parent.named_children[:1] and \
            parent.named_children[0].id == node.id:
        return True
    while parent is not None:
        if parent.type in ("attribute_item", "inner_attribute_item"):  # Rust's #[cfg(any(...))]
            return True
        parent = parent.parent
    return False


def _member_of(node):
    """The `X.name` expression whose member `node` is, else None."""
    parent = node.parent
    if parent is not None and parent.type in _MEMBERS and parent.named_children[-1:] and \
            parent.named_children[-1].id == node.id:
        return parent
    return None


def _call_end(node) -> int | None:
    """The byte where the call made by this name ends, when the name is what is called."""
    callee = _member_of(node) or node  # obj.method(...): from the method's name
    call = callee.parent
    if call is None or call.type not in _CALLS:
        return None
    function = call.child_by_field_name("function")
    if function is None or function.id != callee.id:
        return None
    return call.end_byte


_GO_IMPORT = re.compile(r'^\s*(?:import\s+)?(?:(\w+)\s+)?"([^"\n]+)"', re.M)
_PY_IMPORT = re.compile(r"^[ \t]*import[ \t]+([\w.]+)(?:[ \t]+as[ \t]+(\w+))?", re.M)
_PY_FROM = re.compile(r"^[ \t]*from[ \t]+([\w.]+)[ \t]+import[ \t]+\(?([\w ,\t]+)", re.M)
_JS_REQUIRE = re.compile(r"\b(?:const|let|var)\s+(\w+)\s*=\s*(?:__importDefault\(|__importStar\()?"
                         r"require\(\s*['\"]([^'\"]+)['\"]")
_JS_IMPORT = re.compile(r"\bimport\s+(?:\*\s+as\s+)?(\w+)\s+from\s+['\"]([^'\"]+)['\"]")


def _foreign(language: str, text: str, stems: frozenset[str]) -> frozenset[str]:
    """Names the file binds to modules that are not its siblings (`fmt`, `semver`, `os`): in `fmt.Printf`
    the name is that module's, whatever a sibling defines under it."""
    out = set()
    if language == "go":  # a package's files share one namespace: every qualifier is another package
        imports = re.split(r"^(?:func|type|var|const)\b", text, maxsplit=1, flags=re.M)[0]
        for alias, path in _GO_IMPORT.findall(imports):
            out.add(alias or path.rsplit("/", 1)[-1])
    elif language == "python":
        for module, alias in _PY_IMPORT.findall(text):
            if module.split(".")[0] not in stems:
                out.add(alias or module.split(".")[0])
        for module, names in _PY_FROM.findall(text):
            if not module.startswith(".") and module.split(".")[0] not in stems:
                out.update(n.split()[-1] for n in names.split(",") if n.strip())
    elif language in ("javascript", "typescript", "tsx"):
        for name, source in _JS_REQUIRE.findall(text) + _JS_IMPORT.findall(text):
            if not source.startswith("."):
                out.add(name)
    return frozenset(out)


def _qualifier(node) -> str | None:
    """`X` in `X.name` (the name being the member), when X is a plain name."""
    member = _member_of(node)
    if member is None:
        return None
    operand = member.named_children[0]
    if operand.type not in _NAME_NODES and operand.type != "package_identifier":
        return None
    return operand.text.decode("utf-8", "replace")


def _uses(language: str, source: bytes, wanted: dict[str, tuple[str, ...]],
          foreign: frozenset[str] = frozenset()) -> list[tuple[int, int, int | None]]:
    """(start byte, end byte, call end byte or None) of each use of a wanted name that the file
    never binds itself (a local variable or parameter of that name makes every occurrence suspect),
    not qualified by another module's name."""
    from .syntax.languages import parser_for

    parser = parser_for(language)
    if parser is None:
        return []
    found, bound = [], set()
    stack = [parser.parse(source).root_node]
    while stack:
        node = stack.pop()
        if node.type in _NAME_NODES and node.child_count == 0:
            name = source[node.start_byte:node.end_byte].decode("utf-8", "replace")
            if name in wanted:
                if _binds(node):
                    bound.add(name)
                elif not _label(node) and _qualifier(node) not in foreign:
                    found.append((name, node))
        stack.extend(reversed(node.children))
    return sorted((node.start_byte, node.end_byte, _call_end(node)) for name, node in found if name not in bound)


def holes_in(record: dict, rng: random.Random, *, per_kind: int = 2, cache: dict | None = None) -> list[Hole]:
    """Up to `per_kind` holes of each kind in one held-out file, at distinct names where it can."""
    path, text = record["path"], record["text"]
    language = definitions.language_of(path)
    if language is None:
        return []
    own = _own_names(language, text)
    wanted = {name: files for name, files in package_definitions(path, cache).items()
              if len(files) <= repo_context.MAX_NAME_FILES and name not in own and _wanted(name, language)}
    if not wanted:
        return []
    source = text.encode("utf-8", "surrogatepass")
    stems = frozenset(os.path.splitext(os.path.basename(f))[0] for f in _siblings(path))
    uses = _uses(language, source, wanted, _foreign(language, text, stems))

    def chars(byte: int) -> int:
        return len(source[:byte].decode("utf-8", "surrogatepass"))

    holes: list[Hole] = []
    for kind in KINDS:
        pool = []
        for start, end, call_end in uses:
            if kind == "call":
                if call_end is None or b"\n" in source[start:call_end] or call_end - start > MAX_CALL_CHARS:
                    continue
                end = call_end
            if kind == "typed" and end - start < 2 * TYPED:  # a name long enough that its head says little
                continue
            pool.append((start, end))
        rng.shuffle(pool)
        named = [(start, end, re.match(rb"\w+", source[start:end]).group().decode("utf-8", "replace"))
                 for start, end in pool]
        taken_names: set[str] = set()
        picked = []
        for use in named:  # one use of each name first, then more uses of the same names
            if len(picked) < per_kind and use[2] not in taken_names:
                taken_names.add(use[2])
                picked.append(use)
        picked += [use for use in named if use not in picked][:per_kind - len(picked)]
        for start, end, name in sorted(picked):
            begin, stop = chars(start) + (TYPED if kind == "typed" else 0), chars(end)
            prefix = text[:begin]
            holes.append(Hole(language=record["language"], kind=kind, path=path, text=prefix + text[stop:],
                              offset=begin, answer=text[begin:stop], name=name, defined_in=wanted[name],
                              seen=re.search(rf"\b{re.escape(name)}\b", prefix) is not None))
    return holes


def cut_holes(files: list[dict], *, per_kind: int = 2, files_per_language: int = 10, seed: int = 0) -> list[Hole]:
    """Deterministic holes from the first `files_per_language` files of each language (by path) that
    are on disk and have a use of a sibling's name."""
    rng = random.Random(seed)
    cache: dict = {}
    by_language: dict[str, list[dict]] = defaultdict(list)
    for record in sorted(files, key=lambda r: r["path"]):
        if record["language"] in LANGUAGES:
            by_language[record["language"]].append(record)
    holes: list[Hole] = []
    for language in LANGUAGES:
        used = 0
        for record in by_language[language]:
            if used >= files_per_language:
                break
            if not os.path.isfile(record["path"]):
                continue
            found = holes_in(record, rng, per_kind=per_kind, cache=cache)
            if found:
                holes.extend(found)
                used += 1
    return holes


# -- the context the server would send -------------------------------------------------------------
class Package:
    """A package copied to a temporary workspace folder, with its definition index built (and
    waited for: never on a request's path here, as in the server once it is ready)."""

    def __init__(self, path: str, *, timeout: float = 300.0) -> None:
        self.root = tempfile.mkdtemp(prefix="infill-repo-heldout-")
        for sibling in [path, *_siblings(path)]:
            try:
                shutil.copyfile(sibling, os.path.join(self.root, os.path.basename(sibling)))
            except OSError:
                continue
        self.index = definitions.DefinitionIndex()
        self.index.watch([os.path.realpath(self.root)])
        if not self.index.wait(timeout):
            raise TimeoutError(f"indexing {os.path.dirname(path)} took over {timeout:.0f} s")

    def uri(self, path: str) -> str:
        return Path(self.root, os.path.basename(path)).as_uri()

    def close(self) -> None:
        self.index.close()
        shutil.rmtree(self.root, ignore_errors=True)


def _cursor(text: str, offset: int) -> tuple[int, int]:
    """(line, offset of its start) as the LSP counts lines."""
    lines = repo_context.split_lines(text[:offset])
    if not lines:
        return 0, 0
    if lines[-1].endswith(("\n", "\r")):
        return len(lines), offset
    return len(lines) - 1, offset - len(lines[-1])


def context_for(package: Package, hole: Hole, settings: Settings,
                engine_tokens: int = 0) -> tuple[tuple[ContextChunk, ...], str]:
    """(chunks, the document's header path) as the server's `_repo_for` would build them right after
    the document was opened (didOpen) with the cursor at the hole, for a checkpoint that takes at most
    `engine_tokens` of context (0: no cap of its own)."""
    tokens, files = settings.repo_context_limits(engine_tokens)
    repo = repo_context.RepoContext(budget_tokens=tokens, max_files=files, definitions=package.index)
    repo.configure(budget_tokens=tokens, max_files=files, folders=[package.root])
    uri = package.uri(hole.path)
    repo.document(uri, hole.text)  # didOpen: its chunks join the pool; the index parses the editor's text
    package.index.wait()
    line, line_start = _cursor(hole.text, hole.offset)
    window = repo_context.window_lines(hole.text, line, settings.prefix_chars, settings.suffix_chars, line_start)
    chunks = repo.for_request(uri, hole.text, line, window, lambda u: hole.text if u == uri else None, line_start,
                              hole.offset)
    if not chunks:
        return (), ""
    return chunks, repo.admission.relative_path(uri) or os.path.basename(hole.path)


# -- running ------------------------------------------------------------------------------------
def _run(engine, hole: Hole, path: str, settings: Settings, budget: Budget, seed: int | None,
         repo: tuple[ContextChunk, ...] = (), repo_path: str = "", hints: tuple[ContextChunk, ...] = (),
         known: tuple[str, ...] = ()) -> Run:
    def once():
        return pipeline.complete(engine, hole.text, hole.offset, language_id=hole.language, path=path,
                                 settings=settings, budget=budget, seed=seed, repo=repo, repo_path=repo_path,
                                 hints=hints, workspace_names=known)

    result = once()
    warm = once().timings.total_ms
    top = result.items[0].text if result.items else None
    raw = rank.clean(result.raw[0].text, hole.text[hole.offset:],
                     rank.line_before_cursor(hole.text[:hole.offset])) if result.raw else None
    answer = hole.answer.rstrip()
    kept = result.timings.context_chunks
    in_prompt = repo[len(repo) - kept:] if kept else ()
    pattern = re.compile(rf"\b{re.escape(hole.name)}\b")
    name_rest = answer if hole.kind == "typed" else hole.name  # what of the name the suggestion must write
    return Run(exact_top=top is not None and top.rstrip() == answer,
               exact_raw=raw is not None and raw.rstrip() == answer,
               name_top=top is not None and re.match(rf"{re.escape(name_rest)}\b", top) is not None,
               shown=len(result.items), latency_ms=result.timings.total_ms, warm_ms=warm,
               context_tokens=result.timings.context_tokens, context_chunks=kept,
               reached=any(pattern.search(chunk.text) for chunk in in_prompt), top=top)


def run_holes(engine, holes: list[Hole], *, budget: Budget, settings: Settings = Settings(),
              seed: int | None = 0) -> list[HoleResult]:
    """The three modes for every hole, interleaved (the first mode rotates); one package indexed at a time:
    no context, the context read only to finish a typed name (what `"auto"` gives a checkpoint that
    declares no layout), the context in the prompt (`"on"`, or `"auto"` for one that does)."""
    from .progress import progress

    settings = msgspec.structs.replace(settings, repo_context="on")  # forced, whatever the checkpoint declares
    results = []
    package: Package | None = None
    directory = None
    try:
        for number, hole in enumerate(progress(holes, desc="repository holes", unit="holes")):
            if os.path.dirname(hole.path) != directory:
                if package is not None:
                    package.close()
                package, directory = None, os.path.dirname(hole.path)
                package = Package(hole.path)
            path = str(Path(package.root, os.path.basename(hole.path)))
            started = time.perf_counter()
            repo, repo_path = context_for(package, hole, settings, getattr(engine.info, "repo_context_tokens", 0))
            rank_ms = (time.perf_counter() - started) * 1e3
            known = names.workspace_names(package.index, hole.text, hole.offset)  # as the server asks per request
            runs = {}
            modes = ("plain", "names", "context")
            for mode in modes[number % 3:] + modes[:number % 3]:
                if mode == "plain":
                    runs[mode] = _run(engine, hole, path, settings, budget, seed)
                elif mode == "names":
                    runs[mode] = _run(engine, hole, path, settings, budget, seed, hints=repo, known=known)
                else:
                    runs[mode] = _run(engine, hole, path, settings, budget, seed, repo, repo_path, known=known)
            results.append(HoleResult(language=hole.language, kind=hole.kind, path=hole.path, name=hole.name,
                                      seen=hole.seen, plain=runs["plain"], context=runs["context"],
                                      rank_ms=rank_ms, names=runs["names"]))
    finally:
        if package is not None:
            package.close()
    return results


# -- the table ------------------------------------------------------------------------------------
def _share(values) -> str:
    values = list(values)
    return f"{sum(values) / len(values):.1%}" if values else "n/a"


SEEN, UNSEEN = "name in file before", "name only elsewhere"


def table(results: list[HoleResult]) -> str:
    """Markdown, per language (and kind, all languages): exact match of the top suggestion and of one
    raw sample without context / with it read only for names (where recorded) / with it in the prompt,
    the share with a suggestion, how often a definition of the
    name reached the prompt, latency cold (p50, p95) and warm (p50), mean context tokens.

    Two more rows split the holes by whether the name already occurs before the cursor: there the
    file alone lets a model copy it, so the right name there and not with context means the model
    copies from its own file but does not yet use the context (and none there: it copies from neither).
    """
    groups: dict[tuple[str, str], list[HoleResult]] = defaultdict(list)
    for r in results:
        groups[(r.language, "all")].append(r)
        groups[("all", r.kind)].append(r)
        groups[("all", SEEN if r.seen else UNSEEN)].append(r)
        groups[("all", "all")].append(r)
    rows = ["| language | hole | n | exact top | exact raw | right name | some suggestion | definition in prompt "
            "| p50 ms | p95 ms | warm p50 ms | context tokens |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def pair(group, value) -> str:
        """without / [names only /] in the prompt (records from before the names mode have two)"""
        names = [r.names for r in group if r.names is not None]
        middle = f" / {value(names)}" if len(names) == len(group) else ""
        return f"{value([r.plain for r in group])}{middle} / {value([r.context for r in group])}"

    for (language, kind), group in sorted(groups.items(), key=lambda kv: (kv[0][0] == "all", kv[0])):
        rows.append(
            f"| {language} | {kind} | {len(group)} "
            f"| {pair(group, lambda runs: _share(r.exact_top for r in runs))} "
            f"| {pair(group, lambda runs: _share(r.exact_raw for r in runs))} "
            f"| {pair(group, lambda runs: _share(r.name_top for r in runs))} "
            f"| {pair(group, lambda runs: _share(r.shown > 0 for r in runs))} "
            f"| {_share(r.context.reached for r in group)} "
            f"| {pair(group, lambda runs: f'{statistics.median(r.latency_ms for r in runs):.0f}')} "
            f"| {pair(group, lambda runs: f'{percentile([r.latency_ms for r in runs], 95):.0f}')} "
            f"| {pair(group, lambda runs: f'{statistics.median(r.warm_ms for r in runs):.0f}')} "
            f"| {statistics.fmean(r.context.context_tokens for r in group):.0f} |")
    return "\n".join(rows)
