"""Tree-sitter validation: only suggestions that keep the document parsing are shown."""

from .languages import language_for, parser_for
from .validate import RegionChecker, Validation, count_errors, validate

__all__ = ["Validation", "RegionChecker", "count_errors", "language_for", "parser_for", "validate"]
