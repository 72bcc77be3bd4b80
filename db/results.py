"""Recording claimed jobs' outcomes: a success with its response and mentions, a retry, or a
failure, for many jobs in ONE transaction (a worker's group commit, runner.worker.group_commit).

Every write for a job runs its fenced status update first; when the fence matches nothing (lease
lost, job cancelled) nothing is written for that job and the caller is told (Recorded.DROPPED).
One exception keeps a paid answer: a late answer whose lease was taken back (its attempt row
`lost`) while nobody has claimed the job since is saved as that attempt's success (`_adopt_late`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, insert, select, text, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite

from db import budgets, pacing
from db.budgets import BudgetPolicy
from db.engine import is_sqlite, write_operation
from db.models import Entity, JobAttempt, Model, PromptJob, Response, utcnow
from db.queue import attempt_row, claim_jobs_in, fence, record_attempt, usage_columns
from db.types import (
    AttemptOutcome,
    CallUsage,
    ClaimedJob,
    Completion,
    CostSource,
    ErrorKind,
    Failure,
    JobStatus,
    MentionRecord,
    Outcome,
    Recorded,
)

log = logging.getLogger(__name__)

J = PromptJob


@write_operation
def write_outcomes(
    conn: Connection, outcomes: Sequence[Outcome], *, budget: BudgetPolicy | None = None
) -> list[Recorded]:
    """Record successes and failures in ONE transaction; one Recorded per outcome, in order.

    All or nothing: an error (e.g. IntegrityError for a bad mention) rolls back every outcome in
    the call. PostgreSQL writes the status updates, responses and attempt rows of all successes
    in one statement (bench/RESULTS.md, item 2); SQLite runs them per job. Raises
    DatabaseUnavailable when the database is away (nothing written). Every paid call's USD is
    added to its model's day (db.budgets), a dropped result's included: it was paid for.
    """
    return _write_in(conn, outcomes, utcnow(), budget or BudgetPolicy())


@write_operation
def write_outcomes_and_claim(
    conn: Connection,
    outcomes: Sequence[Outcome],
    worker_id: str,
    limit: int,
    *,
    lease_seconds: float,
    budget: BudgetPolicy | None = None,
) -> tuple[list[Recorded], list[ClaimedJob]]:
    """write_outcomes, then claim up to `limit` jobs for `worker_id`, in ONE transaction: a busy
    worker acknowledges its finished jobs and takes their replacements in one commit.

    The outcomes are written before the claim, so a capped model's finished jobs free their
    slots for it, and a retry due now may be claimed again. All or nothing: an error claims
    nothing either.
    """
    now = utcnow()
    policy = budget or BudgetPolicy()
    recorded = _write_in(conn, outcomes, now, policy) if outcomes else []
    claimed = claim_jobs_in(
        conn, worker_id, limit, lease_seconds=lease_seconds, now=now, budget=budget
    )
    return recorded, claimed


def _write_in(
    conn: Connection, outcomes: Sequence[Outcome], now: datetime, budget: BudgetPolicy
) -> list[Recorded]:
    completions = [o for o in outcomes if isinstance(o, Completion)]
    saved = iter(_complete_in(conn, completions, now) if completions else [])
    recorded = [
        (Recorded.SUCCEEDED if next(saved) else Recorded.DROPPED)
        if isinstance(o, Completion)
        else _record_failure(conn, o, now)
        for o in outcomes
    ]
    for model_id in budgets.record_spend(conn, _spend(outcomes), now, budget):
        log.warning(
            "model %d paused: its daily budget left cannot cover one more job at its worst case",
            model_id,
            extra={"action": "model_paused_budget", "model_id": model_id},
        )
    return recorded


def _spend(outcomes: Sequence[Outcome]) -> dict[int, float]:
    """USD per model of the outcomes' paid calls."""
    spend: dict[int, float] = {}
    for o in outcomes:
        usage = o.usage if isinstance(o, Completion) else o.failure.usage
        if usage is not None and usage.cost_usd:
            spend[o.job.model_id] = spend.get(o.job.model_id, 0.0) + usage.cost_usd
    return spend


