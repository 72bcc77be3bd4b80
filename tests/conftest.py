"""Fixtures: every database test runs on real SQLite and real PostgreSQL, each in a database of its
own, and the two test tiers are kept honest.

Migrations run once per test session (per xdist worker) into a template: a SQLite file that each
test copies; on PostgreSQL the statements the migrations ran, replayed into each test's own schema
(`pg_template` says why not CREATE DATABASE ... TEMPLATE). A test
that asks for `engine` gets a migrated database; one that asks only for `db_url` gets an empty one
(for the tests of `db upgrade` and of the schema check).

A test that starts a process (a subprocess, or a multiprocessing child) must carry the `subprocess`
(or `browser`) mark: `make test-fast` leaves those out, and here any unmarked test that starts one
fails, so the fast tier stays free of them.
"""

from __future__ import annotations

import functools
import multiprocessing.process
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from sqlalchemy import Engine, create_engine, event, text

from db.engine import make_engine
from db.migrate import upgrade
from runner.simulator.server import SimulatorServer, running_simulator

PG_URL = os.environ.get(
    "PROMPTBATCH_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REQUIRE_PG = os.environ.get("PROMPTBATCH_TEST_REQUIRE_PG") == "1"
FIXTURES = Path(__file__).with_name("fixtures")
PROCESS_MARKS = ("subprocess", "browser")


def _pg_reason() -> str | None:
    """None when PostgreSQL is reachable, else why not (one line)."""
    try:
        engine = create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:  # any failure to connect means: no PostgreSQL here
        return f"PostgreSQL not reachable at {PG_URL}: {str(exc).splitlines()[0]}"


PG_UNAVAILABLE = _pg_reason()
if PG_UNAVAILABLE and REQUIRE_PG:
    raise RuntimeError(f"PROMPTBATCH_TEST_REQUIRE_PG=1 but {PG_UNAVAILABLE}")


# --- the tiers -----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _processes_need_a_mark(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail an unmarked test that starts a process (it would slow the fast tier down)."""
    if any(request.node.get_closest_marker(mark) for mark in PROCESS_MARKS):
        return

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError(f"{request.node.nodeid} starts a process: mark it `subprocess`")

    monkeypatch.setattr(subprocess.Popen, "_execute_child", refuse)
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", refuse)


@pytest.fixture(autouse=True, scope="session")
def _streamlit_scans_packages_once() -> Iterator[None]:
    """Streamlit's AppTest scans every installed distribution for component manifests on each
    run (about 0.5 s of CPU, most of a console test); the installed set does not change during a
    test session, so the scan's result is kept."""
    from streamlit.components.v2 import manifest_scanner

    with pytest.MonkeyPatch.context() as patch:
        scan = functools.cache(manifest_scanner.scan_component_manifests)
        patch.setattr(manifest_scanner, "scan_component_manifests", scan)
        yield


# --- databases -----------------------------------------------------------------------------------


def _pg_admin() -> Engine:
    return create_engine(PG_URL, isolation_level="AUTOCOMMIT")


def _migrate(url: str, capture: Callable[..., None] | None = None) -> None:
    """Migrate `url`, passing every statement to `capture` (before_cursor_execute) if given."""
    engine = make_engine(url)
    if capture is not None:
        event.listen(engine, "before_cursor_execute", capture)
    upgrade(engine)
    engine.dispose()  # no connection may stay open on a template


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied by every test that wants a migrated database."""
    path = tmp_path_factory.mktemp("template") / "promptbatch.db"
    _migrate(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def pg_template() -> Iterator[list[tuple[str, Any]]]:
    """The statements the migrations ran on PostgreSQL (DDL and the version stamp), captured
    once from a real `upgrade` into a schema of its own and replayed into each test's schema.

    Measured on this 2-core machine: a schema plus this replay plus its drop costs about 0.05 s;
    CREATE DATABASE ... TEMPLATE plus DROP DATABASE about 0.45 s (a checkpoint and fsyncs each);
    a fresh schema migrated by Alembic about 0.2 s.
    """
    if PG_UNAVAILABLE:
        pytest.skip(PG_UNAVAILABLE)
    statements: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if not statement.lstrip().upper().startswith(("SELECT", "SHOW")):  # reads need no replay
            statements.append((statement, parameters))

    for url in _pg_schema():
        _migrate(url, capture)
    yield statements


def _pg_schema(template: list[tuple[str, Any]] | None = None) -> Iterator[str]:
    """A fresh PostgreSQL schema (the template's statements replayed in it, or empty) as a URL
    whose search_path is that schema; dropped after the test."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = _pg_admin()
    with admin.connect() as conn:  # one round trip, one commit
        conn.exec_driver_sql(
            f'BEGIN; CREATE SCHEMA "{schema}"; SET LOCAL search_path TO "{schema}"'
        )
        for statement, parameters in template or ():
            conn.exec_driver_sql(statement, parameters)
        conn.exec_driver_sql("COMMIT")
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options={quote(f'-csearch_path={schema}')}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL to a database of this test's own: migrated when the test also asks for `engine`,
    else empty."""
    migrated = "engine" in request.fixturenames
    if request.param == "sqlite":
        path = tmp_path / "promptbatch.db"
        if migrated:
            shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    if PG_UNAVAILABLE:
        pytest.skip(PG_UNAVAILABLE)
    yield from _pg_schema(request.getfixturevalue("pg_template") if migrated else None)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine on a migrated, empty database (a copy of the session's template)."""
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


# --- the simulator -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_sim() -> Iterator[SimulatorServer]:
    """One simulator per test module, on a free loopback port."""
    with running_simulator() as server:
        yield server


@pytest.fixture
def sim(shared_sim: SimulatorServer) -> SimulatorServer:
    """The module's simulator with fresh call counters (so tests share no fault state)."""
    shared_sim.reset_counters()
    return shared_sim
