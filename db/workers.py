"""The workers registry: one row per worker process, refreshed by its heartbeat."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine, insert, select, update

from db.engine import read_tx, write_operation
from db.models import Worker, utcnow


@dataclass(frozen=True)
class WorkerInfo:
    """Identity of a worker process, as registered."""

    id: str
    runner_id: str
    hostname: str
    pid: int
    processes: int
    concurrency: int  # model calls in flight per process


@dataclass(frozen=True)
class WorkerRow(WorkerInfo):
    """A worker's registry row: its identity plus what its heartbeat keeps current."""

    in_flight: int
    started_at: datetime
    last_seen_at: datetime
    stopped_at: datetime | None


@write_operation
def register_worker(conn: Connection, info: WorkerInfo) -> None:
    """Insert the worker's registry row."""
    now = utcnow()
    conn.execute(
        insert(Worker).values(
            id=info.id,
            runner_id=info.runner_id,
            hostname=info.hostname,
            pid=info.pid,
            processes=info.processes,
            concurrency=info.concurrency,
            in_flight=0,
            started_at=now,
            last_seen_at=now,
        )
    )


@write_operation
def touch_worker(conn: Connection, worker_id: str, in_flight: int) -> None:
    """Refresh last_seen_at and the in-flight count."""
    conn.execute(
        update(Worker)
        .where(Worker.id == worker_id)
        .values(last_seen_at=utcnow(), in_flight=in_flight)
    )


@write_operation
def stop_worker(conn: Connection, worker_id: str) -> None:
    """Mark the worker stopped."""
    now = utcnow()
    conn.execute(
        update(Worker)
        .where(Worker.id == worker_id)
        .values(stopped_at=now, last_seen_at=now, in_flight=0)
    )


def list_workers(
    engine: Engine, *, include_stopped: bool = False, limit: int = 500
) -> list[WorkerRow]:
    """Registered workers, most recently seen first."""
    query = (
        select(
            Worker.id,
            Worker.runner_id,
            Worker.hostname,
            Worker.pid,
            Worker.processes,
            Worker.concurrency,
            Worker.in_flight,
            Worker.started_at,
            Worker.last_seen_at,
            Worker.stopped_at,
        )
        .order_by(Worker.last_seen_at.desc())
        .limit(limit)
    )
    if not include_stopped:
        query = query.where(Worker.stopped_at.is_(None))
    with read_tx(engine) as conn:
        return [WorkerRow(**row._mapping) for row in conn.execute(query)]
