"""Driver errors at the db boundary: a lost lock conflict is told by the driver's error code
(SQLite's primary result code, PostgreSQL's SQLSTATE), never by the wording of its message."""

from __future__ import annotations

import sqlite3

import psycopg.errors
import pytest
from sqlalchemy.exc import OperationalError

from db.engine import make_engine, translate_errors
from db.errors import DatabaseUnavailable, LockConflict


def _sqlite_error(message: str, code: int) -> sqlite3.OperationalError:
    error = sqlite3.OperationalError(message)
    error.sqlite_errorcode = code  # what the sqlite3 module sets (Python 3.11+)
    return error


@pytest.mark.parametrize(
    ("orig", "conflict"),
    [
        (_sqlite_error("database is locked", sqlite3.SQLITE_BUSY), True),
        (_sqlite_error("worded otherwise in another build", sqlite3.SQLITE_BUSY), True),
        (_sqlite_error("database table is locked", sqlite3.SQLITE_LOCKED), True),
        (_sqlite_error("busy snapshot", sqlite3.SQLITE_BUSY | (2 << 8)), True),  # extended
        (_sqlite_error("locked? no: read-only", sqlite3.SQLITE_READONLY), False),
        (psycopg.errors.DeadlockDetected("deadlock detected"), True),
        (psycopg.errors.SerializationFailure("could not serialize access"), True),
        (psycopg.errors.AdminShutdown("terminating connection: locked out"), False),
    ],
)
def test_a_lost_lock_is_known_by_its_code(orig: Exception, conflict: bool) -> None:
    engine = make_engine("sqlite://")
    with pytest.raises(DatabaseUnavailable) as raised, translate_errors(engine):
        raise OperationalError("UPDATE prompt_jobs ...", {}, orig)
    assert isinstance(raised.value, LockConflict) is conflict
    assert str(orig).splitlines()[0] in str(raised.value)
    engine.dispose()
