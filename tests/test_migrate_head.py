"""The schema check without Alembic's runtime: HEAD_REVISION and the plain read of alembic_version
must agree with what Alembic itself says."""

from __future__ import annotations

import pytest
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text

from db.engine import make_engine
from db.errors import SchemaOutOfDate
from db.migrate import HEAD_REVISION, alembic_config, current_revision, require_current


def test_head_revision_is_the_newest_migration():
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head == HEAD_REVISION, "a new migration was added: set db.migrate.HEAD_REVISION to it"


def alembic_reading(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def test_empty_database_reads_as_alembic_reads_it(db_url):
    engine = make_engine(db_url)
    assert current_revision(engine) is None
    assert alembic_reading(engine) is None
    with pytest.raises(SchemaOutOfDate, match="is empty; run `promptbatch db upgrade`"):
        require_current(engine)
    engine.dispose()


def test_migrated_database_reads_as_alembic_reads_it(engine):
    assert current_revision(engine) == alembic_reading(engine) == HEAD_REVISION
    require_current(engine)


def test_older_revision_is_out_of_date(engine):
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0000'"))
    assert current_revision(engine) == alembic_reading(engine) == "0000"
    with pytest.raises(SchemaOutOfDate, match="is at revision 0000; run `promptbatch db upgrade`"):
        require_current(engine)


def test_several_revisions_are_out_of_date(engine):
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO alembic_version (version_num) VALUES ('0000')"))
    with pytest.raises(SchemaOutOfDate, match="is at several revisions"):
        require_current(engine)
