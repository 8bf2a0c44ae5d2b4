"""Training text: permissively licensed source code found on this machine, with a manifest.

Sources (nothing is downloaded; each source's licence goes into the model card's manifest):
- Python: the standard library (PSF) and installed distributions whose metadata declares an
  MIT, BSD, Apache or PSF licence;
- Go: the standard library from Debian's `golang-go` (BSD-3-Clause);
- Rust: the standard library sources from Debian's `rust-src` (MIT OR Apache-2.0);
- JavaScript/TypeScript: npm packages on the machine (npm's own dependencies, the VS Code
  extension's node_modules) whose package.json declares MIT, ISC, BSD or Apache;
- for fine-tuning, a user's own repository.
Files that contain a HumanEval problem's signature are dropped, so the evaluation stays clean.
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

from ..progress import Progress

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
    languages: list[str] = []  # one per text: python, javascript, typescript, go, rust, ...
    paths: list[str] = []  # one per text, for held-out splits and reports
    roots: list[str] = []  # one per text: the tree it came from, as an editor's workspace folder (train/repo.py)


LANGUAGE_OF_SUFFIX = {".py": "python", ".pyi": "python", ".js": "javascript", ".mjs": "javascript",
                      ".cjs": "javascript", ".ts": "typescript", ".mts": "typescript", ".tsx": "typescript",
                      ".go": "go", ".rs": "rust", ".java": "java", ".c": "c", ".h": "c", ".cpp": "cpp",
                      ".hpp": "cpp", ".lua": "lua", ".sh": "bash", ".rb": "ruby", ".json": "json"}


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
        self.progress = None  # a progress.Progress counting the bytes taken

    def add(self, entry: ManifestEntry, paths, max_bytes: int | None = None, root: Path | None = None) -> None:
        """Add files until the corpus-wide cap, or this source's own cap, is reached. `root`: the
        tree they belong to (a package, a standard library, a repository), their workspace folder."""
        start = self.total
        for path in paths:
            if self.max_bytes is not None and self.total >= self.max_bytes:
                break
            if max_bytes is not None and self.total - start >= max_bytes:
                break
            text = _read(path)
            if not text:
                continue
            if self.banned and any(signature in text for signature in self.banned):
                self.corpus.excluded_for_humaneval += 1
                continue
            size = len(text.encode())
            self.corpus.texts.append(text)
            self.corpus.languages.append(LANGUAGE_OF_SUFFIX.get(Path(path).suffix, "text"))
            self.corpus.paths.append(str(path))
            self.corpus.roots.append(str(root) if root is not None else str(Path(path).parent))
            entry.files += 1
            entry.bytes += size
            self.total += size
            if self.progress is not None:
                self.progress.update(size, source=entry.package)
        if entry.files:
            self.corpus.manifest.append(entry)


def collect_installed(humaneval_dir: Path | None = None, max_bytes: int | None = None) -> Corpus:
    """The stdlib plus every permissively licensed installed distribution's Python files."""
    collector = _Collector(humaneval_dir, max_bytes)
    _add_python(collector)
    return collector.corpus


def _add_python(collector: "_Collector", max_bytes: int | None = None) -> None:
    start = collector.total
    budget = (lambda: None if max_bytes is None else max(0, max_bytes - (collector.total - start)))
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    collector.add(ManifestEntry("python-stdlib", platform.python_version(), "PSF-2.0"),
                  sorted(p for p in stdlib.glob("**/*.py") if "site-packages" not in p.parts and "test" not in p.parts),
                  budget(), stdlib)
    for dist in sorted(metadata.distributions(), key=lambda d: (d.metadata["Name"] or "").lower()):
        licence = licence_of(dist)
        if not licence or not dist.files:
            continue
        paths = [Path(dist.locate_file(f)) for f in dist.files if str(f).endswith(".py")]
        collector.add(ManifestEntry(dist.metadata["Name"] or "?", dist.version, licence), sorted(paths), budget(),
                      Path(dist.locate_file("")))


