"""Operator actions: re-queue and cancel, by job ids or by filter, each audited.

Every UPDATE is conditional on the job's current status, so a stale selection or a double click
never acts on the wrong job or acts twice (cases C20, C21). Re-queue gives a fresh attempt budget by
raising max_attempts past attempt_count: attempt_count never goes back, so it stays a valid fence
token and job_attempts keeps every attempt's history (case C8).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from sqlalchemy import ColumnElement, Engine, and_, true, update

from db.engine import retry_locked, write_tx
from db.errors import InvalidInput
from db.models import PromptJob, utcnow
from db.queue import write_audit
from db.types import CANCELLABLE_STATUSES, REQUEUEABLE_STATUSES, JobStatus

J = PromptJob


@dataclass(frozen=True)
class JobFilter:
    """Which jobs an action or a listing covers; None = any."""

    status: str | None = None
    batch_key: str | None = None
    model_id: int | None = None
    prompt_id: int | None = None
    error_kind: str | None = None
    error_message: str | None = None  # exact message (a Failures group)

    def clause(self) -> ColumnElement[bool]:
        parts = [
            col == value
            for col, value in (
                (J.status, self.status),
                (J.batch_key, self.batch_key),
                (J.model_id, self.model_id),
                (J.prompt_id, self.prompt_id),
                (J.error_kind, self.error_kind),
                (J.error_message, self.error_message),
            )
            if value is not None
        ]
        return and_(true(), *parts)

    def describe(self) -> dict[str, object]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def requeue_jobs(
    engine: Engine,
    *,
    job_ids: Sequence[int] | None = None,
    where: JobFilter | None = None,
    fresh_attempts: int,
    actor: str,
) -> list[int]:
    """Move failed, cancelled or skipped jobs back to 'queued' with `fresh_attempts` more attempts.

    Targets are `job_ids` or everything matching `where`; jobs in any other status are left alone.
    Returns the ids that changed; writes one audit_log row when any did.
    """
    now = utcnow()
    values = {
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
        engine, "requeue", REQUEUEABLE_STATUSES, values, job_ids=job_ids, where=where, actor=actor
    )


def cancel_jobs(
    engine: Engine,
    *,
    job_ids: Sequence[int] | None = None,
    where: JobFilter | None = None,
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
        engine, "cancel", CANCELLABLE_STATUSES, values, job_ids=job_ids, where=where, actor=actor
    )


def _act(
    engine: Engine,
    action: str,
    allowed: frozenset[JobStatus],
    values: dict[str, object],
    *,
    job_ids: Sequence[int] | None,
    where: JobFilter | None,
    actor: str,
) -> list[int]:
    if (job_ids is None) == (where is None):
        raise InvalidInput(f"{action}: give job ids or a filter, not both or neither")
    target = J.id.in_(list(job_ids)) if job_ids is not None else where.clause()  # type: ignore[union-attr]
    statuses = [s.value for s in allowed]

    def run() -> list[int]:
        with write_tx(engine) as conn:
            stmt = update(J).where(target, J.status.in_(statuses)).values(**values).returning(J.id)
            changed = sorted(conn.scalars(stmt))
            if changed:
                detail = {"job_ids": changed} if job_ids is not None else where.describe()  # type: ignore[union-attr]
                write_audit(conn, actor, action, detail, len(changed), utcnow())
            return changed

    return retry_locked(engine, run)
