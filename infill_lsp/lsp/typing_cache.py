"""Typing through a suggestion: answer from the last result while the user types what it shows.

If the text typed since the last answer is a prefix of a shown suggestion, and the rest of the
document has not changed, the rest of that suggestion is still the answer: no model work, no
flicker.
"""

from __future__ import annotations

import msgspec

from ..rank import Ranked

class Shown(msgspec.Struct):
    offset: int
    before: str  # the whole text before the cursor when it was computed
    after: str  # and after it
    items: list[Ranked]


class TypingCache:
    def __init__(self) -> None:
        self._by_uri: dict[str, Shown] = {}

    def remember(self, uri: str, text: str, offset: int, items: list[Ranked]) -> None:
        if items:
            self._by_uri[uri] = Shown(offset=offset, before=text[:offset], after=text[offset:], items=items)
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
        """The rest of the shown suggestions when the text is the one they were validated in, with
        only a prefix of them typed at the cursor. The whole text on both sides is compared (no
        copy: startswith/endswith): an edit anywhere else, far above (a `def` turned into an `if`,
        so a `return` would no longer compile) or in what the editor closed after the cursor,
        means the pipeline runs again."""
        shown = self._by_uri.get(uri)
        if shown is None or offset < shown.offset or len(text) - len(shown.after) != offset:
            return None
        if not text.startswith(shown.before) or not text.endswith(shown.after):
            return None
        typed = text[shown.offset : offset]
        rest = [
            msgspec.structs.replace(item, text=item.text[len(typed) :])
            for item in shown.items
            if item.text.startswith(typed) and len(item.text) > len(typed)
        ]
        return rest or None
