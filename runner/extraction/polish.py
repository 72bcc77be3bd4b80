"""Polish a raw brand name as a model wrote it into its display form (DESIGN.md, "Entities").

Pure functions, no database and no I/O.
"""

from __future__ import annotations

import functools
import re

# --- polish -------------------------------------------------------------------------------------

_MARKDOWN_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_EMPHASIS = re.compile(r"[*`]+|(?<![^\W_])_+|_+(?![^\W_])")
_TRADEMARK = re.compile(r"\s*(?:[™®©]|\((?:TM|R|C)\))", re.IGNORECASE)
# Only a parenthetical that follows a name: "(Intuit)" alone is left for _EDGE_CHARS.
_PARENTHETICAL = re.compile(r"(?<=\S)\s*\([^()]*\)")
# "Xoom, a PayPal service" and "HubSpot, Inc." both end at the comma.
_APPOSITIVE = re.compile(r",\s.*\Z", re.DOTALL)
# Case-sensitive on purpose: a trailing "Sa" or "Ag" word may be part of a name.
_LEGAL_SUFFIX = re.compile(
    r",?\s+(?:Inc\.?|LLC\.?|Ltd\.?|Co\.|Corp\.|Corporation|GmbH|S\.A\.?|SA|AG|plc|PLC"
    r"|N\.V\.?|B\.V\.?|S\.p\.A\.?)[.,;:!?]*\Z"
)
# Straight or curly (U+2019) apostrophe.
_POSSESSIVE_S = re.compile(r"(?<=[^\W_])['\u2019]s(?![^\W_])")
_POSSESSIVE_BARE = re.compile(r"(?<=s)['\u2019](?=\s|\Z)")
# Straight, curly (U+2018, U+2019, U+201C, U+201D) and angle quotes, and brackets.
_EDGE_CHARS = "\"'\u2018\u2019\u201c\u201d\u00ab\u00bb()[]{}"
# Trailing punctuation plus the space it may leave behind ("Pipedrive ." -> "Pipedrive").
_TRAILING = ".,;:!? "
_WHITESPACE = re.compile(r"\s+")
_POLISH_STEPS: tuple[tuple[re.Pattern[str], str], ...] = (
    (_MARKDOWN_LINK, r"\1"),
    (_EMPHASIS, ""),
    (_TRADEMARK, ""),
    (_PARENTHETICAL, ""),
    (_APPOSITIVE, ""),
    (_LEGAL_SUFFIX, ""),
    (_POSSESSIVE_S, ""),
    (_POSSESSIVE_BARE, ""),
)


@functools.lru_cache(maxsize=65536)  # brand names repeat across answers: each polished once
def polish(raw: str) -> str:
    """Return the display form of a raw brand name, or "" when nothing name-like is left.

    Strips markdown emphasis and links, surrounding quotes and brackets, trailing punctuation,
    legal suffixes, trademark signs, possessives, parentheticals and comma appositives, and
    collapses whitespace. Catalog-free, so "Yahoo!" becomes "Yahoo" (the catalog also indexes
    the polished form of its own names). Idempotent: the steps repeat until nothing changes.
    """
    current, previous = _collapse(raw), None
    while current != previous:
        previous = current
        current = _polish_once(current)
    return current if any(ch.isalnum() for ch in current) else ""


def _polish_once(name: str) -> str:
    """Apply every polish step once."""
    for pattern, replacement in _POLISH_STEPS:
        name = pattern.sub(replacement, name)
    name = _collapse(name).strip(_EDGE_CHARS)
    return _collapse(name.rstrip(_TRAILING))


def _collapse(text: str) -> str:
    """Trim and collapse runs of whitespace to one space."""
    return _WHITESPACE.sub(" ", text).strip()
