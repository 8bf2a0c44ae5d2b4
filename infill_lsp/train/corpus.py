"""Training text: permissively licensed Python source, with a manifest for the model card.

Sources: the standard library (PSF) and installed distributions whose metadata declares an
MIT, BSD, Apache or PSF licence; or, for fine-tuning, a user's own repository. Files that
contain a HumanEval problem's signature are dropped, so the evaluation stays clean.
"""

from __future__ import annotations

import gzip
import json
import logging
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


def collect_installed(humaneval_dir: Path | None = None, max_bytes: int | None = None) -> Corpus:
    """The stdlib plus every permissively licensed installed distribution's Python files."""
    banned = humaneval_signatures(humaneval_dir) if humaneval_dir and humaneval_dir.is_dir() else set()
    texts: list[str] = []
    manifest: list[ManifestEntry] = []
    excluded = 0
    total = 0

    def add(entry: ManifestEntry, paths) -> None:
        nonlocal excluded, total
        for path in paths:
            if max_bytes is not None and total >= max_bytes:
                break
            text = _read(path)
            if not text:
                continue
            if banned and any(signature in text for signature in banned):
                excluded += 1
                continue
            texts.append(text)
            entry.files += 1
            entry.bytes += len(text.encode())
            total += len(text.encode())
        if entry.files:
            manifest.append(entry)

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    import platform

    add(ManifestEntry("python-stdlib", platform.python_version(), "PSF-2.0"),
        sorted(p for p in stdlib.glob("**/*.py") if "site-packages" not in p.parts and "test" not in p.parts))
    for dist in sorted(metadata.distributions(), key=lambda d: (d.metadata["Name"] or "").lower()):
        licence = licence_of(dist)
        name = dist.metadata["Name"] or "?"
        if not licence or not dist.files:
            continue
        paths = [Path(dist.locate_file(f)) for f in dist.files if str(f).endswith(".py")]
        add(ManifestEntry(name, dist.version, licence), sorted(paths))
    return Corpus(texts=texts, manifest=manifest, excluded_for_humaneval=excluded)


def collect_repository(root: Path, humaneval_dir: Path | None = None) -> Corpus:
    """A user's own repository, for fine-tuning: its source files, skipping VCS and build folders."""
    banned = humaneval_signatures(humaneval_dir) if humaneval_dir and humaneval_dir.is_dir() else set()
    skip = {".git", ".hg", "node_modules", ".venv", "venv", "build", "dist", "__pycache__", "target"}
    texts, excluded, size = [], 0, 0
    for path in sorted(root.rglob("*")):
        if path.suffix not in SOURCE_SUFFIXES or any(part in skip for part in path.parts) or not path.is_file():
            continue
        text = _read(path)
        if not text:
            continue
        if banned and any(signature in text for signature in banned):
            excluded += 1
            continue
        texts.append(text)
        size += len(text.encode())
    entry = ManifestEntry(root.name, "local", "the user's own code", files=len(texts), bytes=size)
    return Corpus(texts=texts, manifest=[entry], excluded_for_humaneval=excluded)
