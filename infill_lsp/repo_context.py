"""Repository context: pieces of the user's other files put before the prefix (issue 14, first slice).

What is gathered, and when (all on LSP events, never while a completion waits):

- `didOpen` / `didSave`: the document is cut into chunks of `CHUNK_LINES` lines (aligned blocks, so a
  chunk keeps its identity between saves), kept in a pool (at most `MAX_POOL_FILES` files,
  `MAX_DOC_CHUNKS` chunks each; the file touched longest ago is evicted first);
- `didChange`: the line each edit starts on is remembered (`MAX_EDITS`, merged when close); at
  refresh time the region around it, as the document reads then, is a candidate chunk too;
- the workspace's definitions (definitions.py, indexed on a thread of its own when the workspace
  folders are known, one file again on open, save and close): at refresh time the definitions, in
  other files, of the names used around the cursor are candidates too (`DEFINITION_BONUS` ahead).

Selection (`refresh`) ranks the candidates by the Jaccard similarity of their identifier sets with
the code around the cursor (as llama.vim compares chunks), edited regions a little ahead; drops the
chunks overlapping the document's own window, chunks mostly repeating the window's lines and near
duplicates of chunks already taken; and fills a character budget (tokens x `CHARS_PER_TOKEN`) from
at most `max_files` files. The result is the *ring*: chunks still selected keep their place, new ones
join at its end (next to the prefix), the rest are evicted. The ring is rebuilt on idle (the server
calls `refresh` once typing has paused `IDLE_S`) or when a request comes for another document (its
prompt is all new anyway), never per keystroke: while the user types, the text before the prefix
stays byte for byte the same and the engine's encoded-prefix cache keeps hitting.

Privacy: only `file:` documents inside a workspace folder (symlinks resolved), never a file
`.gitignore` ignores (the repository's `.gitignore` files from its root down and
`.git/info/exclude`, matched with `pathspec`'s git semantics), never `.git/` and never a few names
that usually hold secrets (`SECRET_NAMES`). Besides the documents the editor has open, only the
definition index reads files (the same rules, on its own thread); nothing is sent anywhere but to the
configured engine.

Layout (`render_chunk`, `render_header`): the checkpoint decides. `PATH_COMMENT`, the plain-text
convention used for the real DiffusionGemma (no `infill_layout` in its config), puts each chunk after
a comment line naming its path, a blank line after it, and the document's own path last:

    [bos] # path: pkg/util.py            <- least relevant chunk first
          def checksum(data): ...
          <blank line>
          # path: pkg/models.py          <- most relevant chunk, next to the prefix
          class Record: ...
          <blank line>
          # path: pkg/main.py            <- the document's own header
          <prefix window>...             <- as without context (same window, token healing)

The comment marker follows the file's extension (`#`, `//`, `--`, `<!-- -->`, `/* */`). A checkpoint
trained by `infill-lsp train` declares the layout it was trained with in `config.json`
`infill_layout.repo_context` (e.g. `"path-comment"`); `infill-small` declares none (it was trained on
single files, so text before the prefix is a distribution shift for it), and `repoContext: "auto"`
leaves it off there.
"""

from __future__ import annotations

import functools
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import PurePosixPath

import msgspec

from .types import ContextChunk

