"""The definition index (issue 14): where the names used near the cursor are defined in the workspace.

`DefinitionIndex` walks the workspace folders on its own daemon thread, never on a completion's path:
files of the languages whose tree-sitter grammar is installed (syntax/languages.py: Python,
JavaScript, TypeScript, Go, Rust, Java) are parsed, and their top-level definitions (functions,
classes, types, constants, top-level variables) and those one level inside a class, impl, trait or
module body (methods) are recorded: name -> (file, first line, the line after the last, its text cut
to `DEF_LINES` lines / `DEF_CHARS` characters; comments right above a definition and its decorators
included). A definition's text is kept so that ranking (repo_context.RepoContext.refresh) reads no
file.

When: a full walk when the workspace folders become known or change, and again when a `.gitignore`
is saved or changes on disk (files whose mtime and size did not change are not parsed again); one
file when it is opened, saved (its text as the editor sent it), closed, deleted or renamed (read
from disk again, dropped when gone); the files the client's watcher reports created, changed or
deleted outside the editor (`workspace/didChangeWatchedFiles`, `watched_globs`), a batch as one task
(a batch larger than `MAX_EVENT_FILES`: a walk). Tasks run one at a time on the index's thread, in
order; `lookup` holds a lock only to copy out what it returns.

Privacy: the same rules as the rest of the repository context (repo_context.Admission): files inside
a workspace folder only (symlinks are not followed; a file's real path decides), never what a
`.gitignore` ignores (ignored directories are not even walked), never `.git/` or the usual secret
names. Hidden directories and dependency/build trees (`SKIP_DIRS`) are not walked. Bounded: at most
`MAX_FILES` files of at most `MAX_FILE_BYTES` bytes, `MAX_WALK` directory entries looked at per walk,
`MAX_DEFS_PER_FILE` definitions per file and `MAX_INDEX_CHARS` characters of text in all.
"""

from __future__ import annotations

import bisect
import logging
import os
import queue
import threading
import time
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

import msgspec

from . import repo_context
from .repo_context import Admission, uri_to_path

log = logging.getLogger(__name__)

MAX_FILES = 2000  # files indexed by a walk (files opened or saved later may add MAX_EVENT_FILES more)
MAX_EVENT_FILES = 256
MAX_FILE_BYTES = 256 * 1024  # larger files (generated, minified) are skipped
MAX_WALK = 50_000  # directory entries looked at per walk: a workspace that is a home directory stays cheap
MAX_DEFS_PER_FILE = 1000
MAX_INDEX_CHARS = 16_000_000  # definition text kept in all; files past it are not indexed
DEF_LINES = repo_context.CHUNK_LINES  # a definition's text is cut to its first lines, like a chunk
DEF_CHARS = 3000
MAX_DEPTH = 2  # bodies scanned: a class's methods, a Rust module's items (and their impls' methods)
SKIP_DIRS = frozenset({"node_modules", "venv", "env", "__pycache__", "dist", "build", "target", "vendor",
                       "third_party", "site-packages", "bower_components", "out", "coverage"})
YIELD_EVERY = 16  # files parsed between short sleeps: the pipeline thread gets the GIL back

_COMMENTS = frozenset({"comment", "line_comment", "block_comment"})


class Spec(msgspec.Struct, frozen=True):
    """What counts as a definition in one grammar's tree."""

    defs: dict[str, str]  # node type -> kind; the name is the node's `name` field
    bodies: frozenset[str] = frozenset()  # node types whose `body` (or declaration list) is scanned one level deeper
    wrappers: frozenset[str] = frozenset()  # decorated_definition, export_statement: the definition inside
    groups: dict[str, str] = {}  # declaration node type -> its declarator type (each declarator names one)
    top_groups: frozenset[str] = frozenset()  # groups taken at the top level only (variables)


_JS_DEFS = {"function_declaration": "function", "generator_function_declaration": "function",
            "class_declaration": "class", "method_definition": "method"}
_JS = Spec(defs=_JS_DEFS, bodies=frozenset({"class_declaration"}), wrappers=frozenset({"export_statement"}),
           groups={"lexical_declaration": "variable_declarator", "variable_declaration": "variable_declarator"},
           top_groups=frozenset({"lexical_declaration", "variable_declaration"}))
