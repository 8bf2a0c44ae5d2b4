"""Tokenized training data on disk: the `corpus` step's output, movable to a GPU machine.

A shard directory holds the tokenizer (`tokenizer.json` and friends), `manifest.json` (sources
with their licences, shard files, token counts per language, the held-out files) and
`shard-LANG-NNNN.npz`: compressed uint16 token ids of whole documents plus their offsets, each
file at most 16 MiB. Held-out files (a fixed hash of their path picks ~2%) are never tokenized
into shards; their text goes to `heldout.jsonl.gz` for the per-language held-out check.

Repository context (train/repo.py; `manifest.json` `repo_context` says its layout and budget): a
shard may hold, next to its documents, each one's context as the engine would lay it out before
the prefix: `context` (uint16 ids of every rendered chunk, one after the other) with
`context_offsets` (chunk bounds) and `context_chunks` (each document's chunks: bounds into those),
`header` / `header_offsets` (the document's own path line), `anchors` / `anchor_chunks` /
`anchor_offsets` (where the document uses a name a chunk defines, and which chunk). Shards written
before, or without context, have none of these arrays: their documents load with empty context.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np

from ..progress import Progress
from . import repo
from .corpus import Corpus

log = logging.getLogger(__name__)

SHARD_TOKENS = 6_000_000  # uint16: 12 MB raw, well under 16 MiB compressed
HELDOUT_PERCENT = 2


def is_heldout(path: str) -> bool:
    """A stable ~2% of files, chosen by a hash of their path, for evaluation only."""
    return int(hashlib.sha1(path.encode()).hexdigest()[:8], 16) % 100 < HELDOUT_PERCENT


def heldout_paths(paths: list[str], minimum: int = 2) -> set[str]:
    """The held-out files of a corpus: the ~2% `is_heldout` picks, or for a small repository the
    `minimum` files with the lowest path hash (a fine-tune still needs files to measure on)."""
    held = {p for p in paths if is_heldout(p)}
    if len(held) < minimum and len(paths) > 2 * minimum:
        ranked = sorted(paths, key=lambda p: hashlib.sha1(p.encode()).hexdigest())
        held |= set(ranked[:minimum])
    return held


def duplicates(texts: list[str], held: list[bool]) -> set[int]:
    """Indices of files to leave out because their exact text is already in: a held-out file's (a
    training copy would put the answers of the held-out check in the training data: an npm package
    ships the same `.d.ts` under `lib/` and `lib/esm/`) or an earlier file's (trained twice as
    often as its siblings, or counted twice in the held-out check)."""
    digest = [hashlib.sha1(text.encode("utf-8", "surrogatepass")).digest() for text in texts]
    order = [i for i in range(len(texts)) if held[i]] + [i for i in range(len(texts)) if not held[i]]
    seen: set[bytes] = set()
    dropped = set()
    for i in order:
        if digest[i] in seen:
            dropped.add(i)
        seen.add(digest[i])
    return dropped


def _bounds(lengths) -> np.ndarray:
    """Offsets [0, l0, l0 + l1, ...] of pieces of these lengths laid end to end."""
    return np.concatenate([[0], np.cumsum(np.fromiter(lengths, dtype=np.int64))]).astype(np.int64)


def _context_arrays(contexts: list[repo.DocumentContext | None]) -> dict[str, np.ndarray]:
    """The optional arrays of a shard's repository context (see the module docstring)."""
    empty = repo.DocumentContext(chunks=[], header=[], anchors=[], anchor_chunks=[])
    contexts = [c or empty for c in contexts]
    chunks = [ids for c in contexts for ids in c.chunks]
    flat = lambda lists: np.asarray([t for ids in lists for t in ids], dtype=np.uint16)  # noqa: E731
    return {"context": flat(chunks), "context_offsets": _bounds(map(len, chunks)),
            "context_chunks": _bounds(len(c.chunks) for c in contexts),
            "header": flat(c.header for c in contexts), "header_offsets": _bounds(len(c.header) for c in contexts),
            "anchors": np.asarray([a for c in contexts for a in c.anchors], dtype=np.uint32),
            "anchor_chunks": np.asarray([k for c in contexts for k in c.anchor_chunks], dtype=np.uint16),
            "anchor_offsets": _bounds(len(c.anchors) for c in contexts)}


