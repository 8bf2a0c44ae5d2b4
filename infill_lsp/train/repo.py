"""Repository context for training documents: what the server would put before a file's prefix.

At inference (repo_context.py) the definitions, in other workspace files, of the names used around
the cursor go before the prefix, in the layout the checkpoint declares. A model learns to use them
only if it saw them in training (`data.repo_context_tokens`, train/holes.py), so `infill-lsp corpus`
builds them once for every document (`choose`, stored next to it by shards.py):

- the workspace is the tree the file came from (`Corpus.roots`: a package, a standard library, a
  repository), its *package* the files of its directory (Python: of its top-level package);
- the names the document uses (as repo_context.identifiers reads them) that it does not define
  itself nor import from outside the package (repo_heldout's rule), that are not common names, and
  that 1 to `MAX_NAME_FILES` other files of the package
  define (definitions.py: the server's own tree-sitter extraction, texts cut the same way);
- ranked by how often the document uses the name (names only methods define last); each
  definition rendered as the server renders a chunk (repo_context.render_chunk, PATH_COMMENT) and
  taken, most used first, while it fits the token budget with the document's own header, from at
  most `MAX_FILES` files (the server's `repoContextFiles`), then laid out least relevant first
  (repo_context.fit drops those first, in the sampler as in the engine);
- the document's uses of the names the chunks define (`anchors`, token indices): the sampler
  starts some holes there, where copying from the context pays.

Held-out files (shards.is_heldout) never lend a definition: their text stays out of training.
"""

from __future__ import annotations

import bisect
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from pathlib import PurePosixPath

import msgspec

from .. import definitions, repo_context, repo_heldout
from ..config import Settings
from ..types import ContextChunk
from .corpus import Corpus

LAYOUT = repo_context.PATH_COMMENT
CONTEXT_TOKENS, MAX_FILES = Settings().repo_context_limits()  # stored per document: the server's defaults
MAX_CANDIDATES = repo_context.MAX_DEF_CANDIDATES  # definitions considered per document, as the server does
MAX_NAME_FILES = repo_context.MAX_NAME_FILES


class Choice(msgspec.Struct):
    """A document's repository context, tokenized: what the engine would put between BOS and the prefix."""

    chunks: list[list[int]]  # each rendered chunk's ids (tokenized alone, as the engine does), least relevant first
    header: list[int]  # the document's own header line's ids
    names: list[str]  # the name each chunk is the definition of

    @property
    def tokens(self) -> int:
        return sum(map(len, self.chunks)) + len(self.header)


class DocumentContext(msgspec.Struct):
    """A Choice plus where the document uses the names it defines, as stored in the shards."""

    chunks: list[list[int]]
    header: list[int]
    anchors: list[int]  # token indices of the document where a use of a chunk's name starts
    anchor_chunks: list[int]  # for each anchor, the chunk defining the name (the most relevant one)


def workspace_path(path: str, root: str) -> str:
    """The file's path as the editor would name it in the workspace `root` ("/"-separated)."""
    relative = os.path.relpath(path, root) if root else path.lstrip("/")
    return PurePosixPath(*relative.split(os.sep)).as_posix()


def package_of(relative: str, language: str) -> str:
    """The files that count as one package: a directory, or for Python a top-level package."""
    parts = relative.split("/")
    if language == "python" and len(parts) > 1:
        return parts[0]
    return "/".join(parts[:-1])


def own_names(defined: Iterable[definitions.Definition], text: str, language: str = "",
              stems: frozenset[str] = frozenset()) -> set[str]:
    """What the document defines itself (as the server finds it: the index's names and its own scan),
    and the names it binds to modules outside the package (`import socket`, `require('url')`: not a
    sibling's `socket` or `url`, whatever they define; `stems`: the package's module names)."""
    own = {d.name for d in defined}
    own.update(repo_context._DEFINES.findall(text, 0, repo_context.DEFINES_SCAN))
    if language:
        own.update(repo_heldout._foreign(language, text, stems))
    return own


def candidates(uses: Counter, own: set[str], index: dict[str, list[definitions.Definition]],
               here: str) -> list[definitions.Definition]:
    """Definitions, in other files of the package, of the names the document uses, most used first;
    names that only methods define after the rest (`self.msg` is rarely a sibling's method `msg`)."""
    out: list[definitions.Definition] = []
    wanted = [n for n in uses if n in index and n not in own and n not in repo_context.COMMON_NAMES]
    methods = {n for n in wanted if all(d.kind == "method" for d in index[n])}
    for name in sorted(wanted, key=lambda n: (n in methods, -uses[n], n)):
        found = index[name]
        if len({d.real for d in found}) > MAX_NAME_FILES:
            continue  # too ambiguous: the server does not look it up either
        out.extend(d for d in found if d.real != here)
        if len(out) >= MAX_CANDIDATES:
            return out[:MAX_CANDIDATES]
    return out