_TS = Spec(defs={**_JS_DEFS, "abstract_class_declaration": "class", "interface_declaration": "interface",
                 "type_alias_declaration": "type", "enum_declaration": "enum", "function_signature": "function",
                 "abstract_method_signature": "method"},
           bodies=frozenset({"class_declaration", "abstract_class_declaration"}),
           wrappers=frozenset({"export_statement", "ambient_declaration"}), groups=_JS.groups,
           top_groups=_JS.top_groups)
SPECS: dict[str, Spec] = {
    "python": Spec(defs={"function_definition": "function", "class_definition": "class"},
                   bodies=frozenset({"class_definition"}), wrappers=frozenset({"decorated_definition"}),
                   groups={"expression_statement": "assignment"}, top_groups=frozenset({"expression_statement"})),
    "javascript": _JS,
    "typescript": _TS,
    "tsx": _TS,
    "go": Spec(defs={"function_declaration": "function", "method_declaration": "method"},
               groups={"type_declaration": "type_spec", "const_declaration": "const_spec",
                       "var_declaration": "var_spec"},
               top_groups=frozenset({"type_declaration", "const_declaration", "var_declaration"})),
    "rust": Spec(defs={"function_item": "function", "function_signature_item": "function", "struct_item": "struct",
                       "enum_item": "enum", "union_item": "union", "trait_item": "trait", "type_item": "type",
                       "const_item": "constant", "static_item": "constant", "macro_definition": "macro",
                       "mod_item": "module"},
                 bodies=frozenset({"impl_item", "trait_item", "mod_item"})),
    "java": Spec(defs={"class_declaration": "class", "interface_declaration": "interface",
                       "enum_declaration": "enum", "record_declaration": "class", "method_declaration": "method",
                       "constructor_declaration": "method"},
                 bodies=frozenset({"class_declaration", "interface_declaration", "enum_declaration",
                                   "record_declaration"})),
}
_BODY_TYPES = frozenset({"block", "class_body", "declaration_list", "interface_body", "enum_body",
                         "enum_body_declarations"})


class Definition(msgspec.Struct, frozen=True):
    name: str
    kind: str  # function, class, method, constant, variable, type, ...
    real: str  # the file's real path
    uri: str  # as the editor names it when it sent the file, else file:// of the real path
    path: str  # workspace-relative, "/"-separated
    start: int  # first line, 0-based (comments above and decorators included)
    end: int  # the line after the last one kept in `text`
    text: str


class FileEntry(msgspec.Struct):
    uri: str
    path: str
    stamp: tuple[int, int]  # (mtime_ns, size) when parsed; (0, len) for text an editor sent
    definitions: tuple[Definition, ...]
    chars: int


# -- extraction ---------------------------------------------------------------------------------
def _end_row(node) -> int:
    """The line after a node's last one (a node ending at column 0 ends on the line before)."""
    row, column = node.end_point
    return row + 1 if column > 0 else max(row, node.start_point[0] + 1)


def _first_row(node) -> int:
    """Where a definition starts, comments right above it included."""
    row = node.start_point[0]
    sibling = node.prev_named_sibling
    while sibling is not None and sibling.type in _COMMENTS and _end_row(sibling) >= row:
        row = sibling.start_point[0]
        sibling = sibling.prev_named_sibling
    return row


def _name_of(node, field: str = "name") -> str | None:
    name = node.child_by_field_name(field)
    if name is None or name.type not in ("identifier", "type_identifier", "field_identifier",
                                         "property_identifier", "constant"):
        return None
    return name.text.decode("utf-8", "replace")


