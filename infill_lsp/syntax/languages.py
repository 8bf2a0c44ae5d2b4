"""Which tree-sitter grammar parses a document: by LSP languageId first, then by file extension.

Grammars come from the per-language wheels (tree-sitter-python, ...), loaded once on first use.
A grammar that fails to import makes its language unknown (validation is skipped), never an error.
"""

from __future__ import annotations

import importlib
import logging
from functools import cache
from pathlib import PurePath

import tree_sitter

log = logging.getLogger(__name__)

GRAMMARS: dict[str, tuple[str, str]] = {
    "python": ("tree_sitter_python", "language"),
    "javascript": ("tree_sitter_javascript", "language"),
    "typescript": ("tree_sitter_typescript", "language_typescript"),
    "tsx": ("tree_sitter_typescript", "language_tsx"),
    "rust": ("tree_sitter_rust", "language"),
    "go": ("tree_sitter_go", "language"),
    "java": ("tree_sitter_java", "language"),
    "c": ("tree_sitter_c", "language"),
    "cpp": ("tree_sitter_cpp", "language"),
    "lua": ("tree_sitter_lua", "language"),
    "bash": ("tree_sitter_bash", "language"),
    "json": ("tree_sitter_json", "language"),
    "jsonc": ("tree_sitter_json", "language"),  # JSON with comments (tsconfig.json, settings.json): same grammar,
    # but only "json" is also held to Python's JSON reader
    "ruby": ("tree_sitter_ruby", "language"),
}

LANGUAGE_IDS = {
    "python": "python",
    "javascript": "javascript",
    "javascriptreact": "javascript",  # the JavaScript grammar parses JSX
    "typescript": "typescript",
    "typescriptreact": "tsx",
    "rust": "rust",
    "go": "go",
    "java": "java",
    "c": "c",
    "cpp": "cpp",
    "c++": "cpp",
    "cuda-cpp": "cpp",
    "lua": "lua",
    "shellscript": "bash",
    "sh": "bash",
    "bash": "bash",
    "json": "json",
    "jsonc": "jsonc",
    "ruby": "ruby",
}

EXTENSIONS = {
    ".py": "python", ".pyi": "python", ".pyw": "python",
    ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript", ".jsx": "javascript",
    ".ts": "typescript", ".mts": "typescript", ".cts": "typescript", ".tsx": "tsx",
    ".rs": "rust", ".go": "go", ".java": "java",
    ".c": "c", ".h": "c",
    ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".c++": "cpp", ".hpp": "cpp", ".hh": "cpp", ".hxx": "cpp",
    ".lua": "lua", ".sh": "bash", ".bash": "bash",
    ".json": "json", ".jsonc": "jsonc", ".rb": "ruby", ".rake": "ruby", ".gemspec": "ruby",
}


def language_for(language_id: str | None, path: str | None = None) -> str | None:
    """Canonical grammar name, or None when no grammar applies (validation is then skipped)."""
    if language_id:
        name = LANGUAGE_IDS.get(language_id.lower())
        if name is not None:
            return name if grammar(name) is not None else None
    if path:
        name = EXTENSIONS.get(PurePath(path).suffix.lower())
        if name is not None:
            return name if grammar(name) is not None else None
    return None


@cache
def grammar(name: str) -> tree_sitter.Language | None:
    module_name, function = GRAMMARS.get(name, ("", ""))
    if not module_name:
        return None
    try:
        module = importlib.import_module(module_name)
        return tree_sitter.Language(getattr(module, function)())
    except Exception as exc:  # a broken or missing wheel: that language goes unchecked
        log.warning("tree-sitter grammar for %s is unavailable: %s", name, exc)
        return None


def parser_for(name: str) -> tree_sitter.Parser | None:
    language = grammar(name)
    return tree_sitter.Parser(language) if language is not None else None
