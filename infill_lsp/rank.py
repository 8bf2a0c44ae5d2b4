"""From raw candidates to what the editor shows: clean, drop, order.

Valid before invalid (invalid ones only when the user asks), then the model's own score;
empty suggestions (nothing but whitespace, or a bare comment marker such as `#` or `//` with
nothing after it: ghost text that adds nothing) and duplicates are dropped, and text the
document already has right after the cursor is not suggested again. Nothing unreadable is
shown: a candidate is cut before its first character an editor cannot draw as text (see
`readable`).
"""

from __future__ import annotations

import re

import msgspec

from .syntax import Validation
from .types import Candidate

_OVERLAP_LIMIT = 200  # characters of the suffix's first line compared for overlap

# What no suggestion may contain. Control characters other than tab and newline (C0, DEL, C1;
# a carriage return once CRLF is folded to a newline); U+FFFD, which is what a byte-level BPE
# token sequence cut inside a multi-byte UTF-8 character decodes to; lone surrogates (half of a
# UTF-16 pair); the line and paragraph separators, which some editors break lines at and LSP
# positions do not count; bidirectional overrides and isolates, which make code read other
# than it runs ("Trojan Source"); the noncharacters U+FFFE and U+FFFF.
UNREADABLE = re.compile(
    r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029\u202a-\u202e\u2066-\u2069\ufffd\ufffe\uffff]"
)


class Ranked(msgspec.Struct, frozen=True):
    text: str
    score: float
    valid: bool
    truncated: bool = False
    checked: bool = True


def readable(text: str) -> str:
    """`text` up to its first unreadable character (a split token, a control character...).

    Cut rather than dropped: what comes before is usually good (a middle whose last token ends
    inside a multi-byte character loses only that character); validation then judges the rest.
    """
    text = text.replace("\r\n", "\n")
    match = UNREADABLE.search(text)
    return text if match is None else text[: match.start()]


def clean(text: str, suffix: str, line_before: str = "") -> str:
    """What a user should see of a middle, given the text after the cursor and the text before it
    on its line."""
    text = readable(text)
    ends_line = suffix[:1] in ("", "\n", "\r") or not suffix.strip()
    lines = text.split("\n")
    lines = [line.rstrip() for line in lines[:-1]] + [lines[-1].rstrip() if ends_line else lines[-1]]
    text = "\n".join(lines)
    if ends_line:
        text = text.rstrip()

    # On a line indented up to the cursor and blank, a middle that leaves the line blank (its
    # indentation as trailing whitespace) and goes on below: at the cursor's indentation or
    # deeper, the code belongs on this line; shallower, it is not a suggestion for here.
    if line_before and not line_before.strip() and text.startswith("\n"):
        text = text.lstrip("\n")
        text = text[len(line_before):] if text.startswith(line_before) else ""

    # The rest of the current line is already there: don't suggest it twice ("foo(x)" before ")").
    rest_of_line, _, below = suffix.partition("\n")
    rest_of_line = rest_of_line.rstrip("\r")[:_OVERLAP_LIMIT]
    for size in range(min(len(text), len(rest_of_line)), 0, -1):
        head = rest_of_line[:size]
        if head.strip() and text.endswith(head):
            text = text[:-size]
            break

    # A middle ending with the line right below the cursor would duplicate it.
    next_line = below.split("\n", 1)[0].strip()
    if not rest_of_line.strip() and next_line and "\n" in text:
        kept = text.split("\n")
        while len(kept) > 1 and kept[-1].strip() == next_line:
            kept.pop()
        text = "\n".join(kept).rstrip()
    return text


def line_before_cursor(prefix: str) -> str:
    """The text before the cursor on its line (LSP line breaks: LF, CRLF, CR)."""
    return prefix.rsplit("\n", 1)[-1].rsplit("\r", 1)[-1]


# A suggestion with no more than comment markers in it (`#`, `//`, an empty `/* */`): the syntax
# check takes it wherever a comment may stand, so it is no evidence of anything. (Not `;` or `--`:
# an empty statement and a decrement are completions.)
_BARE_COMMENT = re.compile(r"\s*(?:(?:#+|//+|/\*+\s*\*+/)\s*)*")


def is_empty(text: str) -> bool:
    """Nothing worth showing: whitespace, or only comment markers."""
    return _BARE_COMMENT.fullmatch(text) is not None


def rank(candidates: list[Candidate], validations: list[Validation], show_invalid: bool = False,
         limit: int | None = None) -> list[Ranked]:
    ranked = [
        Ranked(text=v.text, score=c.score, valid=v.valid, truncated=v.truncated, checked=v.checked)
        for c, v in zip(candidates, validations)
        if not is_empty(v.text) and (v.valid or show_invalid) and not UNREADABLE.search(v.text)
    ]
    ranked.sort(key=lambda r: (not r.valid, -r.score))
    seen: set[str] = set()
    unique = []
    for item in ranked:
        if item.text not in seen:
            seen.add(item.text)
            unique.append(item)
    return unique[:limit] if limit is not None else unique


def extra_candidate(text: str, candidates: list[Candidate]) -> Candidate:
    """A candidate from outside the model (names.py, repeats.py), scored as the model's best: where
    it is shown is `put_first`'s decision, not the score's."""
    return Candidate(text=text, score=max((c.score for c in candidates), default=0.0), tokens=0)


def put_first(items: list[Ranked], text: str | None) -> list[Ranked]:
    """`items` (ranked) with the valid one whose text is `text` first; unchanged if there is none
    (never an invalid one first)."""
    mine = [item for item in items if text and item.text == text and item.valid]
    if not mine:
        return items
    return [mine[0]] + [item for item in items if item is not mine[0]]