CHUNK_LINES = 32  # a chunk is this many lines (llama.vim: 64)
CHUNK_CHARS = 4000  # longer chunks (minified code) are cut at a line boundary; a longer line is skipped
CHARS_PER_TOKEN = 3.0  # budget estimate on the server side; the engine also caps in tokens
IDLE_S = 1.0  # the ring is refreshed once edits have paused this long
MAX_EDITS = 16  # recently edited regions remembered
MAX_POOL_FILES = 64  # documents whose chunks are kept
MAX_DOC_CHUNKS = 64  # chunks kept per document (its first MAX_DOC_CHUNKS x CHUNK_LINES lines)
FOCUS_BEFORE, FOCUS_AFTER = 32, 8  # "the code around the cursor": lines before and after it
EDIT_BONUS = 0.05  # an edited region ranks this much ahead of an equally similar chunk
DUPLICATE = 0.8  # line-set Jaccard at or above which two chunks are the same (llama.vim: 0.9 for 64 lines)
REPEATS_WINDOW = 0.9  # share of a chunk's lines already in the window at or above which it adds nothing
ADMIT_TTL_S = 10.0  # how long an admit decision (workspace, .gitignore) is cached
DEFINITION_BONUS = 0.1  # a definition (definitions.py) of a name used around the cursor ranks this much ahead
NEAR_BONUS = 0.05  # ... and this much more when the name is within NEAR_LINES lines of the cursor
NEAR_LINES = 4
DOCUMENT_BONUS = 0.05  # a definition of a name the document uses elsewhere (not around the cursor) ranks this much ahead
MAX_DOCUMENT_NAMES = 16  # the document's most used names whose definitions are looked up
TYPED_MIN = 3  # a word this long before the cursor that nothing defines may be a name being typed
MAX_TYPED = 4  # ... whose completions (definitions starting with it) are looked up, this many at most
MAX_DEF_CANDIDATES = 48  # definitions considered per refresh
MAX_NAME_FILES = 3  # a name defined in more files than this is too ambiguous to look up
DEFINES_SCAN = 256 * 1024  # characters of the document searched for the names it defines (a few ms)
COMMON_NAMES = frozenset(
    "get set run main init setup update name value data items keys values test close open read write start stop "
    "append add remove copy format join split print log args kwargs result error index node parse load save call "
    "apply render handle size count next first last path text key item list dict map filter send reset clear "
    "create build execute process callback handler options config settings state".split()
)

PATH_COMMENT = "path-comment"
LAYOUTS = (PATH_COMMENT,)
SECRET_NAMES = (".env", ".env.*", "*.pem", "*.key", "id_rsa*", "id_ed25519*", ".netrc", ".pypirc", ".npmrc")

_LINES = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")  # LSP's line breaks (documents.split_lines)
_IDENT = re.compile(r"\b[^\W\d]\w*")
_STOP = frozenset(
    "and as assert async await break case catch class const continue def default del elif else enum except "
    "export extends false final finally fn for from func function go if impl import in interface is lambda let "
    "match mod mut new nil none not null or package pass private protected pub public raise return self static "
    "struct super switch this throw true try type typeof use var void while with yield int str bool float "
    "string char long double none true false end then local do".split()
)
_COMMENTS = {
    **dict.fromkeys(("py", "pyi", "rb", "sh", "bash", "zsh", "toml", "yaml", "yml", "r", "pl", "ex", "exs",
                     "jl", "nim", "cmake", "mk", "dockerfile", "conf", "cfg", "ini", "txt"), ("#", "")),
    **dict.fromkeys(("lua", "sql", "hs", "elm", "ada"), ("--", "")),
    **dict.fromkeys(("html", "htm", "xml", "vue", "svelte", "md", "markdown"), ("<!--", " -->")),
    **dict.fromkeys(("css", "scss", "less"), ("/*", " */")),
    **dict.fromkeys(("el", "lisp", "clj", "scm"), (";;", "")),
    **dict.fromkeys(("erl", "hrl", "tex"), ("%", "")),
    "vim": ('"', ""),
}
_DEFAULT_COMMENT = ("//", "")  # C, C++, Java, JS/TS, Go, Rust, Kotlin, Swift, C#, PHP, ...
# "def name", "class name", ...: names the document defines itself (saved or not), not looked up elsewhere
_DEFINES = re.compile(r"\b(?:def|class|function|func|fn|struct|enum|trait|interface|type|const|let|var|static)"
                      r"\s+\*?\s*([^\W\d]\w*)")


# -- layout -------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1024)
def render_header(path: str, layout: str = PATH_COMMENT) -> str:
    """The line naming a file: `# path: pkg/util.py` in the file's own comment syntax."""
    name = path.rsplit("/", 1)[-1].lower()
    ext = name.rsplit(".", 1)[-1] if "." in name else name
    opening, closing = _COMMENTS.get(ext, _DEFAULT_COMMENT)
    return f"{opening} path: {path}{closing}\n"


