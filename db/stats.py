"""Read-only views of the queue for the CLI and the runner: counts, job listings, missed batches."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, func, select

from db.engine import read_tx, retry_locked, write_tx
from db.models import AuditLog, Entity, Mention, Model, Prompt, PromptJob, Response, utcnow
from db.operations import JobFilter
from db.queue import write_audit
from db.types import BatchCounts, JobStatus

J = PromptJob
MAX_LIST_LIMIT = 10_000


@dataclass(frozen=True)
class JobRow:
    id: int
    batch_key: str
    status: str
    prompt_id: int
    prompt_text: str
    model_id: int
    model_name: str
    run_index: int
    attempt_count: int
    max_attempts: int
    error_kind: str | None
    error_message: str | None
    scheduled_for: datetime
    started_at: datetime | None
    finished_at: datetime | None


def batch_counts(engine: Engine, batch_key: str) -> BatchCounts:
    """Jobs per status for one batch; every status is present (0 when none)."""
    with read_tx(engine) as conn:
        rows = conn.execute(
            select(J.status, func.count()).where(J.batch_key == batch_key).group_by(J.status)
        ).all()
    counts = {s.value: 0 for s in JobStatus}
    counts.update({status: int(n) for status, n in rows})
    return BatchCounts(batch_key, counts)


def pending_count(engine: Engine, *, due_within_seconds: float) -> int:
    """Jobs still to run: processing, or queued and due within the horizon (for --drain)."""
    horizon = utcnow() + timedelta(seconds=due_within_seconds)
    with read_tx(engine) as conn:
        processing = conn.scalar(
            select(func.count()).select_from(J).where(J.status == JobStatus.PROCESSING.value)
        )
        queued = conn.scalar(
            select(func.count())
            .select_from(J)
            .where(J.status == JobStatus.QUEUED.value, J.scheduled_for <= horizon)
        )
    return int(processing or 0) + int(queued or 0)


def list_jobs(
    engine: Engine, where: JobFilter, *, limit: int = 50, offset: int = 0
) -> list[JobRow]:
    """Jobs matching `where`, newest first, at most `limit` (<= 10,000)."""
    query = (
        select(
            J.id,
            J.batch_key,
            J.status,
            J.prompt_id,
            Prompt.text,
            J.model_id,
            Model.name,
            J.run_index,
            J.attempt_count,
            J.max_attempts,
            J.error_kind,
            J.error_message,
            J.scheduled_for,
            J.started_at,
            J.finished_at,
        )
        .join(Prompt, Prompt.id == J.prompt_id)
        .join(Model, Model.id == J.model_id)
        .where(where.clause())
        .order_by(J.id.desc())
        .limit(min(limit, MAX_LIST_LIMIT))
        .offset(offset)
    )
    with read_tx(engine) as conn:
        return [JobRow(*tuple(row)) for row in conn.execute(query)]


def missed_batches(engine: Engine, *, days: int = 30) -> list[str]:
    """Batch keys the scheduler found missing at start-up in the last `days` days (case C2)."""
    since = utcnow() - timedelta(days=days)
    with read_tx(engine) as conn:
        targets = conn.scalars(
            select(AuditLog.target).where(AuditLog.action == "batch_missed", AuditLog.at >= since)
        )
        return sorted({json.loads(t)["batch_key"] for t in targets})


def latest_batch_key(engine: Engine) -> str | None:
    """The newest batch key that has jobs, or None."""
    with read_tx(engine) as conn:
        return conn.scalar(select(func.max(J.batch_key)))


def record_missed_batches(engine: Engine, batch_keys: list[str]) -> None:
    """Audit each batch the runner was down for (case C2: never silently nothing)."""

    def run() -> None:
        with write_tx(engine) as conn:
            for key in batch_keys:
                write_audit(conn, "scheduler", "batch_missed", {"batch_key": key}, 0, utcnow())

    retry_locked(engine, run)


@dataclass(frozen=True)
class BrandCount:
    """A brand's visibility in a batch: answers mentioning it, their share of answers, and its
    share of all mentions (share of voice), with its average position (1 = first)."""

    name: str
    answers: int
    mention_rate: float
    share_of_voice: float
    avg_position: float


def top_brands(engine: Engine, batch_key: str, *, limit: int = 10) -> list[BrandCount]:
    """The most mentioned brands of a batch. Refusals are excluded from the answer count (C17)."""
    with read_tx(engine) as conn:
        answered = int(
            conn.scalar(
                select(func.count())
                .select_from(Response)
                .where(Response.batch_key == batch_key, Response.output_mode != "refusal")
            )
            or 0
        )
        rows = conn.execute(
            select(Entity.name, func.count(), func.avg(Mention.position))
            .join(Mention, Mention.entity_id == Entity.id)
            .join(Response, Response.id == Mention.response_id)
            .where(Response.batch_key == batch_key)
            .group_by(Entity.id, Entity.name)
            .order_by(func.count().desc(), Entity.name)
            .limit(limit)
        ).all()
        total = int(
            conn.scalar(
                select(func.count())
                .select_from(Mention)
                .join(Response, Response.id == Mention.response_id)
                .where(Response.batch_key == batch_key)
            )
            or 0
        )
    return [
        BrandCount(
            name, int(n), n / answered if answered else 0.0, n / total if total else 0.0, float(pos)
        )
        for name, n, pos in rows
    ]
