"""Schema migrations through Alembic: the only way the schema is made, on both backends."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from db.engine import read_tx, translate_errors
from db.errors import SchemaOutOfDate

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(url: str = "") -> Config:
    """An Alembic Config pointing at db/migrations (no alembic.ini needed)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> str:
    """Migrate the database to `revision`; returns the revision it is at afterwards.

    Raises DatabaseUnavailable when the database cannot be reached.
    """
    cfg = alembic_config()
    with translate_errors(engine), engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    return current_revision(engine) or ""


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None for an empty database."""
    with read_tx(engine) as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str:
    """The newest revision in db/migrations."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def require_current(engine: Engine) -> None:
    """Raise SchemaOutOfDate unless the database is at the newest revision."""
    current = current_revision(engine)
    if current != head_revision():
        state = "empty" if current is None else f"at revision {current}"
        raise SchemaOutOfDate(f"the database schema of {_where(engine)} is {state}; "
                              "run `promptbatch db upgrade`")


def _where(engine: Engine) -> str:
    """The database, as a user can find it: SQLite paths made absolute (they are cwd-relative)."""
    url = engine.url
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        return str(Path(url.database or "").resolve())
    return url.render_as_string(hide_password=True)
