"""Brand extraction: raw model names -> canonical entities, and brand positions in an answer.

Pure functions, no database and no I/O. The rules come from DESIGN.md "Entities": polish a raw
name to its display form, key it for matching, resolve it by the catalog's longest key prefix
(else it is a new entity), and take positions from the answer text, never from the model.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

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


# --- keys ---------------------------------------------------------------------------------------

_DOT_COM = re.compile(r"\.com\Z")


def matching_key(display: str) -> str:
    """Return the matching key: NFKC, accents folded, casefolded, '.com' dropped, alnum only.

    'Salesforce.com' -> 'salesforce', 'AT&T' -> 'att', 'Proton VPN' -> 'protonvpn',
    'Škoda' -> 'skoda'.
    """
    text = unicodedata.normalize("NFKC", display)
    text = _strip_marks(text).casefold().strip()
    text = _DOT_COM.sub("", text)
    return "".join(ch for ch in text if ch.isalnum())


def _strip_marks(text: str) -> str:
    """Decompose (NFKD) and drop combining marks."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def candidate_keys(display: str) -> list[str]:
    """Return lookup keys, longest first: the whole polished name, then its leading word runs.

    'Brooks Ghost 16' -> ['brooksghost16', 'brooksghost', 'brooks']. Cutting only at spaces is
    the design's longest-key-prefix rule without letting 'Sage' match 'Sagebrush'.
    """
    words = polish(display).split(" ")
    keys = (matching_key(" ".join(words[:n])) for n in range(len(words), 0, -1))
    return [key for key in dict.fromkeys(keys) if key]


def _leading_phrases(display: str) -> list[str]:
    """Return the leading word sequences of a display name, longest first, itself excluded."""
    words = display.split()
    return [" ".join(words[:n]) for n in range(len(words) - 1, 0, -1)]


# --- catalog ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CatalogEntry:
    """A known brand: its entity id, canonical display name and other surface forms."""

    entity_id: int
    name: str
    aliases: tuple[str, ...] = ()

    def surface_forms(self) -> tuple[str, ...]:
        """Return the name, the aliases and their polished forms, deduplicated, none empty."""
        forms = (*self.aliases, *map(polish, self.aliases))
        return tuple(f for f in dict.fromkeys((self.name, polish(self.name), *forms)) if f)


class Catalog:
    """Immutable index over catalog entries: matching key -> entry, for every name and alias."""

    def __init__(self, entries: Iterable[CatalogEntry]) -> None:
        self._entries = tuple(entries)
        index: dict[str, CatalogEntry] = {}
        # Names are indexed before aliases so that an alias never shadows another brand's name;
        # on a clash between two names the first entry wins.
        for entry in self._entries:
            _index_forms(index, entry, (entry.name,))
        for entry in self._entries:
            _index_forms(index, entry, entry.aliases)
        self._index = index

    def resolve(self, raw: str) -> CatalogEntry | None:
        """Return the entry for a raw name by its longest candidate key, or None if unknown."""
        for key in candidate_keys(raw):
            if key in self._index:
                return self._index[key]
        return None

    def __iter__(self) -> Iterator[CatalogEntry]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


def _index_forms(index: dict[str, CatalogEntry], entry: CatalogEntry, forms: Iterable[str]) -> None:
    """Add the keys of each form and of its polished form ("Yahoo!" and "Yahoo") to index."""
    for form in forms:
        for key in (matching_key(form), matching_key(polish(form))):
            if key:
                index.setdefault(key, entry)


# --- locating names in text ---------------------------------------------------------------------

# Curly single quotes (U+2018, U+2019, U+201B) and curly doubles (U+201C-U+201E) to straight.
_QUOTE_FOLDS = str.maketrans("\u2018\u2019\u201b\u201c\u201d\u201e", "'''\"\"\"")


@functools.lru_cache(maxsize=4096)
def _fold_char(ch: str) -> str:
    """Fold one character to exactly one character: accents dropped, lower case."""
    base = _strip_marks(ch.translate(_QUOTE_FOLDS))
    if len(base) != 1:
        base = ch
    for lowered in (base.casefold(), base.lower()):
        if len(lowered) == 1:
            return lowered
    return base


def _fold(text: str) -> str:
    """Fold text char by char so that offsets in the result are offsets in the original.

    ASCII text folds to its lower case in one call; other text goes char by char through a cache
    (folding every char afresh was the runner's largest CPU cost per job, bench/RESULTS.md).
    """
    if text.isascii():
        return text.lower()
    return "".join(map(_fold_char, text))


@functools.lru_cache(maxsize=8192)
def _name_pattern(name: str) -> re.Pattern[str] | None:
    """Compile a whole-word pattern for a name over folded text; spaces are optional
    ('Proton VPN' finds 'ProtonVPN'). None for a name with no characters."""
    words = _fold(name).split()
    if not words:
        return None
    body = r"\s*".join(map(re.escape, words))
    return re.compile(rf"(?<![^\W_]){body}(?![^\W_])")


def _spans(folded_text: str, names: Iterable[str]) -> Iterator[tuple[int, int]]:
    """Yield (start, end) of every whole-word occurrence of any name in folded text."""
    for name in names:
        pattern = _name_pattern(name)
        if pattern is not None:
            yield from (match.span() for match in pattern.finditer(folded_text))


def _first_span(folded_text: str, names: Iterable[str]) -> tuple[int, int] | None:
    """Return the earliest (longest on a tie) span of any name in folded text, or None."""
    spans = _spans(folded_text, names)
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
    for phrase in _leading_phrases(display) if span is None else ():
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