def _complete_in(conn: Connection, completions: Sequence[Completion], now: datetime) -> list[bool]:
    saved = (
        _complete_sqlite(conn, completions, now)
        if is_sqlite(conn)
        else _complete_pg(conn, completions, now)
    )
    if late := [c for c in completions if (c.job.id, c.job.attempt) not in saved]:
        saved.update(_adopt_late(conn, late, now))
    keys = [(c.job.id, c.job.attempt) for c in completions]  # a stale attempt of a job can sit
    # Only a job claimed while its model was failing (a probe) tells that the key works now: an
    # older call may have been admitted before the key was revoked.
    _reset_failure_streaks(conn, {c.job.model_id for c in completions if c.job.failure_streak})
    pacing.concurrency_after_answers(conn, Counter(c.job.model_id for c in completions))
    _insert_mentions(
        conn,
        [
            (saved[key], c.answer.mentions)  # next to its current one
            for key, c in zip(keys, completions, strict=True)
            if key in saved
        ],
        now,
    )
    return [key in saved for key in keys]


# The fenced 'succeeded' updates, the responses and the attempt rows of many jobs in one statement:
# data-modifying CTEs over unnest()ed arrays. A job whose fence matches nothing is not in `done`,
# so nothing is inserted for it. One fixed text, whatever the batch size: prepared once per
# connection by psycopg.
_COMPLETE_PG = text("""
WITH input AS (
    SELECT * FROM unnest(
        CAST(:job_id AS bigint[]), CAST(:worker_id AS text[]), CAST(:attempt AS integer[]),
        CAST(:started_at AS timestamptz[]), CAST(:answer AS text[]), CAST(:raw_body AS text[]),
        CAST(:output_mode AS text[]), CAST(:finish_reason AS text[]),
        CAST(:prompt_tokens AS integer[]), CAST(:completion_tokens AS integer[]),
        CAST(:cost AS double precision[]), CAST(:cost_source AS text[]),
        CAST(:latency_ms AS integer[]), CAST(:request_id AS text[]), CAST(:calls AS integer[]),
        CAST(:spent_prompt AS integer[]), CAST(:spent_completion AS integer[]),
        CAST(:spent_cost AS double precision[]), CAST(:spent_source AS text[]),
        CAST(:request_ids AS text[])
    ) AS t(job_id, worker_id, attempt, started_at, answer, raw_body, output_mode, finish_reason,
           prompt_tokens, completion_tokens, cost, cost_source, latency_ms, request_id, calls,
           spent_prompt, spent_completion, spent_cost, spent_source, request_ids)
), done AS (
    UPDATE prompt_jobs AS j
    SET status = 'succeeded', finished_at = :now, updated_at = :now, error_kind = NULL,
        error_message = NULL, locked_by = NULL, lease_expires_at = NULL
    FROM input AS i
    WHERE j.id = i.job_id AND j.status = 'processing' AND j.locked_by = i.worker_id
      AND j.attempt_count = i.attempt
    RETURNING j.id, j.attempt_count, j.prompt_id, j.model_id, j.batch_key, j.run_index
), attempt AS (
    INSERT INTO job_attempts (job_id, attempt, worker_id, started_at, finished_at, outcome,
                              latency_ms, request_id, calls, prompt_tokens, completion_tokens,
                              cost, cost_source)
    SELECT i.job_id, i.attempt, i.worker_id, i.started_at, :now, 'succeeded', i.latency_ms,
           i.request_ids, i.calls, i.spent_prompt, i.spent_completion, i.spent_cost,
           i.spent_source
    FROM input AS i JOIN done AS d ON d.id = i.job_id AND d.attempt_count = i.attempt
), response AS (
    INSERT INTO responses (job_id, prompt_id, model_id, batch_key, run_index, answer, raw_body,
                       output_mode, finish_reason, prompt_tokens, completion_tokens, cost,
                       cost_source, latency_ms, request_id, created_at)
    SELECT d.id, d.prompt_id, d.model_id, d.batch_key, d.run_index, i.answer, i.raw_body,
           i.output_mode, i.finish_reason, i.prompt_tokens, i.completion_tokens, i.cost,
           i.cost_source, i.latency_ms, i.request_id, :now
    FROM input AS i JOIN done AS d ON d.id = i.job_id AND d.attempt_count = i.attempt
    RETURNING job_id, id
)
SELECT r.job_id, d.attempt_count AS attempt, r.id
FROM response AS r JOIN done AS d ON d.id = r.job_id
""")


