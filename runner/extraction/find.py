"""Brand positions in an answer: find catalog brands in plain text, or place the names a
structured answer listed; positions and offsets always come from the answer text, never from the
model (DESIGN.md, "Entities"). Pure functions, no database and no I/O.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from runner.extraction.polish import polish
from runner.extraction.resolve import (
    Catalog,
    CatalogEntry,
    leading_phrases,
    matching_key,
    strip_marks,
)

# --- locating names in text ---------------------------------------------------------------------

# Curly single quotes (U+2018, U+2019, U+201B) and curly doubles (U+201C-U+201E) to straight.
_QUOTE_FOLDS = str.maketrans("\u2018\u2019\u201b\u201c\u201d\u201e", "'''\"\"\"")


def _fold_char(ch: str) -> str:
    """Fold one character to exactly one character: accents dropped, lower case."""
    base = strip_marks(ch.translate(_QUOTE_FOLDS))
    if len(base) != 1:
        base = ch
    for lowered in (base.casefold(), base.lower()):
        if len(lowered) == 1:
            return lowered
    return base


_FOLD_TABLE_MAX = 65_536


class _FoldTable(dict[int, str]):
    """str.translate's table for _fold_char, filled as characters are first seen: a hit is a
    C-level dict lookup, so folding non-ASCII text costs no Python call per character. Emptied
    past _FOLD_TABLE_MAX characters (answers in many scripts), so it stays a few MiB at most."""

    def __missing__(self, code: int) -> str:
        if len(self) >= _FOLD_TABLE_MAX:
            self.clear()
        folded = self[code] = _fold_char(chr(code))
        return folded


_FOLD_TABLE = _FoldTable()


def _fold(text: str) -> str:
    """Fold text char by char so that offsets in the result are offsets in the original.

    ASCII text folds to its lower case in one call; other text through a table of every
    character seen so far (folding every char afresh was the runner's largest CPU cost per job,
    bench/RESULTS.md).
    """
    if text.isascii():
        return text.lower()
    return text.translate(_FOLD_TABLE)


@dataclass(frozen=True)
class _NamePattern:
    """A name's whole-word pattern over folded text, and its first folded word: every match
    starts with that word, so a text without it needs no regex search (a substring test is ~50x
    cheaper than a search, and most names are absent from most answers)."""

    first_word: str
    regex: re.Pattern[str]

    def first(self, folded_text: str) -> re.Match[str] | None:
        start = folded_text.find(self.first_word)
        return None if start < 0 else self.regex.search(folded_text, start)

    def every(self, folded_text: str) -> Iterator[re.Match[str]]:
        start = folded_text.find(self.first_word)
        return iter(()) if start < 0 else self.regex.finditer(folded_text, start)


@functools.lru_cache(maxsize=65536)
def _name_pattern(name: str) -> _NamePattern | None:
    """Compile a whole-word pattern for a name over folded text; spaces are optional
    ('Proton VPN' finds 'ProtonVPN'). None for a name with no characters. A search from an
    offset still sees the character before it, so the word-boundary lookbehind holds."""
    words = _fold(name).split()
    if not words:
        return None
    body = r"\s*".join(map(re.escape, words))
    return _NamePattern(words[0], re.compile(rf"(?<![^\W_]){body}(?![^\W_])"))


def _spans(folded_text: str, names: Iterable[str]) -> Iterator[tuple[int, int]]:
    """Yield (start, end) of every whole-word occurrence of any name in folded text."""
    for name in names:
        pattern = _name_pattern(name)
        if pattern is not None:
            yield from (match.span() for match in pattern.every(folded_text))


def _first_span(folded_text: str, names: Iterable[str]) -> tuple[int, int] | None:
    """Return the earliest (longest on a tie) span of any name in folded text, or None. Each
    name's search stops at its first match (finding all of them was a fifth of a worker's CPU,
    bench/ item 3)."""
    spans = (
        match.span()
        for pattern in map(_name_pattern, names)
        if pattern is not None and (match := pattern.first(folded_text)) is not None
    )
    return min(spans, key=lambda span: (span[0], -span[1]), default=None)


def locate(text: str, names: Iterable[str]) -> int | None:
    """Return the str offset of the earliest whole-word occurrence of any name, or None.

    Case- and accent-insensitive ('Skoda' finds 'Škoda'); the characters around a match must
    not be letters or digits ('Sage' is not in 'message').
    """
    span = _first_span(_fold(text), names)
    return None if span is None else span[0]


# --- mentions -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FoundMention:
    """One brand mentioned in an answer, at its first appearance."""

    raw_name: str
    display: str
    key: str
    entity_id: int | None
    char_offset: int
    position: int


@dataclass(frozen=True)
class _Hit:
    """An entity (known or new) and the span of its first appearance in the answer."""

    display: str
    key: str
    entity_id: int | None
    start: int
    end: int


def extract_from_text(text: str, catalog: Catalog) -> list[FoundMention]:
    """Return the catalog brands whose name or alias occurs in text, ordered by first appearance.

    Fallback for answers without structured mentions. Where names overlap, the longest one at a
    position takes the span: 'Apple Passwords' is not also a mention of 'Apple' there.
    """
    folded = _fold(text)
    occurrences = sorted(
        (start, -end, order, entry)
        for order, entry in enumerate(catalog)
        for start, end in _spans(folded, entry.surface_forms())
    )
    hits: dict[int, _Hit] = {}
    for start, end, entry in _longest_first_claims(occurrences):
        if entry.entity_id not in hits:
            hits[entry.entity_id] = _entry_hit(entry, start, end)
    return _number(text, hits.values())


def _longest_first_claims(
    occurrences: Iterable[tuple[int, int, int, CatalogEntry]],
) -> Iterator[tuple[int, int, CatalogEntry]]:
    """Yield (start, end, entry) of occurrences that overlap no earlier-claimed span.

    Input is sorted by (start, -end, catalog order), so at each position the longest name wins.
    """
    claimed: list[tuple[int, int]] = []
    for start, negative_end, _, entry in occurrences:
        end = -negative_end
        if not any(start < taken_end and taken_start < end for taken_start, taken_end in claimed):
            claimed.append((start, end))
            yield start, end, entry


def order_mentions(text: str, raw_names: Sequence[str], catalog: Catalog) -> list[FoundMention]:
    """Return the model's listed brands that the answer says, ordered by first appearance.

    Each name resolves to a catalog entry or else a new entity keyed by its polished name;
    each entity counts once. Its offset is the earliest occurrence of the raw name, its polished
    form, or the entry's name and aliases; only when none occurs, the longest leading word
    sequence that does ('Brooks Ghost 16' via 'Brooks'), so a new 'Help Desk Pro' is not placed
    at an earlier common word 'help'. Names the answer never says are dropped.
    """
    hits: dict[int | str, _Hit] = {}
    folded = _fold(text)
    for raw in raw_names:
        hit = _locate_listed(folded, raw, catalog)
        if hit is None:
            continue
        identity = hit.key if hit.entity_id is None else hit.entity_id
        if identity not in hits or hit.start < hits[identity].start:
            hits[identity] = hit
    return _number(text, hits.values())


def _locate_listed(folded_text: str, raw: str, catalog: Catalog) -> _Hit | None:
    """Resolve one listed name and find its first appearance in the folded answer text; None
    if absent."""
    display = polish(raw)
    if not display:
        return None
    entry = catalog.resolve(display)
    forms = [raw, display, *(entry.surface_forms() if entry else ())]
    span = _first_span(folded_text, forms)
    for phrase in leading_phrases(display) if span is None else ():
        span = _first_span(folded_text, [phrase])
        if span is not None:
            break
    if span is None:
        return None
    if entry is not None:
        return _entry_hit(entry, *span)
    return _Hit(display, matching_key(display), None, *span)


def _entry_hit(entry: CatalogEntry, start: int, end: int) -> _Hit:
    """Build a hit for a catalog entry."""
    return _Hit(entry.name, matching_key(entry.name), entry.entity_id, start, end)


def _number(text: str, hits: Iterable[_Hit]) -> list[FoundMention]:
    """Order hits by offset (stable) and number them 1..n."""
    ordered = sorted(hits, key=lambda hit: hit.start)
    return [
        FoundMention(text[h.start : h.end], h.display, h.key, h.entity_id, h.start, position)
        for position, h in enumerate(ordered, start=1)
    ]
