"""Recording a claimed job's outcome: success with its response and mentions, retry, or failure.

Each function is ONE transaction that first runs the fenced status update; when the fence matches
nothing (lease lost, job cancelled) the transaction writes nothing and the caller is told.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from functools import cache
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Select,
    bindparam,
    cast,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from db.engine import is_sqlite, retry_locked, write_tx
from db.models import Entity, JobAttempt, Mention, Model, PromptJob, Response, utcnow
from db.queue import fence, record_attempt
from db.types import AnswerRecord, ClaimedJob, FailureRecord, JobStatus, MentionRecord

log = logging.getLogger(__name__)

J = PromptJob


class FailureOutcome(StrEnum):
    """What record_failure did with the job."""

    RETRY = "retry"  # queued again after the backoff
    FAILED = "failed"  # permanent error or attempts spent
    DROPPED = "dropped"  # the fence matched nothing: the worker no longer holds the job


def complete_job(engine: Engine, job: ClaimedJob, answer: AnswerRecord, cost_usd: float | None
                 ) -> bool:
    """Save the answer, its mentions, the attempt and status 'succeeded' in one transaction.

    Returns False (and writes nothing) when the worker no longer holds the job.
    """
    def run() -> bool:
        with write_tx(engine) as conn:
            now = utcnow()
            response_id = _complete(conn, job, answer, cost_usd, now)
            if response_id is None:
                return False
            _insert_mentions(conn, response_id, answer.mentions, now)
            return True
    return retry_locked(engine, run)


def _complete(conn: Connection, job: ClaimedJob, answer: AnswerRecord, cost_usd: float | None,
              now: datetime) -> int | None:
    """The fenced 'succeeded' update, the response row and the attempt row; the response id, or
    None when the fence matched nothing (then nothing was written)."""
    if not is_sqlite(conn):  # one round trip instead of three (bench/RESULTS.md, item 2)
        return conn.scalar(_complete_statement_pg(), _complete_params(job, answer, cost_usd, now))
    done = conn.execute(update(J).where(fence(job.id, job.worker_id, job.attempt)).values(
        status=JobStatus.SUCCEEDED.value, finished_at=now, updated_at=now,
        error_kind=None, error_message=None, locked_by=None, lease_expires_at=None))
    if done.rowcount != 1:
        return None
    response_id = _insert_response(conn, job, answer, cost_usd, now)
    record_attempt(conn, job.id, job.attempt, worker_id=job.worker_id,
                    started_at=job.started_at, finished_at=now, outcome="succeeded",
                    error_kind=None, error_message=None, latency_ms=answer.latency_ms,
                    request_id=answer.request_id)
    return response_id


def _param(name: str, column: Any) -> Any:
    """A named bind parameter typed like `column` (cast: an untyped NULL in a SELECT is text)."""
    return cast(bindparam(f"p_{name}", type_=column.type), column.type)


@cache
def _complete_statement_pg() -> Select[int]:
    """complete_job's three writes as one PostgreSQL statement (data-modifying CTEs, which always
    run to completion): `done` is the fenced update; when it matches nothing the two inserts read
    no row and the statement returns none. Otherwise it returns the response id.

    Built once with named parameters (`_complete_params`): building it per call cost more Python
    time than running it (bench/RESULTS.md, item 2).
    """
    R, A = Response, JobAttempt
    done = (update(J).where(J.id == bindparam("p_job_id"),
                            J.status == JobStatus.PROCESSING.value,
                            J.locked_by == bindparam("p_worker_id"),
                            J.attempt_count == bindparam("p_attempt"))
            .values(status=JobStatus.SUCCEEDED.value, finished_at=_param("now", J.finished_at),
                    updated_at=_param("now", J.updated_at), error_kind=None, error_message=None,
                    locked_by=None, lease_expires_at=None)
            .returning(J.id).cte("done"))
    response_columns = ["prompt_id", "model_id", "batch_key", "run_index", "answer", "raw_body",
                        "output_mode", "finish_reason", "prompt_tokens", "completion_tokens",
                        "cost", "latency_ms", "request_id"]
    response = (insert(R).from_select(
        ["job_id", *response_columns, "created_at"],
        select(done.c.id, *(_param(c, getattr(R, c)) for c in response_columns),
               _param("now", R.created_at)))
        .returning(R.id).cte("response"))
    attempt = insert(A).from_select(
        ["job_id", "attempt", "worker_id", "started_at", "finished_at", "outcome", "latency_ms",
         "request_id"],
        select(done.c.id, _param("attempt", A.attempt), _param("worker_id", A.worker_id),
               _param("started_at", A.started_at), _param("now", A.finished_at),
               literal("succeeded", A.outcome.type), _param("latency_ms", A.latency_ms),
               _param("request_id", A.request_id))
    ).cte("attempt")
    return select(response.c.id).add_cte(attempt)


def _complete_params(job: ClaimedJob, answer: AnswerRecord, cost_usd: float | None,
                     now: datetime) -> dict[str, Any]:
    values = {"job_id": job.id, "worker_id": job.worker_id, "attempt": job.attempt, "now": now,
              "prompt_id": job.prompt_id, "model_id": job.model_id, "batch_key": job.batch_key,
              "run_index": job.run_index, "answer": answer.answer, "raw_body": answer.raw_body,
              "output_mode": answer.output_mode.value, "finish_reason": answer.finish_reason,
              "prompt_tokens": answer.prompt_tokens,
              "completion_tokens": answer.completion_tokens, "cost": cost_usd,
              "latency_ms": answer.latency_ms, "request_id": answer.request_id,
              "started_at": job.started_at}
    return {f"p_{name}": value for name, value in values.items()}


def record_failure(engine: Engine, job: ClaimedJob, failure: FailureRecord,
                   backoff_seconds: float) -> FailureOutcome:
    """Record a failed attempt: back to 'queued' after `backoff_seconds` when the error is transient
    and attempts are left, else 'failed'. Fenced like every write for a claimed job.
    """
    retry = failure.kind.transient and job.attempt < job.max_attempts
    outcome = FailureOutcome.RETRY if retry else FailureOutcome.FAILED

    def run() -> FailureOutcome:
        with write_tx(engine) as conn:
            now = utcnow()
            values = {"status": JobStatus.QUEUED.value if retry else JobStatus.FAILED.value,
                      "error_kind": failure.kind.value, "error_message": failure.message[:4000],
                      "locked_by": None, "lease_expires_at": None, "updated_at": now,
                      "scheduled_for": now + timedelta(seconds=backoff_seconds) if retry else now,
                      "finished_at": None if retry else now}
            done = conn.execute(update(J).where(fence(job.id, job.worker_id, job.attempt))
                                .values(**values))
            if done.rowcount != 1:
                return FailureOutcome.DROPPED
            record_attempt(conn, job.id, job.attempt, worker_id=job.worker_id,
                            started_at=job.started_at, finished_at=now, outcome=outcome.value,
                            error_kind=failure.kind.value, error_message=failure.message[:4000],
                            latency_ms=failure.latency_ms, request_id=failure.request_id)
            return outcome
    return retry_locked(engine, run)


def mark_json_schema_unsupported(engine: Engine, model_id: int) -> None:
    """Remember that a model's provider rejects json_schema, so later calls go straight to the
    fallback (case C16)."""
    def run() -> None:
        with write_tx(engine) as conn:
            conn.execute(update(Model).where(Model.id == model_id)
                         .values(supports_json_schema=False, updated_at=utcnow()))
    retry_locked(engine, run)


def _insert_response(conn: Connection, job: ClaimedJob, answer: AnswerRecord,
                     cost_usd: float | None, now: object) -> int:
    stmt = insert(Response).values(
        job_id=job.id, prompt_id=job.prompt_id, model_id=job.model_id, batch_key=job.batch_key,
        run_index=job.run_index, answer=answer.answer, raw_body=answer.raw_body,
        output_mode=answer.output_mode.value, finish_reason=answer.finish_reason,
        prompt_tokens=answer.prompt_tokens, completion_tokens=answer.completion_tokens,
        cost=cost_usd, latency_ms=answer.latency_ms, request_id=answer.request_id,
        created_at=now).returning(Response.id)
    return int(conn.execute(stmt).scalar_one())


def _insert_mentions(conn: Connection, response_id: int, mentions: Sequence[MentionRecord],
                     now: object) -> None:
    if not mentions:
        return
    entity_ids = ensure_entities(conn, {m.key: m.display for m in mentions}, now)
    conn.execute(insert(Mention), [
        {"response_id": response_id, "entity_id": entity_ids[m.key], "raw_name": m.raw_name[:300],
         "position": m.position, "char_offset": m.char_offset} for m in mentions])


def ensure_entities(conn: Connection, names_by_key: dict[str, str], now: object) -> dict[str, int]:
    """Entity ids for matching keys, creating the missing ones (sorted keys: no deadlock)."""
    found = _entity_ids(conn, list(names_by_key))
    missing = sorted(set(names_by_key) - set(found))
    if missing:
        dialect_insert = sqlite.insert if is_sqlite(conn) else postgresql.insert
        rows = [{"key": k, "name": names_by_key[k][:300], "created_at": now} for k in missing]
        conn.execute(dialect_insert(Entity).on_conflict_do_nothing(index_elements=["key"]), rows)
        found |= _entity_ids(conn, missing)
    return found


def _entity_ids(conn: Connection, keys: list[str]) -> dict[str, int]:
    rows = conn.execute(select(Entity.key, Entity.id).where(Entity.key.in_(keys))).all()
    return {row.key: row.id for row in rows}
