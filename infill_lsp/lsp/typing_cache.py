"""Typing through a suggestion: answer from the last result while the user types what it shows.

If the text typed since the last answer is a prefix of a shown suggestion, and the code
after the cursor has not changed, the rest of that suggestion is still the answer: no model
work, no flicker.
"""

from __future__ import annotations

import msgspec

from ..rank import Ranked

_ANCHOR = 256  # characters on each side compared to decide it's the same place


class Shown(msgspec.Struct):
    offset: int
    before: str  # text just before the cursor when it was computed
    after: str  # text just after it
    items: list[Ranked]


class TypingCache:
    def __init__(self) -> None:
        self._by_uri: dict[str, Shown] = {}

    def remember(self, uri: str, text: str, offset: int, items: list[Ranked]) -> None:
        if items:
            self._by_uri[uri] = Shown(
                offset=offset,
                before=text[max(0, offset - _ANCHOR) : offset],
                after=text[offset : offset + _ANCHOR],
                items=items,
            )
        else:
            self._by_uri.pop(uri, None)

    def __len__(self) -> int:
        return len(self._by_uri)

    def forget(self, uri: str) -> None:
        self._by_uri.pop(uri, None)

    def clear(self) -> None:
        """The settings changed (another model, showInvalid, ...): what was shown was made under the old ones."""
        self._by_uri.clear()

    def lookup(self, uri: str, text: str, offset: int) -> list[Ranked] | None:
        shown = self._by_uri.get(uri)
        if shown is None or offset < shown.offset:
            return None
        if text[shown.offset - len(shown.before) : shown.offset] != shown.before:
            return None
        # The whole window after the cursor, not its first len(after) characters: near the end of the
        # document `after` is short, and a bracket the editor closed after it would still match.
        if text[offset : offset + _ANCHOR] != shown.after:
            return None
        typed = text[shown.offset : offset]
        rest = [
            msgspec.structs.replace(item, text=item.text[len(typed) :])
            for item in shown.items
            if item.text.startswith(typed) and len(item.text) > len(typed)
        ]
        return rest or None
