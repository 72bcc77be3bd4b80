"""Schema migrations through Alembic: the only way the schema is made, on both backends.

Alembic itself is imported only by `upgrade` and `alembic_config`: its runtime costs ~0.15 s of
imports, and every CLI command checks the schema (`require_current`) before it starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, column, inspect, select, table

from db.engine import read_tx, translate_errors
from db.errors import SchemaOutOfDate

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).with_name("migrations")
# The newest revision in db/migrations/versions: a new migration must update it
# (tests/test_migrate_head.py compares it with Alembic's ScriptDirectory).
HEAD_REVISION = "0005"
# Alembic's version table (MigrationContext's default name): one row, the database's revision.
_ALEMBIC_VERSION = table("alembic_version", column("version_num"))


def alembic_config(url: str = "") -> Config:
    """An Alembic Config pointing at db/migrations (no alembic.ini needed)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> str:
    """Migrate the database to `revision`; returns the revision it is at afterwards.

    Raises DatabaseUnavailable when the database cannot be reached.
    """
    from alembic import command

    cfg = alembic_config()
    with translate_errors(engine), engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    return current_revision(engine) or ""


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None for an empty database.

    Read as Alembic's MigrationContext reads it: no version table, or an empty one, is None.
    Raises SchemaOutOfDate when the table holds several revisions (unmerged branches).
    """
    with read_tx(engine) as conn:
        revisions = _stamped_revisions(conn)
    if len(revisions) > 1:
        raise SchemaOutOfDate(
            f"the database schema of {_where(engine)} is at several revisions "
            f"({', '.join(revisions)}); run `promptbatch db upgrade`"
        )
    return revisions[0] if revisions else None


def _stamped_revisions(conn: Connection) -> list[str]:
    if not inspect(conn).has_table(_ALEMBIC_VERSION.name):
        return []
    return list(conn.execute(select(_ALEMBIC_VERSION.c.version_num)).scalars())


def require_current(engine: Engine) -> None:
    """Raise SchemaOutOfDate unless the database is at the newest revision (HEAD_REVISION)."""
    current = current_revision(engine)
    if current != HEAD_REVISION:
        state = "empty" if current is None else f"at revision {current}"
        raise SchemaOutOfDate(
            f"the database schema of {_where(engine)} is {state}; run `promptbatch db upgrade`"
        )


def _where(engine: Engine) -> str:
    """The database, as a user can find it: SQLite paths made absolute (they are cwd-relative)."""
    url = engine.url
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        return str(Path(url.database or "").resolve())
    return url.render_as_string(hide_password=True)