def render_chunk(chunk: ContextChunk, layout: str = PATH_COMMENT) -> str:
    """One chunk as it stands in the prompt: header, text (ending in a newline), a blank line."""
    text = chunk.text if chunk.text.endswith(("\n", "\r")) else chunk.text + "\n"
    return render_header(chunk.path, layout) + text + "\n"


def fit(chunk_ids: list[list[int]], header_ids: list[int], limit: int) -> tuple[list[int], int]:
    """The context's token ids (chunks in order, then the document's header) within `limit` tokens,
    and how many chunks that is: the first (least relevant) chunks are dropped until it fits;
    with no chunk left there is no header either."""
    total = len(header_ids) + sum(len(ids) for ids in chunk_ids)
    start = 0
    while start < len(chunk_ids) and total > limit:
        total -= len(chunk_ids[start])
        start += 1
    kept = chunk_ids[start:]
    if not kept:
        return [], 0
    return [t for ids in kept for t in ids] + header_ids, len(kept)


# -- chunks -------------------------------------------------------------------------------------
_TYPED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*$")  # the name being typed: the word ending at the cursor


def _names(text: str, end: int) -> Iterator[str]:
    return (w for w in _IDENT.findall(text, 0, end) if len(w) > 1 and w.lower() not in _STOP)


def identifiers(text: str) -> frozenset[str]:
    """The names in a piece of code, less keywords and one-letter names."""
    return frozenset(_names(text, len(text)))


def name_uses(text: str, end: int | None = None) -> Counter:
    """How often `text` (up to `end`) uses each of the names `identifiers` reads."""
    return Counter(_names(text, len(text) if end is None else end))


def jaccard(a: frozenset, b: frozenset) -> float:
    if not a or not b or a.isdisjoint(b):
        return 0.0
    common = len(a & b)
    return common / (len(a) + len(b) - common)


def _line_set(text: str) -> frozenset[str]:
    return frozenset(s for line in text.splitlines() if (s := line.strip()))


class Chunk(msgspec.Struct, frozen=True):
    uri: str
    path: str  # workspace-relative, "/"-separated
    start: int  # first line, 0-based
    end: int  # the line after the last
    text: str
    stamp: int  # event counter when gathered: higher is more recent
    edited: bool = False  # a region edited recently (else: from an opened or saved document)
    names: frozenset[str] = frozenset()  # identifiers(text)
    lines: frozenset[str] = frozenset()  # its non-blank lines, stripped: near-duplicate checks
    defines: str = ""  # a definition of this name used around the cursor (from the definition index)
    uses: int = 0  # a definition of a name the document uses this often, not around the cursor

    @property
    def key(self) -> tuple[str, int, int]:
        return self.uri, self.start, self.end

    def overlaps(self, uri: str, lo: int, hi: int) -> bool:
        return self.uri == uri and self.start < hi and lo < self.end

    def public(self) -> ContextChunk:
        return ContextChunk(path=self.path, text=self.text, start_line=self.start, end_line=self.end)


def make_chunk(uri: str, path: str, lines: list[str], start: int, stamp: int, edited: bool = False,
               first: int | None = None) -> Chunk | None:
    """A chunk of `lines[start:start + CHUNK_LINES]` (the document's line `first`, by default `start`),
    or None when it holds too little code."""
    body: list[str] = []
    size = 0
    for line in lines[start:start + CHUNK_LINES]:
        if size + len(line) > CHUNK_CHARS:
            break
        body.append(line)
        size += len(line)
    text = "".join(body)
    if sum(1 for line in body if line.strip()) < 2:
        return None
    first = start if first is None else first
    return Chunk(uri=uri, path=path, start=first, end=first + len(body), text=text, stamp=stamp, edited=edited,
                 names=identifiers(text), lines=_line_set(text))


def split_lines(text: str) -> list[str]:
    return _LINES.findall(text)


