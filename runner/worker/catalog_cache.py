"""The entity catalog a worker process extracts mentions with, refreshed from the database."""

from __future__ import annotations

import logging
import threading
import time

from db.catalog import load_entities
from db.engine import Engine
from db.errors import DatabaseUnavailable
from runner.extraction.resolve import Catalog, CatalogEntry

log = logging.getLogger(__name__)

REFRESH_SECONDS = 60.0
RETRY_SECONDS = 5.0  # after a failed refresh, the stale catalog is served this long untried


class CatalogCache:
    """A Catalog rebuilt from `entities` + `entity_aliases` at most every REFRESH_SECONDS.

    While the database is away a stale catalog is served (a paid answer is never dropped for
    want of a refresh: issue 12); with none loaded yet, `get` raises DatabaseUnavailable."""

    def __init__(self, engine: Engine, refresh_seconds: float = REFRESH_SECONDS) -> None:
        self._engine = engine
        self._refresh = refresh_seconds
        self._lock = threading.Lock()
        self._catalog: Catalog | None = None
        self._loaded_at = 0.0
        self._retry_at = 0.0  # time.monotonic() before which no refresh is tried

    def fresh(self) -> Catalog | None:
        """The catalog if loaded within REFRESH_SECONDS, else None (no database access: for the
        event loop, which calls `get` off the loop only when this is None)."""
        catalog = self._catalog
        now = time.monotonic()
        if catalog is None or (now - self._loaded_at > self._refresh and now >= self._retry_at):
            return None
        return catalog

    def get(self) -> Catalog:
        """The catalog, reloaded first when stale (blocking). Raises DatabaseUnavailable only
        when the database is away and no catalog was ever loaded."""
        with self._lock:
            if (catalog := self.fresh()) is not None:
                return catalog
            try:
                rows = load_entities(self._engine)
            except DatabaseUnavailable as exc:
                if self._catalog is None:
                    raise
                self._retry_at = time.monotonic() + RETRY_SECONDS
                log.warning(
                    "catalog refresh failed, using the one loaded %.0f s ago: %s",
                    time.monotonic() - self._loaded_at,
                    exc,
                    extra={"action": "catalog_stale"},
                )
                return self._catalog
            self._catalog = Catalog(CatalogEntry(r.id, r.name, r.aliases) for r in rows)
            self._loaded_at = time.monotonic()
            return self._catalog
