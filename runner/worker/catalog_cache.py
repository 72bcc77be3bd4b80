"""The entity catalog a worker process extracts mentions with, refreshed from the database."""

from __future__ import annotations

import threading
import time

from db.catalog import load_entities
from db.engine import Engine
from runner.extraction.resolve import Catalog, CatalogEntry

REFRESH_SECONDS = 60.0


class CatalogCache:
    """A Catalog rebuilt from `entities` + `entity_aliases` at most every REFRESH_SECONDS."""

    def __init__(self, engine: Engine, refresh_seconds: float = REFRESH_SECONDS) -> None:
        self._engine = engine
        self._refresh = refresh_seconds
        self._lock = threading.Lock()
        self._catalog: Catalog | None = None
        self._loaded_at = 0.0

    def get(self) -> Catalog:
        with self._lock:
            if self._catalog is None or time.monotonic() - self._loaded_at > self._refresh:
                rows = load_entities(self._engine)
                self._catalog = Catalog(CatalogEntry(r.id, r.name, r.aliases) for r in rows)
                self._loaded_at = time.monotonic()
            return self._catalog
