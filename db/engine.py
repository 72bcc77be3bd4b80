"""Engines and transactions for both backends.

SQLite (the embedded default) runs in WAL mode with a busy timeout on every connection, and every
write transaction begins IMMEDIATE so two writers queue on the lock instead of failing halfway
(case C14). PostgreSQL engines ping before use so a restarted server is survived (case C22).
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError

from db.errors import ConfigError, DatabaseUnavailable, LockConflict

# Engine is re-exported: runner and console name the type without importing SQLAlchemy.
__all__ = [
    "Engine",
    "is_sqlite",
    "make_engine",
    "read_tx",
    "translate_errors",
    "write_operation",
    "write_tx",
]

log = logging.getLogger(__name__)

SQLITE_MIN_VERSION = (3, 35, 0)  # UPDATE ... RETURNING
SQLITE_BUSY_TIMEOUT_MS = 30_000
LOCK_RETRIES = 8  # a write operation that lost a lock conflict runs at most this often
LOCK_BACKOFF_SECONDS = 0.05  # its first wait; doubled each time (0.05 .. 3.2 s, 6.4 s in all)
PG_RETRY_SQLSTATES = frozenset({"40001", "40P01"})  # serialization_failure, deadlock_detected
SQLITE_LOCK_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})

T = TypeVar("T")
P = ParamSpec("P")


def make_engine(url: str, *, pool_size: int = 5, max_overflow: int | None = None) -> Engine:
    """Build the engine for `url` (``sqlite:///path`` or ``postgresql+psycopg://...``): on
    PostgreSQL at most pool_size + max_overflow (default pool_size) connections at once.

    Raises ConfigError for a malformed URL or unsupported driver. Nothing connects yet.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"DATABASE_URL is not a valid database URL: {url!r}") from exc
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, parsed.database)
    if parsed.get_backend_name() != "postgresql":
        raise ConfigError(f"DATABASE_URL must be sqlite:/// or postgresql+psycopg://, got {url!r}")
    if parsed.drivername == "postgresql":  # plain postgresql:// means psycopg 3 here
        parsed = parsed.set(drivername="postgresql+psycopg")
    try:
        engine = create_engine(
            parsed,
            pool_pre_ping=True,
            pool_size=pool_size,
            max_overflow=pool_size if max_overflow is None else max_overflow,
            pool_recycle=1800,
        )
    except (ArgumentError, NoSuchModuleError) as exc:
        raise ConfigError(f"DATABASE_URL cannot be used: {exc}") from exc
    event.listen(engine, "connect", _pg_on_connect)
    return engine


def _pg_on_connect(dbapi_conn: Any, _record: Any) -> None:
    """Lists go to PostgreSQL as binary arrays: the group commit's statements send each batch
    as arrays (answers and raw bodies of several KB), and psycopg's text format escapes every
    element with a regular expression, a tenth of a worker's CPU (py-spy --gil, bench/ item 3).
    Binary needs no escaping; every array parameter of ours is CAST to its type in the SQL."""
    from psycopg.types.array import ListBinaryDumper  # not imported by SQLite-only processes

    dbapi_conn.adapters.register_dumper(list, ListBinaryDumper)


def _sqlite_engine(url: str, database: str | None) -> Engine:
    if sqlite3.sqlite_version_info < SQLITE_MIN_VERSION:
        raise ConfigError(f"SQLite {sqlite3.sqlite_version} is too old: promptbatch needs 3.35+")
    if database and database != ":memory:":
        folder = Path(database).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # one line for the user, not a traceback (issue 12)
            raise ConfigError(
                f"DATABASE_URL: cannot create the SQLite directory {folder}: {exc.strerror or exc}"
            ) from exc
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    # Take transaction control from pysqlite so BEGIN IMMEDIATE can be issued (SQLAlchemy docs,
    # "Serializable isolation / Savepoints / Transactional DDL").
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    immediate = conn.get_execution_options().get("promptbatch_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def is_sqlite(engine: Engine | Connection) -> bool:
    return engine.dialect.name == "sqlite"


@contextmanager
def write_tx(engine: Engine) -> Iterator[Connection]:
    """A write transaction: BEGIN IMMEDIATE on SQLite, a plain transaction on PostgreSQL.

    Raises DatabaseUnavailable when the database cannot be reached.
    """
    with translate_errors(engine), engine.connect() as plain:
        conn = plain.execution_options(promptbatch_write=True)
        with conn.begin():
            yield conn


@contextmanager
def read_tx(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction. Raises DatabaseUnavailable when the database cannot be reached."""
    with translate_errors(engine), engine.connect() as conn, conn.begin():
        yield conn


def write_operation(
    operation: Callable[Concatenate[Connection, P], T],
) -> Callable[Concatenate[Engine, P], T]:
    """Make `operation(conn, *args)` a named write operation, called as `operation(engine, *args)`:
    ONE write transaction (BEGIN IMMEDIATE on SQLite), run again whole when it lost a lock
    conflict, up to LOCK_RETRIES times with exponential backoff from LOCK_BACKOFF_SECONDS.

    SQLite: the lock wait ran past busy_timeout (case C14). PostgreSQL: the transaction was a
    deadlock victim or a serialization failure, e.g. a multi-row cancel against the reaper or a
    heartbeat locking the same jobs in another order. Either way it was rolled back, so running it
    again is safe. Lock waits are the database's business, never a job attempt. Raises
    DatabaseUnavailable (LockConflict once the retries are spent).
    """

    @functools.wraps(operation)
    def run(engine: Engine, /, *args: P.args, **kwargs: P.kwargs) -> T:
        for attempt in range(1, LOCK_RETRIES + 1):
            try:
                with write_tx(engine) as conn:
                    return operation(conn, *args, **kwargs)
            except LockConflict as exc:
                if attempt == LOCK_RETRIES:
                    raise
                log.warning(
                    "lock conflict retried: %s",
                    exc,
                    extra={"action": "db_lock_retry", "attempt": attempt},
                )
                time.sleep(LOCK_BACKOFF_SECONDS * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

    return run


def _lost_lock_conflict(exc: DBAPIError) -> bool:
    """Whether the driver's error code says the transaction lost a lock conflict: SQLite's
    SQLITE_BUSY or SQLITE_LOCKED (primary code, any extended one), PostgreSQL's SQLSTATE 40001 or
    40P01. Codes, not messages: a message is worded per version and locale."""
    sqlite_code = getattr(exc.orig, "sqlite_errorcode", None)
    if sqlite_code is not None:
        return sqlite_code & 0xFF in SQLITE_LOCK_CODES
    return getattr(exc.orig, "sqlstate", None) in PG_RETRY_SQLSTATES


@contextmanager
def translate_errors(engine: Engine) -> Iterator[None]:
    """Translate driver errors that mean 'the database is not there' into DatabaseUnavailable, and
    a lost lock conflict into LockConflict (a DatabaseUnavailable: retry later)."""
    try:
        yield
    except OperationalError as exc:
        error = LockConflict if _lost_lock_conflict(exc) else DatabaseUnavailable
        raise error(_describe(engine, exc)) from exc
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise DatabaseUnavailable(_describe(engine, exc)) from exc
        raise


def _describe(engine: Engine, exc: DBAPIError) -> str:
    where = engine.url.render_as_string(hide_password=True)
    reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
    return f"database {where}: {reason}"