def render(definition: definitions.Definition) -> str:
    return repo_context.render_chunk(ContextChunk(path=definition.path, text=definition.text), LAYOUT)


def select(ranked: list[definitions.Definition], ids_of, header: list[int], budget: int,
           max_files: int = MAX_FILES) -> Choice | None:
    """The most relevant definitions that fit `budget` tokens with the header (one larger than what is
    left is passed over, as the server does), from at most `max_files` files, least relevant first."""
    left = budget - len(header)
    taken: list[tuple[list[int], str]] = []
    files: set[str] = set()
    seen: set[str] = set()
    for definition in ranked:
        text = render(definition)
        if text in seen or (definition.path not in files and len(files) >= max_files):
            continue
        ids = ids_of(text)
        if len(ids) > left:
            continue
        seen.add(text)
        files.add(definition.path)
        taken.append((ids, definition.name))
        left -= len(ids)
    if not taken:
        return None
    taken.reverse()  # least relevant first: next to the prefix goes the most used name's definition
    return Choice(chunks=[ids for ids, _ in taken], header=header, names=[name for _, name in taken])


def _packages(corpus: Corpus) -> dict[tuple[str, str], list[int]]:
    roots = corpus.roots or [""] * len(corpus.paths)
    out: dict[tuple[str, str], list[int]] = defaultdict(list)
    for index, (path, root) in enumerate(zip(corpus.paths, roots)):
        language = definitions.language_of(path)
        if language is not None:
            out[(root, package_of(workspace_path(path, root), language))].append(index)
    return out


def choose(corpus: Corpus, tokenizer, budget: int = CONTEXT_TOKENS, lenders: set[int] | None = None,
           progress=None) -> dict[int, Choice]:
    """The repository context of every corpus document that has one: corpus index -> Choice.
    `lenders`: the documents whose definitions may be used (None: all); `progress(files)` counts."""
    roots = corpus.roots or [""] * len(corpus.paths)
    out: dict[int, Choice] = {}
    for (root, _), members in _packages(corpus).items():
        defined = {}
        index: dict[str, list[definitions.Definition]] = defaultdict(list)
        for i in members:
            path = corpus.paths[i]
            defined[i] = definitions.definitions_of(definitions.language_of(path), corpus.texts[i], path, "",
                                                    workspace_path(path, root))
            if lenders is None or i in lenders:
                for definition in defined[i]:
                    index[definition.name].append(definition)
        if len(members) > 1 and index:
            cache: dict[str, list[int]] = {}

            def ids_of(text: str) -> list[int]:
                if text not in cache:
                    cache[text] = tokenizer(text, add_special_tokens=False)["input_ids"]
                return cache[text]

            stems = frozenset(os.path.splitext(os.path.basename(corpus.paths[i]))[0] for i in members)
            for i in members:
                text, language = corpus.texts[i], definitions.language_of(corpus.paths[i])
                own = own_names(defined[i], text, language, stems)
                ranked = candidates(repo_context.name_uses(text), own, index, corpus.paths[i])
                if ranked:
                    header = ids_of(repo_context.render_header(workspace_path(corpus.paths[i], root), LAYOUT))
                    choice = select(ranked, ids_of, header, budget)
                    if choice is not None:
                        out[i] = choice
        if progress is not None:
            progress(len(members))
    return out


def anchors(text: str, offsets: list[tuple[int, int]], names: list[str]) -> tuple[list[int], list[int]]:
    """(token index, chunk) of each use in `text` of a name the chunks define: the token holding the
    name's first character (with byte-level BPE, often ` name`), and the last chunk defining it."""
    chunk_of = {name: k for k, name in enumerate(names)}  # a later (more relevant) chunk wins
    starts = [start for start, _ in offsets]
    tokens, chunks = [], []
    for match in repo_context._IDENT.finditer(text):
        k = chunk_of.get(match.group())
        if k is None:
            continue
        token = bisect.bisect_right(starts, match.start()) - 1
        if token >= 0 and (not tokens or tokens[-1] != token):
            tokens.append(token)
            chunks.append(k)
    return tokens, chunks


def tokenize(texts: list[str], tokenizer, choices: list[Choice | None], batch: int = 256
             ) -> Iterator[tuple[list[int], DocumentContext | None]]:
    """Each text's ids (as without context) with its context and anchors, in order."""
    for start in range(0, len(texts), batch):
        part = choices[start:start + batch]
        offsets = any(c is not None for c in part)
        encoded = tokenizer(texts[start:start + batch], add_special_tokens=False, return_offsets_mapping=offsets)
        for k, ids in enumerate(encoded["input_ids"]):
            choice = part[k]
            if choice is None:
                yield ids, None
                continue
            at, chunks = anchors(texts[start + k], encoded["offset_mapping"][k], choice.names)
            yield ids, DocumentContext(chunks=choice.chunks, header=choice.header, anchors=at, anchor_chunks=chunks)