def _complete_pg(
    conn: Connection, completions: Sequence[Completion], now: datetime
) -> dict[tuple[int, int], int]:
    """Response id by (job id, attempt) for the completions whose fence matched."""
    jobs = [c.job for c in completions]
    answers = [c.answer for c in completions]
    params = {
        "now": now,
        "job_id": [j.id for j in jobs],
        "worker_id": [j.worker_id for j in jobs],
        "attempt": [j.attempt for j in jobs],
        "started_at": [j.started_at for j in jobs],
        "answer": [a.answer for a in answers],
        "raw_body": [a.raw_body for a in answers],
        "output_mode": [a.output_mode.value for a in answers],
        "finish_reason": [a.finish_reason for a in answers],
        "prompt_tokens": [a.prompt_tokens for a in answers],
        "completion_tokens": [a.completion_tokens for a in answers],
        "cost": [a.cost_usd for a in answers],
        "cost_source": [_source(a.cost_source) for a in answers],
        "latency_ms": [a.latency_ms for a in answers],
        "request_id": [a.request_id for a in answers],
        "calls": [c.usage.calls for c in completions],
        "spent_prompt": [c.usage.prompt_tokens for c in completions],
        "spent_completion": [c.usage.completion_tokens for c in completions],
        "spent_cost": [c.usage.cost_usd for c in completions],
        "spent_source": [_source(c.usage.cost_source) for c in completions],
        "request_ids": [c.usage.request_id for c in completions],
    }
    return {(row.job_id, row.attempt): row.id for row in conn.execute(_COMPLETE_PG, params)}


def _complete_sqlite(
    conn: Connection, completions: Sequence[Completion], now: datetime
) -> dict[tuple[int, int], int]:
    """Response id by (job id, attempt) for the completions whose fence matched (SQLite: three
    statements for the batch, each built once: the fenced updates with RETURNING, the responses,
    the attempt rows; statements built per job were two fifths of a SQLite worker's CPU at
    1,024 in flight, bench/ item 3)."""
    fences = [(c.job.id, c.job.worker_id, c.job.attempt) for c in completions]
    done = conn.execute(
        update(J)
        .where(
            J.status == JobStatus.PROCESSING.value,
            tuple_(J.id, J.locked_by, J.attempt_count).in_(fences),
        )
        .values(_succeeded(now))
        .returning(J.id, J.attempt_count)
    ).all()
    matched = {(row.id, row.attempt_count) for row in done}
    kept = [c for c in completions if (c.job.id, c.job.attempt) in matched]
    if not kept:
        return {}
    rows = conn.execute(
        insert(Response).returning(Response.job_id, Response.id),
        [_response_row(c, now) for c in kept],
    ).all()
    conn.execute(insert(JobAttempt), [_attempt_row(c, now) for c in kept])
    response_ids = {row.job_id: row.id for row in rows}
    return {(c.job.id, c.job.attempt): response_ids[c.job.id] for c in kept}


def _succeeded(now: datetime) -> dict[str, Any]:
    """The columns of a job that succeeded `now` (its claim released)."""
    return {
        "status": JobStatus.SUCCEEDED.value,
        "finished_at": now,
        "updated_at": now,
        "error_kind": None,
        "error_message": None,
        "locked_by": None,
        "lease_expires_at": None,
    }


def _attempt_row(c: Completion, now: datetime) -> dict[str, Any]:
    job = c.job
    return attempt_row(
        job.id,
        job.attempt,
        worker_id=job.worker_id,
        started_at=job.started_at,
        finished_at=now,
        outcome=AttemptOutcome.SUCCEEDED,
        error_kind=None,
        error_message=None,
        latency_ms=c.answer.latency_ms,
        usage=c.usage,
    )


def _succeed(conn: Connection, where: Any, now: datetime) -> bool:
    """Mark the one job matching `where` succeeded (its claim released); whether it matched."""
    return conn.execute(update(J).where(where).values(_succeeded(now))).rowcount == 1


