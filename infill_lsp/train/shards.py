"""Tokenized training data on disk: the `corpus` step's output, movable to a GPU machine.

A shard directory holds the tokenizer (`tokenizer.json` and friends), `manifest.json` (sources
with their licences, shard files, token counts per language, the held-out files) and
`shard-LANG-NNNN.npz`: compressed uint16 token ids of whole documents plus their offsets, each
file at most 16 MiB. Held-out files (a fixed hash of their path picks ~2%) are never tokenized
into shards; their text goes to `heldout.jsonl.gz` for the per-language held-out check.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import random
from pathlib import Path

import msgspec
import numpy as np

from ..progress import Progress
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


def write_shards(corpus: Corpus, tokenizer, out: Path) -> dict:
    """Tokenize the corpus into per-language shards; hold some files out. Returns the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)
    if len(tokenizer) > 65535:
        raise ValueError("shards store uint16 token ids: the vocabulary must be below 65,536")
    by_language: dict[str, list[int]] = {}
    heldout = []
    for index, (path, language) in enumerate(zip(corpus.paths, corpus.languages)):
        if is_heldout(path):
            heldout.append({"path": path, "language": language, "text": corpus.texts[index]})
        else:
            by_language.setdefault(language, []).append(index)
    shards, totals = [], {}
    bar = Progress(sum(len(indices) for indices in by_language.values()), desc="tokenizing", unit="files")
    for language, indices in sorted(by_language.items()):
        buffer: list[np.ndarray] = []
        count = 0

        def flush():
            nonlocal buffer, count
            if not buffer:
                return
            name = f"shard-{language}-{sum(s['language'] == language for s in shards):04d}.npz"
            lengths = np.array([len(d) for d in buffer], dtype=np.int64)
            np.savez_compressed(out / name, tokens=np.concatenate(buffer).astype(np.uint16),
                                offsets=np.concatenate([[0], np.cumsum(lengths)]))
            shards.append({"file": name, "language": language, "documents": len(buffer), "tokens": int(count)})
            buffer, count = [], 0

        for start in range(0, len(indices), 256):
            chunk = [corpus.texts[i] for i in indices[start:start + 256]]
            for ids in tokenizer(chunk, add_special_tokens=False)["input_ids"]:
                if len(ids) < 8:
                    continue
                buffer.append(np.asarray(ids, dtype=np.uint16))
                count += len(ids)
                totals[language] = totals.get(language, 0) + len(ids)
                if count >= SHARD_TOKENS:
                    flush()
            bar.update(len(chunk), language=language)
        flush()
    bar.close()
    with gzip.open(out / "heldout.jsonl.gz", "wt") as fh:
        for record in heldout:
            fh.write(json.dumps(record) + "\n")
    manifest = {"sources": msgspec.to_builtins(corpus.manifest), "shards": shards, "tokens": totals,
                "heldout_files": len(heldout), "excluded_for_humaneval": corpus.excluded_for_humaneval}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    log.info("wrote %d shards (%s tokens by language) and %d held-out files to %s", len(shards),
             totals, len(heldout), out)
    return manifest


class TokenData:
    """All documents of a shard directory in memory, drawn by language weight, then by length."""

    def __init__(self, directory: Path, language_weights: dict[str, float] | None = None):
        self.directory = directory
        self.manifest = json.loads((directory / "manifest.json").read_text())
        self.documents: dict[str, list[np.ndarray]] = {}
        for shard in self.manifest["shards"]:
            with np.load(directory / shard["file"]) as data:
                tokens, offsets = data["tokens"], data["offsets"]
            docs = self.documents.setdefault(shard["language"], [])
            docs.extend(tokens[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1))
        totals = {lang: sum(len(d) for d in docs) for lang, docs in self.documents.items()}
        weights = language_weights or {}
        self.languages = sorted(self.documents)
        # Default: each language in proportion to the square root of its size (small ones not drowned).
        self.language_weights = [weights.get(lang, totals[lang] ** 0.5) for lang in self.languages]
        self.cumulative = {lang: np.cumsum([len(d) for d in docs]) for lang, docs in self.documents.items()}

    def draw(self, rng: random.Random, count: int) -> list[np.ndarray]:
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