def write_shards(corpus: Corpus, tokenizer, out: Path, context_tokens: int = 0) -> dict:
    """Tokenize the corpus into per-language shards; hold some files out. Returns the manifest.
    `context_tokens` > 0: each document's repository context too (train/repo.py), within that budget."""
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)
    if len(tokenizer) > 65535:
        raise ValueError("shards store uint16 token ids: the vocabulary must be below 65,536")
    by_language: dict[str, list[int]] = {}
    heldout = []
    held = [is_heldout(path) for path in corpus.paths]
    dropped = duplicates(corpus.texts, held)
    for index, (path, language) in enumerate(zip(corpus.paths, corpus.languages)):
        if index in dropped:
            continue
        if held[index]:
            heldout.append({"path": path, "language": language, "text": corpus.texts[index]})
        else:
            by_language.setdefault(language, []).append(index)
    choices: dict[int, repo.Choice] = {}
    if context_tokens > 0:
        lenders = {i for indices in by_language.values() for i in indices}
        with Progress(len(corpus.paths), desc="repository context", unit="files") as bar:
            choices = repo.choose(corpus, tokenizer, context_tokens, lenders, progress=bar.update)
    shards, totals, with_context = [], {}, []
    bar = Progress(sum(len(indices) for indices in by_language.values()), desc="tokenizing", unit="files")
    for language, indices in sorted(by_language.items()):
        buffer: list[np.ndarray] = []
        contexts: list[repo.DocumentContext | None] = []
        count = 0

        def flush():
            nonlocal buffer, contexts, count
            if not buffer:
                return
            name = f"shard-{language}-{sum(s['language'] == language for s in shards):04d}.npz"
            arrays = _context_arrays(contexts) if context_tokens > 0 else {}
            np.savez_compressed(out / name, tokens=np.concatenate(buffer).astype(np.uint16),
                                offsets=_bounds(map(len, buffer)), **arrays)
            shards.append({"file": name, "language": language, "documents": len(buffer), "tokens": int(count)})
            buffer, contexts, count = [], [], 0

        for start in range(0, len(indices), 256):
            part = indices[start:start + 256]
            texts = [corpus.texts[i] for i in part]
            for ids, context in repo.tokenize(texts, tokenizer, [choices.get(i) for i in part]):
                if len(ids) < 8:
                    continue
                buffer.append(np.asarray(ids, dtype=np.uint16))
                contexts.append(context)
                count += len(ids)
                totals[language] = totals.get(language, 0) + len(ids)
                if context is not None:
                    with_context.append(sum(map(len, context.chunks)) + len(context.header))
                if count >= SHARD_TOKENS:
                    flush()
            bar.update(len(part), language=language)
        flush()
    bar.close()
    with gzip.open(out / "heldout.jsonl.gz", "wt") as fh:
        for record in heldout:
            fh.write(json.dumps(record) + "\n")
    manifest = {"sources": msgspec.to_builtins(corpus.manifest), "shards": shards, "tokens": totals,
                "heldout_files": len(heldout), "excluded_for_humaneval": corpus.excluded_for_humaneval,
                "duplicates_dropped": len(dropped)}
    if context_tokens > 0:
        documents = sum(s["documents"] for s in shards)
        manifest["repo_context"] = {
            "layout": repo.LAYOUT, "tokens": context_tokens, "max_files": repo.MAX_FILES,
            "package": "the file's directory; Python: its top-level package", "documents": documents,
            "with_context": len(with_context),
            "mean_tokens": round(sum(with_context) / len(with_context), 1) if with_context else 0.0}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    log.info("wrote %d shards (%s tokens by language) and %d held-out files to %s (%d exact duplicates left out)",
             len(shards), totals, len(heldout), out, len(dropped))
    return manifest


def _empty() -> np.ndarray:
    return np.zeros(0, dtype=np.int64)