def _adopt_late(
    conn: Connection, completions: Sequence[Completion], now: datetime
) -> dict[tuple[int, int], int]:
    """Response id by (job id, attempt) for the late answers kept: their lease was taken back
    (expired, the worker frozen or cut off from the database past it: the attempt row says
    `lost`) and the job is still queued with nobody's claim since (attempt_count unchanged).
    The answer is paid and still the job's, so the job succeeds with it and the lost attempt
    becomes its success, instead of paying for the call again (bench/soak.py: a runner frozen
    past its lease lost every answer it held). A cancelled, failed or re-claimed job is not
    touched. Per job (rare): the batch statements above cover the fenced common case."""
    saved = {}
    for c in completions:
        job = c.job
        taken_back = (
            select(JobAttempt.id)
            .where(
                JobAttempt.job_id == job.id,
                JobAttempt.attempt == job.attempt,
                JobAttempt.outcome == AttemptOutcome.LOST.value,
            )
            .exists()
        )
        unclaimed = and_(
            J.id == job.id,
            J.status == JobStatus.QUEUED.value,
            J.locked_by.is_(None),
            J.attempt_count == job.attempt,
        )
        if not _succeed(conn, and_(unclaimed, taken_back), now):
            continue
        conn.execute(
            update(JobAttempt)
            .where(JobAttempt.job_id == job.id, JobAttempt.attempt == job.attempt)
            .values(
                worker_id=job.worker_id,
                finished_at=now,
                outcome=AttemptOutcome.SUCCEEDED.value,
                error_kind=None,
                error_message=None,
                latency_ms=c.answer.latency_ms,
                **usage_columns(c.usage),
            )
        )
        saved[(job.id, job.attempt)] = _insert_response(conn, c, now)
        log.warning(
            "job %d: a late answer kept (its lease had been taken back, nobody claimed it since)",
            job.id,
            extra={"action": "late_answer_kept", "job_id": job.id},
        )
    return saved


def _source(source: CostSource | None) -> str | None:
    return source.value if source is not None else None


def _record_failure(conn: Connection, outcome: Failure, now: datetime) -> Recorded:
    """A failed attempt, fenced like every write for a claimed job: deferred (not served, or a
    model-level error while pausing is on: no attempt spent), retried (transient, attempts
    left), or failed. A deferral or retry due after the job's deadline fails it ('deadline')."""
    job, failure = outcome.job, outcome.failure
    kind, message = failure.kind, failure.message[:4000]
    model_level = kind.model_level and outcome.pause_after > 0
    deferred = outcome.defers
    again = deferred or (kind.transient and job.attempt < job.max_attempts)
    due = now + timedelta(seconds=outcome.retry_in_seconds)
    if again and job.deadline_at is not None and due >= job.deadline_at:
        again = deferred = False
        job_kind, job_message = ErrorKind.DEADLINE, f"batch deadline reached: {message}"[:4000]
    else:
        job_kind, job_message = kind, message
    values: dict[str, object] = {
        "status": JobStatus.QUEUED.value if again else JobStatus.FAILED.value,
        "error_kind": job_kind.value,
        "error_message": job_message,
        "locked_by": None,
        "lease_expires_at": None,
        "updated_at": now,
        "scheduled_for": due if again else now,
        "finished_at": None if again else now,
    }
    if deferred:  # the claim spent no attempt
        values |= {"max_attempts": J.max_attempts + 1, "deferrals": J.deferrals + 1}
    done = conn.execute(update(J).where(fence(job.id, job.worker_id, job.attempt)).values(values))
    if done.rowcount != 1:
        return Recorded.DROPPED
    attempt = (
        AttemptOutcome.DEFERRED
        if deferred
        else (AttemptOutcome.RETRY if again else AttemptOutcome.FAILED)
    )
    record_attempt(
        conn,
        attempt_row(
            job.id,
            job.attempt,
            worker_id=job.worker_id,
            started_at=job.started_at,
            finished_at=now,
            outcome=attempt,
            error_kind=kind.value,
            error_message=message,
            latency_ms=failure.latency_ms,
            usage=failure.usage or CallUsage(request_ids=_ids(failure.request_id)),
            raw_body=failure.raw_body,
        ),
    )
    if kind is ErrorKind.RATE_LIMITED:
        pacing.concurrency_after_429(conn, job.model_id, now)
    if model_level and _count_model_failure(conn, job.model_id, kind, message, outcome, now):
        return Recorded.PAUSED
    return {
        AttemptOutcome.DEFERRED: Recorded.DEFERRED,
        AttemptOutcome.RETRY: Recorded.RETRY,
    }.get(attempt, Recorded.FAILED)


