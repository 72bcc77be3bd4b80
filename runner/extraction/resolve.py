"""Matching keys and the brand catalog: a display name -> its key -> a known entity, by the
catalog's longest leading key (DESIGN.md, "Entities"). Pure, no database and no I/O.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from runner.extraction.polish import polish

# --- keys ---------------------------------------------------------------------------------------

_DOT_COM = re.compile(r"\.com\Z")


@functools.lru_cache(maxsize=65536)  # pure, and names repeat across answers
def matching_key(display: str) -> str:
    """Return the matching key: NFKC, accents folded, casefolded, '.com' dropped, alnum only.

    'Salesforce.com' -> 'salesforce', 'AT&T' -> 'att', 'Proton VPN' -> 'protonvpn',
    'Škoda' -> 'skoda'.
    """
    text = unicodedata.normalize("NFKC", display)
    text = strip_marks(text).casefold().strip()
    text = _DOT_COM.sub("", text)
    return "".join(ch for ch in text if ch.isalnum())


def strip_marks(text: str) -> str:
    """Decompose (NFKD) and drop combining marks."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


@functools.lru_cache(maxsize=65536)
def candidate_keys(display: str) -> tuple[str, ...]:
    """Return lookup keys, longest first: the whole polished name, then its leading word runs.

    'Brooks Ghost 16' -> ['brooksghost16', 'brooksghost', 'brooks']. Cutting only at spaces is
    the design's longest-key-prefix rule without letting 'Sage' match 'Sagebrush'.
    """
    words = polish(display).split(" ")
    keys = (matching_key(" ".join(words[:n])) for n in range(len(words), 0, -1))
    return tuple(key for key in dict.fromkeys(keys) if key)


def leading_phrases(display: str) -> list[str]:
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
        return _surface_forms(self)


@functools.lru_cache(maxsize=65536)  # asked for every listed name of every answer
def _surface_forms(entry: CatalogEntry) -> tuple[str, ...]:
    forms = (*entry.aliases, *map(polish, entry.aliases))
    return tuple(f for f in dict.fromkeys((entry.name, polish(entry.name), *forms)) if f)


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
