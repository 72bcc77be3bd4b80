"""Fresh databases for one benchmark: a PostgreSQL database created and dropped, or a new SQLite
file under bench/out/, migrated and seeded with prompts and models through the catalog API."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from db import catalog
from db.catalog import NewPrompt
from db.engine import make_engine
from db.migrate import upgrade

OUT = Path(__file__).resolve().parent / "out"
ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
BENCH_DB = "promptbatch_bench"


@dataclass(frozen=True)
class Target:
    """One migrated, empty database: its SQLAlchemy URL and which backend it is."""

    url: str
    backend: str  # "postgresql" | "sqlite"

    def engine(self, pool_size: int = 5) -> Engine:
        return make_engine(self.url, pool_size=pool_size)

    @property
    def libpq_url(self) -> str:
        """The URL for psql, pgbench and the peers' drivers (no +psycopg)."""
        return make_url(self.url).set(drivername="postgresql").render_as_string(False)

    @property
    def sqlite_path(self) -> str:
        return str(make_url(self.url).database)


@contextmanager
def fresh_target(backend: str, name: str) -> Iterator[Target]:
    """A migrated empty database for the duration of the block, dropped (or deleted) after."""
    if backend == "sqlite":
        yield from _sqlite_target(name)
    else:
        yield from _postgres_target()


def _sqlite_target(name: str) -> Iterator[Target]:
    OUT.mkdir(exist_ok=True)
    path = OUT / f"{name}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    target = Target(f"sqlite:///{path}", "sqlite")
    migrate(target)
    yield target


def _postgres_target() -> Iterator[Target]:
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{BENCH_DB}"'))
    target = Target(
        make_url(ADMIN_URL).set(database=BENCH_DB).render_as_string(False), "postgresql"
    )
    try:
        migrate(target)
        yield target
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)'))
        admin.dispose()


def migrate(target: Target) -> None:
    """Run every migration on `target`."""
    engine = target.engine()
    upgrade(engine)
    engine.dispose()


def seed_catalog(
    target: Target,
    *,
    prompts: int,
    runs: int,
    models: list[str],
    base_url: str = "http://127.0.0.1:9/v1",
) -> None:
    """`prompts` active prompts of `runs` runs each and one compatible model per name."""
    engine = target.engine()
    catalog.import_prompts(
        engine,
        [
            NewPrompt(f"Which CRM would you recommend for a team of {i} people?", "crm", runs)
            for i in range(prompts)
        ],
    )
    for name in models:
        catalog.add_model(engine, provider="compatible", name=name, base_url=base_url)
    engine.dispose()


def sql_scalar(target: Target, sql: str) -> int:
    """One integer from a read query (bench bookkeeping, not a product query)."""
    engine = create_engine(target.url)
    with engine.connect() as conn:
        value = conn.execute(text(sql)).scalar_one()
    engine.dispose()
    return int(value or 0)


def psql(target: Target, sql: str) -> None:
    """Run `sql` with the psql client (ON_ERROR_STOP); raises CalledProcessError on failure."""
    subprocess.run(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", target.libpq_url, "-c", sql],
        check=True,
        capture_output=True,
        text=True,
    )


def command_env(**settings: str) -> dict[str, str]:
    """The environment for a `promptbatch` command under test: ours plus `settings`, with Python's
    bytecode cache on as in an installed package (this machine sets PYTHONDONTWRITEBYTECODE, which
    would recompile every module of ours at each command's start)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, **settings}
