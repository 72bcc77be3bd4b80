"""Fixtures: every database test runs on real SQLite and real PostgreSQL (a fresh schema each)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import Engine, create_engine, text

from db.engine import make_engine
from db.migrate import upgrade
from runner.simulator.server import SimulatorServer, running_simulator

PG_URL = os.environ.get(
    "PROMPTBATCH_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REQUIRE_PG = os.environ.get("PROMPTBATCH_TEST_REQUIRE_PG") == "1"
FIXTURES = Path(__file__).with_name("fixtures")


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


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL to an empty database: a file on SQLite, a fresh schema on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'promptbatch.db'}"
        return
    if PG_UNAVAILABLE:
        pytest.skip(PG_UNAVAILABLE)
    yield from _pg_schema_url()


def _pg_schema_url() -> Iterator[str]:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options={quote(f'-csearch_path={schema}')}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine on a migrated, empty database."""
    eng = make_engine(db_url)
    upgrade(eng)
    yield eng
    eng.dispose()


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