def _count_model_failure(
    conn: Connection, model_id: int, kind: ErrorKind, message: str, outcome: Failure, now: datetime
) -> bool:
    """One more model-level failure in the model's streak; pause the model when the streak
    reaches `outcome.pause_after`. True when this failure paused it."""
    streak = conn.execute(
        update(Model)
        .where(Model.id == model_id)
        .values(failure_streak=Model.failure_streak + 1)
        .returning(Model.failure_streak, Model.paused_at)
    ).one()
    if streak.failure_streak < outcome.pause_after or streak.paused_at is not None:
        return False
    reason = f"{kind.value}: {message}"[:500]
    conn.execute(
        update(Model)
        .where(Model.id == model_id)
        .values(paused_at=now, paused_reason=reason, updated_at=now)
    )
    return True


def _reset_failure_streaks(conn: Connection, model_ids: set[int]) -> None:
    """A probe's answer came back: the models' keys, credits and ids work; streaks restart."""
    if not model_ids:
        return
    conn.execute(
        update(Model)
        .where(Model.id.in_(sorted(model_ids)), Model.failure_streak > 0)
        .values(failure_streak=0)
    )


def _ids(request_id: str | None) -> tuple[str, ...]:
    return (request_id,) if request_id else ()


@write_operation
def mark_json_schema_unsupported(conn: Connection, model_id: int) -> None:
    """Remember that a model's provider rejects json_schema, so later calls go straight to the
    fallback (case C16)."""
    conn.execute(
        update(Model)
        .where(Model.id == model_id)
        .values(supports_json_schema=False, updated_at=utcnow())
    )


def _insert_response(conn: Connection, c: Completion, now: datetime) -> int:
    stmt = insert(Response).values(_response_row(c, now)).returning(Response.id)
    return int(conn.execute(stmt).scalar_one())


def _response_row(c: Completion, now: datetime) -> dict[str, Any]:
    job, answer = c.job, c.answer
    return {
        "job_id": job.id,
        "prompt_id": job.prompt_id,
        "model_id": job.model_id,
        "batch_key": job.batch_key,
        "run_index": job.run_index,
        "answer": answer.answer,
        "raw_body": answer.raw_body,
        "output_mode": answer.output_mode.value,
        "finish_reason": answer.finish_reason,
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "cost": answer.cost_usd,
        "cost_source": _source(answer.cost_source),
        "latency_ms": answer.latency_ms,
        "request_id": answer.request_id,
        "created_at": now,
    }


def _insert_mentions(
    conn: Connection, saved: Sequence[tuple[int, Sequence[MentionRecord]]], now: object
) -> None:
    """The mentions of saved responses, given as (response id, mentions) pairs: one entity lookup
    and one multi-row insert for all of them."""
    names = {m.key: m.display for _, mentions in saved for m in mentions}
    if not names:
        return
    entity_ids = ensure_entities(conn, names, now)
    rows = [
        (response_id, entity_ids[m.key], m.raw_name[:300], m.position, m.char_offset)
        for response_id, mentions in saved
        for m in mentions
    ]
    if is_sqlite(conn):  # the driver's executemany over plain tuples
        conn.exec_driver_sql(_INSERT_MENTIONS_SQLITE, rows)
        return
    columns = [list(column) for column in zip(*rows, strict=True)]
    conn.execute(_INSERT_MENTIONS_PG, dict(zip(_MENTION_COLUMNS, columns, strict=True)))


_MENTION_COLUMNS = ("response_id", "entity_id", "raw_name", "position", "char_offset")
_INSERT_MENTIONS_SQLITE = (
    "INSERT INTO mentions (response_id, entity_id, raw_name, position, char_offset) "
    "VALUES (?, ?, ?, ?, ?)"
)
# One fixed text over unnest()ed arrays, as _COMPLETE_PG: SQLAlchemy's multi-row insert built its
# parameters row by row, an eighth of a worker's CPU at 1,024 in flight (py-spy, bench/ item 3).
_INSERT_MENTIONS_PG = text("""
INSERT INTO mentions (response_id, entity_id, raw_name, position, char_offset)
SELECT * FROM unnest(
    CAST(:response_id AS bigint[]), CAST(:entity_id AS bigint[]), CAST(:raw_name AS text[]),
    CAST(:position AS integer[]), CAST(:char_offset AS integer[])
)
""")


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
