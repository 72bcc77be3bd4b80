"""Item 2's peers: procrastinate (a no-op task) and pgqueuer (a no-op entrypoint) draining the same
number of jobs at the same concurrency, in the same database as ours, timed the same way."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
from collections.abc import Callable
from typing import Any

import procrastinate
import psycopg
from pgqueuer import PsycopgDriver, Queries, QueueManager
from pgqueuer.types import QueueExecutionMode

from bench.databases import Target, sql_scalar
from bench.drain_clock import time_drain
from bench.throughput import CONCURRENCY, JOBS, PROCESSES, TIMEOUT_S

ENQUEUE_CHUNK = 1_000


def run(target: Target) -> dict[str, float]:
    """Jobs/s of procrastinate and pgqueuer on `target` (a PostgreSQL database)."""
    return {
        "procrastinate_jobs_per_s": run_procrastinate(target),
        "pgqueuer_jobs_per_s": run_pgqueuer(target),
    }


# --- procrastinate ----------------------------------------------------------------------------


def _procrastinate_app(url: str) -> procrastinate.App:
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

    @app.task(name="noop")
    async def noop() -> None:
        return None

    return app


def run_procrastinate(target: Target) -> float:
    asyncio.run(_procrastinate_setup(target.libpq_url))
    return _drain(
        target,
        _procrastinate_worker,
        "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')",
    )


async def _procrastinate_setup(url: str) -> None:
    app = _procrastinate_app(url)
    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        for _ in range(JOBS // ENQUEUE_CHUNK):
            await app.tasks["noop"].batch_defer_async(*({} for _ in range(ENQUEUE_CHUNK)))


def _procrastinate_worker(url: str) -> None:
    async def work() -> None:
        app = _procrastinate_app(url)
        async with app.open_async():
            await app.run_worker_async(
                concurrency=CONCURRENCY,
                wait=False,
                install_signal_handlers=False,
                fetch_job_polling_interval=0.05,
            )

    asyncio.run(work())


# --- pgqueuer ---------------------------------------------------------------------------------


def run_pgqueuer(target: Target) -> float:
    asyncio.run(_pgqueuer_setup(target.libpq_url))
    return _drain(target, _pgqueuer_worker, "SELECT count(*) FROM pgqueuer")


async def _pgqueuer_setup(url: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        queries = Queries(PsycopgDriver(conn))
        await queries.install()
        for _ in range(JOBS // ENQUEUE_CHUNK):
            await queries.enqueue(
                ["noop"] * ENQUEUE_CHUNK, [None] * ENQUEUE_CHUNK, [0] * ENQUEUE_CHUNK
            )


def _pgqueuer_worker(url: str) -> None:
    async def work() -> None:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            manager = QueueManager(Queries(PsycopgDriver(conn)))

            @manager.entrypoint("noop")
            async def noop(job: Any) -> None:
                return None

            # max_concurrent_tasks must be at least twice batch_size (pgqueuer's rule).
            await manager.run(
                batch_size=CONCURRENCY // 2,
                max_concurrent_tasks=CONCURRENCY,
                mode=QueueExecutionMode.drain,
            )

    asyncio.run(work())


# --- shared -----------------------------------------------------------------------------------


def _drain(target: Target, worker: Callable[[str], None], left_sql: str) -> float:
    ctx = mp.get_context("spawn")
    children = [ctx.Process(target=worker, args=(target.libpq_url,)) for _ in range(PROCESSES)]
    for child in children:
        child.start()
    try:
        return time_drain(
            lambda: sql_scalar(target, left_sql),
            JOBS,
            timeout=TIMEOUT_S,
            alive=lambda: any(c.is_alive() for c in children),
        )
    finally:
        for child in children:
            child.join(30)
            if child.is_alive():
                child.kill()