@dataclass(frozen=True, eq=False)
class Document:
    """A training document's token ids and its repository context (empty when it has none)."""

    tokens: np.ndarray
    chunks: tuple[np.ndarray, ...] = ()  # each rendered context chunk's ids, least relevant first
    header: np.ndarray = field(default_factory=_empty)  # the document's own header line's ids
    anchors: np.ndarray = field(default_factory=_empty)  # token indices where the document uses a name a chunk defines
    anchor_chunks: np.ndarray = field(default_factory=_empty)  # which chunk defines it

    @classmethod
    def of(cls, ids, context: "repo.DocumentContext | None" = None) -> "Document":
        tokens = np.asarray(ids)
        if context is None:
            return cls(tokens)
        return cls(tokens, tuple(np.asarray(c, dtype=np.int64) for c in context.chunks),
                   np.asarray(context.header, dtype=np.int64), np.asarray(context.anchors, dtype=np.int64),
                   np.asarray(context.anchor_chunks, dtype=np.int64))


def _load_shard(path: Path) -> list[Document]:
    with np.load(path) as data:
        tokens, offsets = data["tokens"], data["offsets"]
        arrays = {key: data[key] for key in data.files if key not in ("tokens", "offsets")}
    count = len(offsets) - 1
    if "context_chunks" not in arrays:  # written before repository context, or without it
        return [Document(tokens[offsets[i]:offsets[i + 1]]) for i in range(count)]
    context, bounds, per = arrays["context"], arrays["context_offsets"], arrays["context_chunks"]
    header, header_at = arrays["header"], arrays["header_offsets"]
    anchors, anchor_chunks, anchor_at = arrays["anchors"], arrays["anchor_chunks"], arrays["anchor_offsets"]
    out = []
    for i in range(count):
        chunks = tuple(context[bounds[k]:bounds[k + 1]] for k in range(per[i], per[i + 1]))
        out.append(Document(tokens[offsets[i]:offsets[i + 1]], chunks, header[header_at[i]:header_at[i + 1]],
                            anchors[anchor_at[i]:anchor_at[i + 1]], anchor_chunks[anchor_at[i]:anchor_at[i + 1]]))
    return out


class TokenData:
    """All documents of a shard directory in memory, drawn by language weight, then by length."""

    def __init__(self, directory: Path, language_weights: dict[str, float] | None = None):
        self.directory = directory
        self.manifest = json.loads((directory / "manifest.json").read_text())
        self.repo_context = self.manifest.get("repo_context")  # None: shards without repository context
        self.documents: dict[str, list[Document]] = {}
        for shard in self.manifest["shards"]:
            self.documents.setdefault(shard["language"], []).extend(_load_shard(directory / shard["file"]))
        totals = {lang: sum(len(d.tokens) for d in docs) for lang, docs in self.documents.items()}
        weights = language_weights or {}
        self.languages = sorted(self.documents)
        unknown = sorted(set(weights) - set(self.languages))
        if unknown:
            raise ValueError(f"language_weights names {', '.join(unknown)}, which {directory} holds none of "
                             f"(it holds {', '.join(self.languages)})")
        # Each language in proportion to the square root of its size (small ones not drowned), times its
        # factor in `language_weights` (1 when left out; 0: never drawn).
        self.language_weights = [weights.get(lang, 1.0) * totals[lang] ** 0.5 for lang in self.languages]
        self.cumulative = {lang: np.cumsum([len(d.tokens) for d in docs]) for lang, docs in self.documents.items()}

    def draw(self, rng: random.Random, count: int) -> list[Document]:
        out = []
        for language in rng.choices(self.languages, weights=self.language_weights, k=count):
            cumulative = self.cumulative[language]
            index = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
            out.append(self.documents[language][min(index, len(cumulative) - 1)])
        return out

    @property
    def total_tokens(self) -> int:
        return sum(int(c[-1]) for c in self.cumulative.values())


def read_heldout(directory: Path) -> list[dict]:
    with gzip.open(directory / "heldout.jsonl.gz", "rt") as fh:
        return [json.loads(line) for line in fh]
