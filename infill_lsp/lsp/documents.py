"""Documents as the editor has them: pygls' TextDocument with LSP's line breaks.

pygls splits lines with Python's `str.splitlines`, which also breaks at form feed, vertical tab,
U+001C-U+001E, U+0085 and U+2028/U+2029. LSP breaks lines at `\\n`, `\\r\\n` and `\\r` only, so in a
file holding a form feed (Python sources from Emacs users carry them) every incremental edit
after it landed on the wrong line and the server's copy drifted from the editor's. This class
applies edits by LSP's rules: columns past a line's end mean its end (not into its terminator),
lines past the file's end mean the file's end, and an edit costs one splice, not a rebuild of the
document line by line.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from lsprotocol import types
from pygls.workspace import TextDocument, Workspace

from .. import context

_LINES = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")


def split_lines(source: str) -> list[str]:
    """Lines with their terminators, broken where LSP breaks them."""
    return _LINES.findall(source)


class LspTextDocument(TextDocument):
    @property
    def lines(self) -> Sequence[str]:  # used by pygls' position helpers (offset_at_position, word_at_position)
        return tuple(split_lines(self.source))

    def offset_of(self, position: types.Position) -> int:
        """Code-point offset of a client position, clamped as LSP says (past the line: its end;
        past the last line: the end of the document)."""
        source = self.source
        bounds = context._line_bounds(source, max(0, position.line))
        if bounds is None:
            return len(source)
        start, end = bounds
        encoding = context.encoding_name(self._position_codec.encoding)
        return start + context.column_to_index(source[start:end], position.character, encoding)

    def _apply_incremental_change(self, change: types.TextDocumentContentChangePartial) -> None:
        start = self.offset_of(change.range.start)
        end = max(start, self.offset_of(change.range.end))
        self._source = self.source[:start] + change.text + self.source[end:]


class LspWorkspace(Workspace):
    def _create_text_document(self, doc_uri: str, source: str | None = None, version: int | None = None,
                              language_id: str | None = None) -> TextDocument:
        return LspTextDocument(doc_uri, source=source, version=version, language_id=language_id,
                               sync_kind=self._sync_kind, position_codec=self._position_codec)