def lines_between(text: str, lo: int, hi: int, anchor: tuple[int, int] | None = None) -> list[str]:
    """Lines [lo, hi) of `text` with their breaks, without splitting the whole of a large document.
    `anchor`: a (line, offset of its start) known already, to count from rather than from the top."""
    lo = max(0, lo)
    if hi <= lo:
        return []
    if "\r" in text:  # \r\n or lone \r breaks: LSP's rules, the slow way (rare)
        return split_lines(text)[lo:hi]
    line, start = anchor if anchor is not None and 0 <= anchor[1] <= len(text) else (0, 0)
    while line > lo:  # back from the anchor
        line -= 1
        start = text.rfind("\n", 0, max(0, start - 1)) + 1
    for _ in range(lo - line):
        found = text.find("\n", start)
        if found < 0:
            return []
        start = found + 1
    end = start
    for _ in range(hi - lo):
        found = text.find("\n", end)
        if found < 0:
            end = len(text)
            break
        end = found + 1
    return split_lines(text[start:end])


# -- what may be read ---------------------------------------------------------------------------
class IgnoreRules:
    """`.gitignore` semantics for one repository (or a workspace folder outside any): the
    `.git/info/exclude` file, then `.gitignore` files from the root down, the deeper and later
    rule winning; a directory that is ignored hides everything below it. Specs are cached by mtime."""

    def __init__(self, root: str):
        self.root = root
        self._specs: dict[str, tuple[tuple[int, int], object]] = {}

    def _spec(self, directory: str, name: str = ".gitignore"):
        import pathspec

        path = os.path.join(directory, name)
        try:
            stat = os.stat(path)
        except OSError:
            return None
        mtime = (stat.st_mtime_ns, stat.st_size)
        cached = self._specs.get(path)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                spec = pathspec.GitIgnoreSpec.from_lines(handle.read().splitlines())
        except (OSError, ValueError):  # unreadable, or a pattern pathspec rejects: match nothing
            spec = None
        self._specs[path] = (mtime, spec)
        return spec

    def ignored(self, relative: str, is_dir: bool = False) -> bool:
        """Whether the file (or, with `is_dir`, the directory) at `relative` (to the root) is ignored."""
        parts = PurePosixPath(relative).parts
        if not parts or ".git" in parts:
            return True
        for depth in range(1, len(parts) + 1):  # each directory on the way down, then the file
            is_dir_here = depth < len(parts) or is_dir
            verdict = None
            for above in range(depth):  # the rule files that apply, from the root down
                directory = os.path.join(self.root, *parts[:above])
                specs = [self._spec(directory)]
                if above == 0:
                    specs.insert(0, self._spec(os.path.join(self.root, ".git", "info"), "exclude"))
                name = "/".join(parts[above:depth]) + ("/" if is_dir_here else "")
                for spec in specs:
                    if spec is not None and (found := spec.check_file(name).include) is not None:
                        verdict = found
            if verdict:
                return True
        return False


def _secret(name: str) -> bool:
    from fnmatch import fnmatch

    return any(fnmatch(name, pattern) for pattern in SECRET_NAMES)


def uri_to_path(uri: str) -> str | None:
    """The local path of a `file:` URI, else None (untitled buffers, remote schemes)."""
    if not uri.startswith("file:"):
        return None
    from pygls.uris import to_fs_path

    try:
        return to_fs_path(uri)
    except Exception:  # noqa: BLE001 - a URI no path comes from: not a workspace file
        return None


def _git_root(folder: str) -> str:
    """The repository holding `folder` (where `.git` is), else the folder itself."""
    here = folder
    while True:
        if os.path.exists(os.path.join(here, ".git")):
            return here
        parent = os.path.dirname(here)
        if parent == here:
            return folder
        here = parent