GO_ROOTS = sorted(Path("/usr/share").glob("go-*/src")) + sorted(Path("/usr/lib").glob("go-*/src"))
RUST_ROOTS = [Path("/usr/lib/rustlib/src/rust/library")]
NPM_ROOTS = [Path("/usr/lib/node_modules"), Path(__file__).resolve().parents[2] / "editors" / "vscode" / "node_modules"]
NPM_PERMISSIVE = ("MIT", "ISC", "BSD", "APACHE", "0BSD", "BLUEOAK", "UNLICENSE", "CC0")


def _source_files(root: Path, suffixes: set[str], skip_parts: set[str]) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix in suffixes and p.is_file()
                  and not skip_parts.intersection(p.relative_to(root).parts))


def _add_go(collector: "_Collector", max_bytes: int | None) -> None:
    for root in GO_ROOTS[-1:]:
        version = (root.parent / "VERSION").read_text().split()[0] if (root.parent / "VERSION").exists() else "?"
        collector.add(ManifestEntry("go-stdlib (Debian golang-go)", version, "BSD-3-Clause"),
                      _source_files(root, {".go"}, {"testdata", "vendor"}), max_bytes, root)


def _add_rust(collector: "_Collector", max_bytes: int | None) -> None:
    for root in RUST_ROOTS:
        if root.is_dir():
            collector.add(ManifestEntry("rust-std (Debian rust-src)", "?", "MIT OR Apache-2.0"),
                          _source_files(root, {".rs"}, {"tests", "benches"}), max_bytes, root)


def _npm_packages(root: Path):
    """Every package.json under a node_modules tree (nested ones too), shallowest first."""
    for manifest in sorted(root.rglob("package.json"), key=lambda p: (len(p.parts), str(p))):
        try:
            meta = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and meta.get("name") and meta.get("version"):
            yield manifest.parent, meta


def _add_npm(collector: "_Collector", max_bytes: int | None) -> None:
    start, seen = collector.total, set()
    for root in NPM_ROOTS:
        if not root.is_dir():
            continue
        for folder, meta in _npm_packages(root):
            licence = meta.get("license")
            licence = licence.get("type", "") if isinstance(licence, dict) else str(licence or "")
            key = (meta["name"], meta["version"])
            if key in seen or not any(word in licence.upper() for word in NPM_PERMISSIVE):
                continue
            seen.add(key)
            left = None if max_bytes is None else max_bytes - (collector.total - start)
            if left is not None and left <= 0:
                return
            paths = [p for p in _source_files(folder, {".js", ".mjs", ".cjs", ".ts", ".mts", ".tsx"},
                                              {"node_modules", "test", "tests", "dist-min"})
                     if not p.name.endswith((".min.js", ".map"))]
            collector.add(ManifestEntry(f"npm:{meta['name']}", meta["version"], licence), paths, left, folder)


LANGUAGE_BUDGETS = {"python": 0.4, "go": 0.25, "rust": 0.2, "javascript+typescript": 0.15}


def collect_multilanguage(humaneval_dir: Path | None = None, max_bytes: int = 120_000_000) -> Corpus:
    """Python, Go, Rust and JavaScript/TypeScript from this machine, each up to its share of `max_bytes`."""
    collector = _Collector(humaneval_dir, max_bytes)
    with Progress(max_bytes, desc="collecting sources", unit="B", scale=True) as collector.progress:
        _add_python(collector, int(max_bytes * LANGUAGE_BUDGETS["python"]))
        _add_go(collector, int(max_bytes * LANGUAGE_BUDGETS["go"]))
        _add_rust(collector, int(max_bytes * LANGUAGE_BUDGETS["rust"]))
        _add_npm(collector, int(max_bytes * LANGUAGE_BUDGETS["javascript+typescript"]))
    return collector.corpus


def collect_repository(root: Path, humaneval_dir: Path | None = None) -> Corpus:
    """A user's own repository, for fine-tuning: its source files, skipping VCS and build folders."""
    skip = {".git", ".hg", "node_modules", ".venv", "venv", "build", "dist", "__pycache__", "target"}
    collector = _Collector(humaneval_dir)
    paths = [p for p in sorted(root.rglob("*"))
             if p.suffix in SOURCE_SUFFIXES and not any(part in skip for part in p.parts) and p.is_file()]
    collector.add(ManifestEntry(root.name, "local", "the user's own code"), paths, root=root)
    return collector.corpus
