"""Finishing the name being typed with one the prompt already holds.

When the cursor ends a word of `TYPED_MIN` (repo_context.py) characters or more (`compute_ch|`), the name the user is
typing is usually one that stands in the code around the cursor or in the repository context
(repo_context.py puts the definitions of names that complete such a word into the prompt). The
small models copy it badly: they see `def compute_checksum` a few lines up and write
`ecksm`. So besides the model's candidates, the known name completing the word is one more
candidate (`complete`), validated like the rest, and shown first unless the model's own top
suggestion already finishes the word with a name the prompt holds (`put_first`).

Known names are identifiers (less keywords and one-letter names, as repo_context reads them) of the
document's window and the context chunks, and the names starting with the word that the workspace's
definition index holds (`workspace_names`, asked per request). Among several completions the one the
model's candidates agree with most (common leading characters) wins, then one the context chunks or
the index define (`def create_dist` in a chunk beats `create` used ten times), then the most used,
then the shortest. Nothing is offered where a new name is being bound (`def comp|`, `let tot|`):
there the model decides.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

import msgspec

from . import rank
from .rank import Ranked
from .repo_context import _DEFINES, TYPED_MIN, name_uses
from .types import ContextChunk

MAX_WORKSPACE_NAMES = 32  # names asked of the definition index per request
AGREEMENT_MIN = 2  # leading characters a model candidate must share with a completion to vote for it

_TYPED = re.compile(r"\b[^\W\d]\w*$")
_WORD_CHAR = re.compile(r"\w")
# the word right after one of these is a name being defined, not one being used
_BINDING = re.compile(r"(?:\b(?:def|class|function|func|fn|struct|enum|trait|interface|type|const|let|var|"
                      r"static|mut|mod|impl|lambda)\s+\*?\s*|\bfunc\s*\([^)]*\)\s*)$")
_GO_METHODS = re.compile(r"\bfunc\s*\([^)]*\)\s*([^\W\d]\w*)")  # what _DEFINES misses: `func (r *T) Name(`


class NameCompletion(msgspec.Struct, frozen=True):
    typed: str  # the word before the cursor
    name: str  # the known name it becomes
    text: str  # what the suggestion inserts: the rest of the name
    known: frozenset[str]  # the names the prompt holds (to judge the model's own candidates)


def typed_word(prefix: str, suffix: str) -> str:
    """The name being typed at the cursor, or "" (too short, inside a word, or a name being bound)."""
    match = _TYPED.search(prefix[-200:])
    if match is None or len(match.group()) < TYPED_MIN or _WORD_CHAR.match(suffix[:1]):
        return ""
    before = prefix[: len(prefix) - len(match.group())]
    if _BINDING.search(before[-200:]):
        return ""
    return match.group()


def workspace_names(index, text: str, offset: int, limit: int = MAX_WORKSPACE_NAMES) -> tuple[str, ...]:
    """The names a definition index (definitions.DefinitionIndex, or None) holds that finish the word
    typed at `offset` of `text`; none while it is still being built or when nothing is typed."""
    typed = typed_word(text[max(0, offset - 200):offset], text[offset:offset + 1])
    if index is None or not typed:
        return ()
    return tuple(index.completions(typed, limit=limit))


def _agreement(rest: str, candidates: Iterable[str]) -> int:
    best = 0
    for text in candidates:
        n = 0
        for a, b in zip(rest, text):
            if a != b:
                break
            n += 1
        best = max(best, n)
    return best if best >= AGREEMENT_MIN else 0


def complete(prefix: str, suffix: str, chunks: tuple[ContextChunk, ...] = (),
             model_texts: Iterable[str] = (), workspace_names: Iterable[str] = ()) -> NameCompletion | None:
    """The known name finishing the word before the cursor, if the prompt holds one.

    `prefix`/`suffix`: the document's window around the cursor (what the model saw);
    `chunks`: the repository context sent with it; `model_texts`: the model's candidates (votes);
    `workspace_names`: names the workspace's definition index has that start with the typed word
    (definitions.DefinitionIndex.completions, asked at request time: the ring of chunks is ranked
    again only once typing pauses)."""
    typed = typed_word(prefix, suffix)
    if not typed:
        return None
    texts = [prefix[: len(prefix) - len(typed)], suffix] + [chunk.text for chunk in chunks]
    uses = Counter()
    for text in texts:
        uses.update(name_uses(text))
    # definitions in the context (repo_context looks up those of the names completing a typed word)
    # and in the workspace's index
    defined = {name for chunk in chunks for pattern in (_DEFINES, _GO_METHODS) for name in pattern.findall(chunk.text)}
    defined.update(workspace_names)
    known = frozenset(uses) | defined
    options = [name for name in known if name.startswith(typed) and len(name) > len(typed)]
    if not options or typed in known:  # nothing to finish, or the word may be whole already
        return None
    votes = list(model_texts)
    best = max(options, key=lambda name: (_agreement(name[len(typed):], votes), name in defined, uses[name],
                                          -len(name), name))
    return NameCompletion(typed=typed, name=best, text=best[len(typed):], known=known)


def _finishes_a_known_name(text: str, completion: NameCompletion) -> bool:
    match = re.match(r"\w*", text)
    return (completion.typed + match.group()) in completion.known


def put_first(items: list[Ranked], completion: NameCompletion | None) -> list[Ranked]:
    """`items` (ranked, the completion among them if it validated) with the completion first, unless
    the model's top suggestion already finishes the word with a known name (then the model's order)."""
    if completion is None or (items and items[0].valid and _finishes_a_known_name(items[0].text, completion)):
        return items
    return rank.put_first(items, completion.text)