class Admission:
    """Which documents may become context: inside a workspace folder, not ignored, not a secret."""

    def __init__(self) -> None:
        self.folders: tuple[str, ...] = ()
        self._given: tuple[str, ...] = ()
        self._rules: dict[str, IgnoreRules] = {}
        self._decisions: dict[str, tuple[float, str | None]] = {}

    def set_folders(self, folders: Iterable[str]) -> bool:
        """Whether the folders changed."""
        folders = tuple(folders)
        if folders == self._given:
            return False
        self._given = folders
        resolved = tuple(sorted({os.path.realpath(f) for f in folders if f}))
        if resolved == self.folders:
            return False
        self.folders = resolved
        self._decisions.clear()
        return True

    def forget(self) -> None:
        """Decide again (a `.gitignore` was saved)."""
        self._decisions.clear()

    def relative_path(self, uri: str) -> str | None:
        """The document's path relative to its workspace folder ("/"-separated), or None when it may
        not be read as context."""
        now = time.monotonic()
        cached = self._decisions.get(uri)
        if cached is not None and now - cached[0] < ADMIT_TTL_S:
            return cached[1]
        decision = self._decide(uri)
        if len(self._decisions) > 4096:
            self._decisions.clear()
        self._decisions[uri] = (now, decision)
        return decision

    def rules_for(self, folder: str) -> IgnoreRules:
        """The ignore rules of the repository holding `folder` (a resolved workspace folder)."""
        root = _git_root(folder)
        rules = self._rules.get(root)
        if rules is None:
            rules = self._rules[root] = IgnoreRules(root)
        return rules

    def _decide(self, uri: str) -> str | None:
        path = uri_to_path(uri)
        if path is None or not self.folders:
            return None
        real = os.path.realpath(path)
        folder = next((f for f in sorted(self.folders, key=len, reverse=True)
                       if real == f or real.startswith(f.rstrip(os.sep) + os.sep)), None)
        if folder is None or real == folder:
            return None
        if _secret(os.path.basename(real)):
            return None
        rules = self.rules_for(folder)
        root = rules.root
        if rules.ignored(PurePosixPath(*os.path.relpath(real, root).split(os.sep)).as_posix()):
            return None
        return PurePosixPath(*os.path.relpath(real, folder).split(os.sep)).as_posix()


# -- the collector ------------------------------------------------------------------------------
class Edit(msgspec.Struct):
    uri: str
    line: int
    stamp: int