def extract(language: str, source: bytes) -> list[tuple[str, str, int, int]]:
    """(name, kind, first line, line after the last) of the definitions in `source`."""
    from .syntax.languages import parser_for

    spec = SPECS.get(language)
    parser = parser_for(language) if spec is not None else None
    if parser is None:
        return []
    found: list[tuple[str, str, int, int]] = []

    def scan(parent, depth: int) -> None:
        for node in parent.named_children:
            if len(found) >= MAX_DEFS_PER_FILE:
                return
            outer = node
            while node.type in spec.wrappers:  # decorators, export: the definition inside, from the wrapper's line
                inner = node.child_by_field_name("definition") or node.child_by_field_name("declaration")
                if inner is None:
                    inner = next((c for c in node.named_children if c.type in spec.defs or c.type in spec.groups
                                  or c.type in spec.wrappers), None)
                if inner is None:
                    break
                node = inner
            start, end = _first_row(outer), _end_row(outer)
            kind = spec.defs.get(node.type)
            if kind == "function" and depth > 0 and getattr(parent.parent, "type", "") != "mod_item":
                kind = "method"  # in a class, impl or trait body (a Rust module's functions stay functions)
            if kind is not None:
                name = _name_of(node)
                if name is not None:
                    found.append((name, kind, start, end))
            elif node.type in spec.groups and (depth == 0 or node.type not in spec.top_groups):
                for child in node.named_children:
                    if child.type != spec.groups[node.type]:
                        continue
                    field = "left" if child.type == "assignment" else "name"
                    name = _name_of(child, field)
                    if name is not None:
                        kind = {"type_spec": "type", "const_spec": "constant"}.get(child.type, "variable")
                        found.append((name, kind, start, end))
            if node.type in spec.bodies and depth < MAX_DEPTH:
                body = node.child_by_field_name("body")
                if body is None:
                    body = next((c for c in node.named_children if c.type in _BODY_TYPES), None)
                if body is not None:
                    scan(body, depth + 1)

    scan(parser.parse(source).root_node, 0)
    return found


def _lines(text: str) -> list[str]:
    """Lines as tree-sitter counts them (only "\\n" breaks a line), breaks kept."""
    parts = text.split("\n")
    out = [part + "\n" for part in parts[:-1]]
    if parts[-1]:
        out.append(parts[-1])
    return out


def _skip_name(name: str) -> bool:
    return len(name) < 3 or (name.startswith("__") and name.endswith("__"))


def definitions_of(language: str, text: str, real: str, uri: str, path: str) -> tuple[Definition, ...]:
    lines = _lines(text)
    out = []
    for name, kind, start, end in extract(language, text.encode("utf-8", "surrogatepass")):
        if _skip_name(name):
            continue
        body: list[str] = []
        size = 0
        for line in lines[start:min(end, start + DEF_LINES)]:
            if size + len(line) > DEF_CHARS:
                break
            body.append(line)
            size += len(line)
        if not body or not "".join(body).strip():
            continue
        out.append(Definition(name=name, kind=kind, real=real, uri=uri, path=path, start=start,
                              end=start + len(body), text="".join(body)))
    return tuple(out)


def watched_globs() -> tuple[str, ...]:
    """Glob patterns for a client's file watcher (workspace/didChangeWatchedFiles): the files of the
    languages indexed here, and `.gitignore` files. Plain globs, no relative patterns: what VS Code
    and Neovim 0.11 both take (each matches them in every workspace folder)."""
    from .syntax.languages import EXTENSIONS

    suffixes = sorted({suffix[1:] for suffix in EXTENSIONS if language_of("x" + suffix) is not None})
    return (f"**/*.{{{','.join(suffixes)}}}", "**/.gitignore") if suffixes else ("**/.gitignore",)


def language_of(path: str) -> str | None:
    from .syntax.languages import EXTENSIONS, grammar

    name = EXTENSIONS.get(PurePosixPath(path).suffix.lower())
    return name if name in SPECS and grammar(name) is not None else None


