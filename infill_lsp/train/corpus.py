"""Training text: permissively licensed Python source, with a manifest for the model card.

Sources: the standard library (PSF) and installed distributions whose metadata declares an
MIT, BSD, Apache or PSF licence; or, for fine-tuning, a user's own repository. Files that
contain a HumanEval problem's signature are dropped, so the evaluation stays clean.
"""

from __future__ import annotations

import gzip
import json
import logging
import platform
import sysconfig
from importlib import metadata
from pathlib import Path

import msgspec

log = logging.getLogger(__name__)

PERMISSIVE = ("MIT", "BSD", "APACHE", "PSF", "PYTHON SOFTWARE FOUNDATION", "ISC")
SOURCE_SUFFIXES = {".py", ".pyi", ".js", ".ts", ".tsx", ".rs", ".go", ".java", ".c", ".h", ".cpp", ".hpp",
                   ".lua", ".sh", ".rb", ".json"}
MAX_FILE_BYTES = 256 * 1024


class ManifestEntry(msgspec.Struct):
    package: str
    version: str
    license: str
    files: int = 0
    bytes: int = 0


class Corpus(msgspec.Struct):
    texts: list[str]
    manifest: list[ManifestEntry]
    excluded_for_humaneval: int = 0


def licence_of(dist: metadata.Distribution) -> str:
    meta = dist.metadata
    candidates = [meta.get("License-Expression") or "", meta.get("License") or ""]
    candidates += [c.split("::")[-1].strip() for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    for text in candidates:
        first_line = text.strip().splitlines()[0] if text.strip() else ""
        if any(word in first_line.upper() for word in PERMISSIVE) and len(first_line) < 120:
            return first_line
    return ""


def humaneval_signatures(data_dir: Path) -> set[str]:
    """The `def name(...)` line of every HumanEval problem (all four subsets share them)."""
    signatures: set[str] = set()
    for path in sorted(data_dir.glob("*.jsonl.gz")):
        with gzip.open(path, "rt") as fh:
            for line in fh:
                problem = json.loads(line)
                entry = problem["entry_point"]
                for text_line in (problem["prompt"] + problem.get("suffix", "")).splitlines():
                    if text_line.strip().startswith(f"def {entry}("):
                        signatures.add(text_line.strip())
                        break
    return signatures


def _read(path: Path) -> str | None:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return None
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


class _Collector:
    """Reads files into a corpus, skipping unreadable and HumanEval-contaminated ones."""

    def __init__(self, humaneval_dir: Path | None, max_bytes: int | None = None):
        self.banned = humaneval_signatures(humaneval_dir) if humaneval_dir and humaneval_dir.is_dir() else set()
        self.max_bytes = max_bytes
        self.corpus = Corpus(texts=[], manifest=[])
        self.total = 0

    def add(self, entry: ManifestEntry, paths) -> None:
        for path in paths:
            if self.max_bytes is not None and self.total >= self.max_bytes:
                break
            text = _read(path)
            if not text:
                continue
            if self.banned and any(signature in text for signature in self.banned):
                self.corpus.excluded_for_humaneval += 1
                continue
            size = len(text.encode())
            self.corpus.texts.append(text)
            entry.files += 1
            entry.bytes += size
            self.total += size
        if entry.files:
            self.corpus.manifest.append(entry)


def collect_installed(humaneval_dir: Path | None = None, max_bytes: int | None = None) -> Corpus:
    """The stdlib plus every permissively licensed installed distribution's Python files."""
    collector = _Collector(humaneval_dir, max_bytes)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    collector.add(ManifestEntry("python-stdlib", platform.python_version(), "PSF-2.0"),
                  sorted(p for p in stdlib.glob("**/*.py") if "site-packages" not in p.parts and "test" not in p.parts))
    for dist in sorted(metadata.distributions(), key=lambda d: (d.metadata["Name"] or "").lower()):
        licence = licence_of(dist)
        if not licence or not dist.files:
            continue
        paths = [Path(dist.locate_file(f)) for f in dist.files if str(f).endswith(".py")]
        collector.add(ManifestEntry(dist.metadata["Name"] or "?", dist.version, licence), sorted(paths))
    return collector.corpus


def collect_repository(root: Path, humaneval_dir: Path | None = None) -> Corpus:
    """A user's own repository, for fine-tuning: its source files, skipping VCS and build folders."""
    skip = {".git", ".hg", "node_modules", ".venv", "venv", "build", "dist", "__pycache__", "target"}
    collector = _Collector(humaneval_dir)
    paths = [p for p in sorted(root.rglob("*"))
             if p.suffix in SOURCE_SUFFIXES and not any(part in skip for part in p.parts) and p.is_file()]
    collector.add(ManifestEntry(root.name, "local", "the user's own code"), paths)
    return collector.corpus