class RepoContext:
    """The pool of candidate chunks, the recent edits and the ring the prompt is built from.

    Called on the server's event loop only (events, idle refresh, the request's `for_request`);
    every call is bounded: no file is read from disk but `.gitignore` files (the definition index,
    when given, reads on its own thread; here it is only looked up in memory)."""

    def __init__(self, *, budget_tokens: int = 512, max_files: int = 8, definitions=None) -> None:
        self.admission = Admission()
        self.definitions = definitions  # a definitions.DefinitionIndex, or None: no workspace definitions
        self._index_version = -1  # the index's version the ring was ranked with
        self.budget_tokens = budget_tokens
        self.max_files = max_files
        self.pool: dict[str, list[Chunk]] = {}  # uri -> its chunks (insertion order: least recent first)
        self.edits: list[Edit] = []  # least recent first
        self.ring: list[Chunk] = []
        self.ring_focus: str | None = None  # the document the ring was ranked for
        self.focus: tuple[str, int, int | None] | None = None  # (uri, line, cursor offset) of the last request
        self.dirty = False  # something was gathered since the last refresh
        self.stats: dict[str, int] = {"refreshes": 0, "ringChanges": 0, "evicted": 0}  # camelCase: infill/stats
        self._stamp = 0

    def configure(self, *, budget_tokens: int, max_files: int, folders: Iterable[str], index: bool = True) -> None:
        """`index`: the workspace's definitions may be indexed (on the index's own thread)."""
        if (budget_tokens, max_files) != (self.budget_tokens, self.max_files):
            self.budget_tokens, self.max_files, self.dirty = budget_tokens, max_files, True
        changed = self.admission.set_folders(folders)
        if changed:
            self._forget_outside()
        if index and self.definitions is not None and (self.admission.folders or changed):
            self.definitions.watch(self.admission.folders)  # none left: the index empties

    def _forget_outside(self) -> None:
        """The workspace folders changed: what came from documents no longer inside one goes (pool,
        edited regions, the ring), as on their close; nothing outside the workspace reaches a prompt."""
        outside = {uri for uri in [*self.pool, *(e.uri for e in self.edits)]
                   if self.admission.relative_path(uri) is None}
        if outside:
            for uri in outside:
                self.pool.pop(uri, None)
            self.edits = [e for e in self.edits if e.uri not in outside]
            self.dirty = True
        kept = [chunk for chunk in self.ring if self.admission.relative_path(chunk.uri) is not None]
        if len(kept) != len(self.ring):
            self.ring = kept
            self.stats["ringChanges"] += 1

    def _next(self) -> int:
        self._stamp += 1
        return self._stamp

    @property
    def budget_chars(self) -> int:
        return int(max(0, self.budget_tokens) * CHARS_PER_TOKEN)

    # -- events --------------------------------------------------------------------------------
    def document(self, uri: str, text: str) -> None:
        """`didOpen` / `didSave`: (re)chunk the document into the pool."""
        if os.path.basename(uri).endswith(".gitignore"):
            self.admission.forget()
            if self.definitions is not None:
                self.definitions.rewalk()
        path = self.admission.relative_path(uri)
        if self.definitions is not None:  # queued: parsed on the index's thread (None: dropped if it was there)
            self.definitions.update(uri, text if path is not None else None)
        if path is None:
            self.pool.pop(uri, None)
            return
        stamp = self._next()
        lines = split_lines(text[: MAX_DOC_CHUNKS * CHUNK_CHARS])  # what MAX_DOC_CHUNKS chunks could hold
        chunks = []
        for start in range(0, min(len(lines), MAX_DOC_CHUNKS * CHUNK_LINES), CHUNK_LINES):
            chunk = make_chunk(uri, path, lines, start, stamp)
            if chunk is not None:
                chunks.append(chunk)
        self.pool.pop(uri, None)
        self.pool[uri] = chunks
        while len(self.pool) > MAX_POOL_FILES:
            del self.pool[next(iter(self.pool))]
            self.stats["evicted"] += 1
        self.dirty = True

    def edited(self, uri: str, lines: Iterable[int]) -> None:
        """`didChange`: the lines its edits started on."""
        if self.admission.relative_path(uri) is None:
            return
        for line in lines:
            stamp = self._next()
            for index, edit in enumerate(self.edits):
                if edit.uri == uri and abs(edit.line - line) < CHUNK_LINES // 2:
                    del self.edits[index]
                    break
            self.edits.append(Edit(uri=uri, line=max(0, line), stamp=stamp))
            if len(self.edits) > MAX_EDITS:
                del self.edits[0]
            self.dirty = True

    def closed(self, uri: str) -> None:
        """`didClose`: what came from the document goes, from the ring too; its definitions are
        read again from the disk (the editor's text may not have been saved)."""
        if self.definitions is not None:
            self.definitions.update(uri)
        if self.pool.pop(uri, None) is not None or any(e.uri == uri for e in self.edits):
            self.edits = [e for e in self.edits if e.uri != uri]
            self.dirty = True
        if any(chunk.uri == uri for chunk in self.ring):  # nothing of a closed document outlives its close
            self.ring = [chunk for chunk in self.ring if chunk.uri != uri]
            self.stats["ringChanges"] += 1

    # -- selection -----------------------------------------------------------------------------
    def _candidates(self, text_of: Callable[[str], str | None]) -> list[Chunk]:
        out = [chunk for chunks in self.pool.values() for chunk in chunks]
        for edit in self.edits:
            text = text_of(edit.uri)
            path = self.admission.relative_path(edit.uri) if text is not None else None
            if path is None:
                continue
            start = max(0, edit.line - CHUNK_LINES // 2)
            lines = lines_between(text, start, start + CHUNK_LINES)
            chunk = make_chunk(edit.uri, path, lines, 0, edit.stamp, edited=True, first=start)
            if chunk is not None:
                out.append(chunk)
        return out

    def _definition_candidates(self, uri: str, text: str, focus: frozenset[str], near: frozenset[str],
                               typed: frozenset[str] = frozenset()) -> list[Chunk]:
        """Definitions, in other workspace files, of the names used around the cursor (those in
        `near` first), of the names that complete one being typed on the cursor's line (`typed`:
        its names that nothing defines, e.g. `compute_ch` of `compute_checksum`), then of the names
        the document uses most elsewhere (`Chunk.uses`: the context the model was trained with,
        train/repo.py, the name under the cursor often among them): names the document defines
        itself, common names and names defined in many files are not looked up. The index answers
        from memory; each file is admitted again here."""
        index = self.definitions
        if index is None or not focus:
            return []
        self._index_version = index.version
        path = uri_to_path(uri)
        here = os.path.realpath(path) if path else ""
        own = set(index.defined_in(here)) if here else set()
        own.update(_DEFINES.findall(text, 0, DEFINES_SCAN))  # unsaved ones too (the index has the saved ones)
        wanted = [name for name in focus if name not in own and name not in COMMON_NAMES]
        found = index.lookup(wanted)
        for fragment in sorted(typed - own - found.keys(), key=len, reverse=True)[:MAX_TYPED]:
            if len(fragment) >= TYPED_MIN:
                for name, definitions in index.completions(fragment).items():
                    if name not in own and name not in COMMON_NAMES:
                        found.setdefault(name, definitions)
        uses = Counter({name: count for name, count in name_uses(text, DEFINES_SCAN).items()
                        if name not in own and name not in COMMON_NAMES and name not in found})
        elsewhere = index.lookup([name for name, _ in uses.most_common(MAX_DOCUMENT_NAMES)])
        methods = {n for n, found_here in elsewhere.items() if all(d.kind == "method" for d in found_here)}
        order = sorted(found, key=lambda n: (n not in near, n)) + sorted(
            elsewhere, key=lambda n: (n in methods, -uses[n], n))  # as train/repo.candidates ranks them
        found.update(elsewhere)
        out: list[Chunk] = []
        for name in order:
            definitions = [d for d in found[name] if d.real != here]
            if not definitions or len({d.real for d in found[name]}) > MAX_NAME_FILES:
                continue
            for definition in definitions:
                relative = self.admission.relative_path(definition.uri)
                if relative is None:
                    continue
                out.append(Chunk(uri=definition.uri, path=relative, start=definition.start, end=definition.end,
                                 text=definition.text, stamp=0, defines=name, names=identifiers(definition.text),
                                 lines=_line_set(definition.text), uses=uses[name] if name in elsewhere else 0))
                if len(out) >= MAX_DEF_CANDIDATES:
                    return out
        return out

    def refresh(self, uri: str, text: str, line: int, window: tuple[int, int],
                text_of: Callable[[str], str | None], line_start: int | None = None,
                offset: int | None = None) -> bool:
        """Rank the candidates for the code around `line` of `uri` (starting at offset `line_start`,
        when known) and rebuild the ring; True when the ring changed. `window`: the document's own
        lines [lo, hi) the prompt already holds. `offset`: the cursor, whose name being typed (the
        word right before it) brings the definitions it may complete to; unknown, every name on
        the cursor's line may be one."""
        self.stats["refreshes"] += 1
        self.dirty = False
        self.ring_focus = uri
        lo, hi = window
        first, last = max(0, min(lo, line - FOCUS_BEFORE)), max(hi, line + FOCUS_AFTER + 1)
        around = lines_between(text, first, last, None if line_start is None else (line, line_start))
        focus = identifiers("".join(around[max(0, line - FOCUS_BEFORE) - first:line + FOCUS_AFTER + 1 - first]))
        window_lines = _line_set("".join(around[max(0, lo) - first:hi - first]))
        near = identifiers("".join(around[max(0, line - NEAR_LINES) - first:line + NEAR_LINES + 1 - first]))
        if offset is not None and 0 < offset <= len(text):
            word = _TYPED.search(text, max(0, offset - 256), offset)
            typed = identifiers(word.group() if word else "")
        else:
            typed = identifiers("".join(around[line - first:line + 1 - first])) if first <= line < last else frozenset()
        completing = set()
        scored = []
        definition_chunks = self._definition_candidates(uri, text, focus, near, typed)
        for chunk in definition_chunks:
            if chunk.defines not in focus:  # found as the completion of a name being typed
                completing.add(chunk.defines)
        for chunk in self._candidates(text_of) + definition_chunks:
            if chunk.overlaps(uri, lo, hi):
                continue
            if chunk.lines and len(chunk.lines & window_lines) >= REPEATS_WINDOW * len(chunk.lines):
                continue
            similarity = jaccard(chunk.names, focus)
            if similarity > 0 or chunk.defines in completing or chunk.uses:  # else it shares no name with the code
                bonus = EDIT_BONUS if chunk.edited else 0.0  # around the cursor: not worth its tokens
                if chunk.uses:  # behind those of the names around the cursor, the most used first
                    bonus += DOCUMENT_BONUS * min(chunk.uses, 8) / 8
                elif chunk.defines:
                    bonus += DEFINITION_BONUS + (NEAR_BONUS if chunk.defines in near or chunk.defines in completing
                                                 else 0.0)
                scored.append((similarity + bonus, chunk.stamp, chunk))
        scored.sort(key=lambda item: (-item[0], -item[1]))

        budget = self.budget_chars
        taken: list[tuple[float, Chunk]] = []
        files: set[str] = set()
        for score, _, chunk in scored:
            if budget < 64:  # no chunk worth having fits any more
                break
            if chunk.path not in files and len(files) >= max(0, self.max_files):
                continue
            size = len(render_header(chunk.path)) + len(chunk.text) + (0 if chunk.text.endswith(("\n", "\r")) else 1) + 1
            if size > budget:
                continue
            if any(chunk.overlaps(other.uri, other.start, other.end) for _, other in taken):
                continue
            if any(jaccard(chunk.lines, other.lines) >= DUPLICATE for _, other in taken):
                continue
            taken.append((score, chunk))
            files.add(chunk.path)
            budget -= size

        # The ring: kept chunks stay where they were, new ones join at the end (best last).
        chosen = {chunk.key: chunk for _, chunk in taken}
        ring = [chosen.pop(old.key) for old in self.ring if old.key in chosen]
        ring += [chunk for _, chunk in sorted(taken, key=lambda item: item[0]) if chunk.key in chosen]
        changed = [(c.key, c.text) for c in ring] != [(c.key, c.text) for c in self.ring]
        if changed:
            self.stats["ringChanges"] += 1
        self.ring = ring
        return changed

    def for_request(self, uri: str, text: str, line: int, window: tuple[int, int],
                    text_of: Callable[[str], str | None], line_start: int | None = None,
                    offset: int | None = None) -> tuple[ContextChunk, ...]:
        """The chunks for a completion at `line` of `uri` (the cursor at `offset`, when known), least
        relevant first. The ring as it is, ranked again only for a document it was not ranked for
        (the prompt is all new then), less the chunks overlapping this document's window."""
        self.focus = (uri, line, offset)
        if self.ring_focus != uri:
            self.refresh(uri, text, line, window, text_of, line_start, offset)
        lo, hi = window
        return tuple(chunk.public() for chunk in self.ring if not chunk.overlaps(uri, lo, hi))

    def idle_refresh(self, text_of: Callable[[str], str | None], lines_of: Callable[[str, int], tuple[int, int]]
                     ) -> bool:
        """The refresh the server runs once typing pauses: for the last request's place, if anything
        was gathered since."""
        index_changed = self.definitions is not None and self.definitions.version != self._index_version
        if not (self.dirty or index_changed) or self.focus is None:
            return False
        uri, line, offset = self.focus
        text = text_of(uri)
        if text is None:
            return False
        return self.refresh(uri, text, line, lines_of(text, line), text_of, offset=offset)


def window_lines(text: str, line: int, prefix_chars: int, suffix_chars: int, line_start: int | None = None
                 ) -> tuple[int, int]:
    """Lines [lo, hi) that the prefix/suffix windows around `line` (starting at offset `line_start`)
    can reach: context.window's bounds in lines, with room for its stepped start. Chunks there would
    repeat what the prompt holds."""
    from .context import WINDOW_STEP

    offset = line_start
    if offset is None:
        offset = 0
        for _ in range(line):
            found = text.find("\n", offset)
            if found < 0:
                break
            offset = found + 1
    before = text.count("\n", max(0, offset - prefix_chars - WINDOW_STEP), offset)
    after = text.count("\n", offset, offset + suffix_chars)
    return max(0, line - before - 1), line + after + 2