# -- the index ----------------------------------------------------------------------------------
class DefinitionIndex:
    """Definitions in the workspace by name, kept by a background thread (see the module docstring)."""

    def __init__(self) -> None:
        self.admission = Admission()  # the index thread's own: decisions cached there, never shared
        self._lock = threading.Lock()
        self._files: dict[str, FileEntry] = {}  # real path -> what it defines
        self._names: dict[str, list[Definition]] = {}
        self._chars = 0
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._folders: tuple[str, ...] | None = None  # the folders the last walk was asked for
        self._generation = 0  # bumped when a walk is asked for: an older walk stops
        self._closed = False
        self.version = 0  # bumped whenever what lookup answers may have changed
        self._sorted: tuple[int, list[str]] = (-1, [])  # (version, names in order) for completions
        self.building = False
        self.stats: dict[str, int] = {"walks": 0, "updates": 0, "parsed": 0, "skipped": 0}

    # -- asking (event loop) ---------------------------------------------------------------------
    def watch(self, folders: Iterable[str]) -> None:
        """The workspace folders (real paths): walked again when they change."""
        folders = tuple(folders)
        if folders != self._folders and not self._closed:
            self._folders = folders
            self.rewalk()

    def rewalk(self) -> None:
        """Walk the folders again (a `.gitignore` changed): unchanged files are not parsed again."""
        if self._folders is None or self._closed:
            return
        self._generation += 1
        self.building = True
        self._submit(("walk", self._folders, self._generation))

    def update(self, uri: str, text: str | None = None) -> None:
        """One file again: `text` as the editor has it (opened, saved), or None to read the disk
        (closed, deleted, renamed): a file gone or no longer admitted is dropped."""
        if self._folders is not None and not self._closed:
            self._submit(("file", uri, text))

    def update_many(self, uris: Iterable[str]) -> None:
        """Files created, changed or deleted outside the editor (a file watcher's batch), each read
        from the disk again: one task however many (a `git checkout` may report thousands), taking
        turns with the pipeline thread like a walk; a batch larger than MAX_EVENT_FILES is a walk."""
        if self._folders is None or self._closed:
            return
        uris = tuple(dict.fromkeys(uris))  # once each, in order
        if len(uris) > MAX_EVENT_FILES:
            self.rewalk()
        elif uris:
            self._submit(("files", uris, self._generation))

    @property
    def active(self) -> bool:
        """Whether the index is kept (it was given the workspace folders, and not closed)."""
        return self._folders is not None and not self._closed

    def close(self) -> None:
        self._closed = True
        self._generation += 1
        self._submit(None)

    def _submit(self, task) -> None:
        self._tasks.put(task)
        if self._thread is None and task is not None:
            self._thread = threading.Thread(target=self._run, name="infill-definitions", daemon=True)
            self._thread.start()

    def wait(self, timeout: float = 10.0) -> bool:
        """Until every task asked for so far is done (tests, benchmarks); False on timeout."""
        done = threading.Event()
        self._submit(("call", done.set))
        return done.wait(timeout)

    # -- answering (any thread) ----------------------------------------------------------------
    def lookup(self, names: Iterable[str]) -> dict[str, list[Definition]]:
        with self._lock:
            return {name: list(found) for name in names if (found := self._names.get(name))}

    def completions(self, fragment: str, limit: int = 8) -> dict[str, list[Definition]]:
        """Definitions of the names that start with `fragment` (what is typed of a name so far), the
        shortest names first, at most `limit` names; not `fragment` itself (lookup answers that)."""
        with self._lock:
            version, names = self._sorted
            if version != self.version:
                names = sorted(self._names)
                self._sorted = (self.version, names)
            found = []
            for name in names[bisect.bisect_right(names, fragment):]:
                if not name.startswith(fragment):
                    break
                found.append(name)
            found.sort(key=len)
            return {name: list(self._names[name]) for name in found[:limit]}

    def defined_in(self, real: str) -> frozenset[str]:
        with self._lock:
            entry = self._files.get(real)
            return frozenset(d.name for d in entry.definitions) if entry is not None else frozenset()

    def summary(self) -> dict[str, int | bool]:
        with self._lock:
            files, names = len(self._files), sum(len(v) for v in self._names.values())
        return {"files": files, "definitions": names, "building": self.building, **self.stats}

    # -- the index's thread --------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            task = self._tasks.get()
            if task is None:
                if self._closed:
                    return
                continue
            try:
                if task[0] == "walk":
                    self._walk(task[1], task[2])
                elif task[0] == "file":
                    self._file(task[1], task[2])
                elif task[0] == "files":
                    self._files_from_disk(task[1], task[2])
                elif task[0] == "call":
                    task[1]()
            except Exception:  # noqa: BLE001 - a bug here must not end the thread (or the server)
                log.exception("indexing definitions failed")

    def _walk(self, folders: tuple[str, ...], generation: int) -> None:
        if generation != self._generation:
            return  # a newer walk is queued
        started = time.perf_counter()
        self.stats["walks"] += 1
        self.admission.set_folders(folders)
        self.admission.forget()
        seen: set[str] = set()
        entries = parsed = 0
        for folder in self.admission.folders:
            rules = self.admission.rules_for(folder)
            for directory, dirnames, filenames in os.walk(folder):
                if generation != self._generation or self._closed:
                    return  # folders changed again, or the server is going: that walk does the rest
                entries += len(dirnames) + len(filenames)
                keep = []
                for name in sorted(dirnames):
                    full = os.path.join(directory, name)
                    if (name.startswith(".") or name in SKIP_DIRS or os.path.islink(full)
                            or rules.ignored(_relative(full, rules.root), is_dir=True)):
                        continue
                    keep.append(name)
                dirnames[:] = keep
                for name in sorted(filenames):
                    if len(seen) >= MAX_FILES:
                        break
                    full = os.path.join(directory, name)
                    if language_of(name) is None or os.path.islink(full):
                        continue
                    status = self._index(full, Path(full).as_uri(), None, keep_if_unchanged=True)
                    if status:
                        seen.add(full)
                    if status == "parsed":
                        parsed += 1
                        if parsed % YIELD_EVERY == 0:
                            time.sleep(0.005)
                if entries > MAX_WALK or len(seen) >= MAX_FILES:
                    break
        with self._lock:  # what the walk did not find is gone (deleted, ignored now, outside the folders)
            for real in [real for real in self._files if real not in seen]:
                self._drop(real)
            self.version += 1
        if generation == self._generation:
            self.building = False
        log.info("indexed definitions in %d files (%d parsed, %d entries) in %.0f ms", len(seen), parsed, entries,
                 (time.perf_counter() - started) * 1e3)

    def _files_from_disk(self, uris: tuple[str, ...], generation: int) -> None:
        for done, uri in enumerate(uris, 1):
            if generation != self._generation or self._closed:
                return  # a walk is queued (a .gitignore changed, the folders did): it reads them all
            self._file(uri, None)
            if done % YIELD_EVERY == 0:
                time.sleep(0.005)

    def _file(self, uri: str, text: str | None) -> None:
        self.stats["updates"] += 1
        path = uri_to_path(uri)
        if path is None:
            return
        real = os.path.realpath(path)
        if not self._index(real, uri, text, keep_if_unchanged=False):
            below = real.rstrip(os.sep) + os.sep  # a directory deleted or renamed: what was in it too
            with self._lock:
                gone = [known for known in self._files if known == real or known.startswith(below)]
                for known in gone:
                    self._drop(known)
                if gone:
                    self.version += 1

    def _index(self, real: str, uri: str, text: str | None, keep_if_unchanged: bool) -> str:
        """Index one file: "parsed", "kept" (unchanged since), or "" when it is not indexed."""
        language = language_of(real)
        if language is None:
            return ""
        relative = self.admission.relative_path(uri)
        if relative is None and uri != Path(real).as_uri():
            relative = self.admission.relative_path(Path(real).as_uri())
        if relative is None:
            return ""
        try:
            stat = os.stat(real)
        except OSError:
            if text is None:
                return ""
            stat = None
        if text is None:
            if stat is None or stat.st_size > MAX_FILE_BYTES:
                self.stats["skipped"] += stat is not None
                return ""
            stamp = (stat.st_mtime_ns, stat.st_size)
            existing = self._files.get(real)
            if keep_if_unchanged and existing is not None and existing.stamp == stamp:
                return "kept"
            try:
                with open(real, "rb") as handle:
                    data = handle.read(MAX_FILE_BYTES + 1)
            except OSError:
                return ""
            if len(data) > MAX_FILE_BYTES or b"\0" in data:
                self.stats["skipped"] += 1
                return ""
            text = data.decode("utf-8", "replace")
        else:
            if len(text) > MAX_FILE_BYTES:
                self.stats["skipped"] += 1
                return ""
            stamp = (stat.st_mtime_ns, stat.st_size) if stat is not None else (0, len(text))
        with self._lock:
            known = real in self._files
            full = len(self._files) >= MAX_FILES + MAX_EVENT_FILES or self._chars > MAX_INDEX_CHARS
        if not known and full:
            self.stats["skipped"] += 1
            return ""
        found = definitions_of(language, text, real, uri, relative)
        self.stats["parsed"] += 1
        with self._lock:
            self._drop(real)
            entry = FileEntry(uri=uri, path=relative, stamp=stamp, definitions=found,
                              chars=sum(len(d.text) for d in found))
            self._files[real] = entry
            self._chars += entry.chars
            for definition in found:
                self._names.setdefault(definition.name, []).append(definition)
            self.version += 1
        return "parsed"

    def _drop(self, real: str) -> None:
        """Forget one file (the lock held)."""
        entry = self._files.pop(real, None)
        if entry is None:
            return
        self._chars -= entry.chars
        for definition in entry.definitions:
            same = self._names.get(definition.name)
            if same is None:
                continue
            same[:] = [d for d in same if d.real != real]
            if not same:
                del self._names[definition.name]


def _relative(path: str, root: str) -> str:
    return PurePosixPath(*os.path.relpath(path, root).split(os.sep)).as_posix()
