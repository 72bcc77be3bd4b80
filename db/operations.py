"""Operator actions: re-queue and cancel, by job ids or by filter, each audited.

Every UPDATE is conditional on the job's current status, so a stale selection or a double click
never acts on the wrong job or acts twice (cases C20, C21). Re-queue gives a fresh attempt budget by
raising max_attempts past attempt_count: attempt_count never goes back, so it stays a valid fence
token and job_attempts keeps every attempt's history (case C8).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, select, update

from db.engine import write_operation
from db.errors import InvalidInput
from db.filters import JobQuery
from db.models import PromptJob, utcnow
from db.queue import attempt_row, record_attempt, write_audit
from db.types import (
    CANCELLABLE_STATUSES,
    REQUEUEABLE_STATUSES,
    AttemptOutcome,
    AuditAction,
    JobStatus,
)

J = PromptJob


def requeue_jobs(
    engine: Engine,
    *,
    job_ids: Sequence[int] | None = None,
    where: JobQuery | None = None,
    fresh_attempts: int,
    deadline_at: datetime | None = None,
    actor: str,
) -> list[int]:
    """Move failed, cancelled or skipped jobs back to 'queued' with `fresh_attempts` more attempts
    and the new `deadline_at` (UTC; None: no deadline).

    Targets are `job_ids` or everything matching `where`; jobs in any other status are left alone.
    Returns the ids that changed; writes one audit_log row when any did.
    """
    now = utcnow()
    values: dict[str, object] = {
        "deadline_at": deadline_at,
        "status": JobStatus.QUEUED.value,
        "max_attempts": J.attempt_count + fresh_attempts,
        "scheduled_for": now,
        "finished_at": None,
        "started_at": None,
        "error_kind": None,
        "error_message": None,
        "locked_by": None,
        "lease_expires_at": None,
        "updated_at": now,
    }
    return _act(
        engine,
        AuditAction.REQUEUE,
        REQUEUEABLE_STATUSES,
        values,
        job_ids=job_ids,
        where=where,
        actor=actor,
    )


def cancel_jobs(
    engine: Engine,
    *,
    job_ids: Sequence[int] | None = None,
    where: JobQuery | None = None,
    actor: str,
) -> list[int]:
    """Cancel queued or processing jobs; a processing job's late result is then dropped (fence).

    Returns the ids that changed; writes one audit_log row when any did.
    """
    now = utcnow()
    values = {
        "status": JobStatus.CANCELLED.value,
        "finished_at": now,
        "locked_by": None,
        "lease_expires_at": None,
        "updated_at": now,
        "error_kind": None,
        "error_message": f"cancelled by {actor}",
    }
    return _act(
        engine,
        AuditAction.CANCEL,
        CANCELLABLE_STATUSES,
        values,
        job_ids=job_ids,
        where=where,
        actor=actor,
    )


def _act(
    engine: Engine,
    action: AuditAction,
    allowed: frozenset[JobStatus],
    values: dict[str, object],
    *,
    job_ids: Sequence[int] | None,
    where: JobQuery | None,
    actor: str,
) -> list[int]:
    if job_ids is not None and where is None:
        return _update_jobs(engine, J.id.in_(list(job_ids)), None, action, allowed, values, actor)
    if where is not None and job_ids is None:
        return _update_jobs(
            engine, where.clause(), where.describe(), action, allowed, values, actor
        )
    raise InvalidInput(f"{action}: give job ids or a filter, not both or neither")


@write_operation
def _update_jobs(
    conn: Connection,
    target: Any,
    detail: dict[str, object] | None,
    action: AuditAction,
    allowed: frozenset[JobStatus],
    values: dict[str, object],
    actor: str,
) -> list[int]:
    """Apply `values` to the targeted jobs still in an `allowed` status; audit what changed
    (`detail`: the filter that chose them; None: they were chosen by id, audit the ids)."""
    statuses = [s.value for s in allowed]
    # Lock the targets first (claims skip locked rows), so a job held by a worker now is known
    # as such: its cancelled claim gets its attempt row (issue 12: it had none).
    held = conn.execute(
        select(J.id, J.attempt_count, J.started_at, J.locked_by)
        .where(target, J.status.in_(statuses), J.status == JobStatus.PROCESSING.value)
        .with_for_update()
    ).all()
    stmt = update(J).where(target, J.status.in_(statuses)).values(**values).returning(J.id)
    changed = sorted(conn.scalars(stmt))
    if action is AuditAction.CANCEL:
        for job in held:
            record_attempt(
                conn,
                attempt_row(
                    job.id,
                    job.attempt_count,
                    worker_id=job.locked_by,
                    started_at=job.started_at,
                    finished_at=utcnow(),
                    outcome=AttemptOutcome.CANCELLED,
                    error_kind=None,
                    error_message=f"cancelled by {actor}",
                ),
            )
    if changed:
        audited = {"job_ids": changed} if detail is None else detail
        write_audit(conn, actor, action, audited, len(changed), utcnow())
    return changed
