"""The queue protocol: enqueue, claim, heartbeat, release and reap (DESIGN.md, "Job lifecycle").

Every function is one named operation in one transaction. Writes for a claimed job are fenced on
(id, status='processing', locked_by, attempt_count): a worker that lost its lease, or whose job was
cancelled, matches nothing and writes nothing. Clocks: timestamps come from the caller's UTC clock;
runners sharing a PostgreSQL must keep their clocks NTP-synced (leases are tens of seconds).
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    CTE,
    Connection,
    Engine,
    Row,
    Select,
    and_,
    case,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    true,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from db import budgets
from db.budgets import BudgetPolicy
from db.engine import is_sqlite, read_tx, write_operation
from db.models import AuditLog, JobAttempt, Model, ModelPacing, Prompt, PromptJob, utcnow
from db.types import (
    AttemptOutcome,
    AuditAction,
    CallUsage,
    ClaimedJob,
    EnqueueResult,
    ErrorKind,
    JobStatus,
)

log = logging.getLogger(__name__)

J = PromptJob
_KEY_COLUMNS = ("prompt_id", "model_id", "run_index", "batch_key")
ANALYZE_AFTER_JOBS = 1_000  # an enqueue creating this many jobs refreshes planner statistics


# --- enqueue ---------------------------------------------------------------------------------


@write_operation
def enqueue_batch(
    conn: Connection,
    batch_key: str,
    *,
    max_attempts: int,
    deadline_at: datetime | None = None,
    actor: str = "runner",
) -> EnqueueResult:
    """Create the batch's jobs: every active prompt x active model x run, in one statement.

    Idempotent through the unique key (prompt_id, model_id, run_index, batch_key): existing jobs are
    left alone (cases C9, C10). Concurrent enqueues of the same batch are serialized by an advisory
    lock on PostgreSQL and BEGIN IMMEDIATE on SQLite, so neither deadlocks (case C11).
    `deadline_at` (UTC; None: none) bounds the new jobs' retries and deferrals: a job still
    queued then fails with error_kind 'deadline' (fail_past_deadline).
    """
    _lock_batch(conn, batch_key)
    now = utcnow()
    expected = _expected_jobs(conn)
    created = (
        0
        if _present_jobs(conn, batch_key) == expected
        else _inserted(
            conn,
            conn.execute(
                _enqueue_statement(conn, batch_key, max_attempts, deadline_at, now),
                execution_options={"preserve_rowcount": True},
            ).rowcount,
        )
    )
    _analyze_after_bulk_insert(conn, created)
    if created:  # a prompt's last run is the last enqueue that gave it jobs
        conn.execute(update(Prompt).where(Prompt.is_active).values(last_run_at=now))
    write_audit(conn, actor, AuditAction.ENQUEUE, {"batch_key": batch_key}, created, now)
    return EnqueueResult(batch_key, created, max(expected - created, 0))


@write_operation
def record_missed_batches(conn: Connection, batch_keys: list[str]) -> None:
    """Audit each batch the runner was down for (case C2: never silently nothing)."""
    now = utcnow()
    for key in batch_keys:
        write_audit(conn, "scheduler", AuditAction.BATCH_MISSED, {"batch_key": key}, 0, now)


def _present_jobs(conn: Connection, batch_key: str) -> int:
    """How many of the batch's expected jobs (active prompt x active model x run) exist already.

    Equal to _expected_jobs when the batch is complete: then the insert is skipped, which makes
    the idempotent re-run (every runner start, every catch-up) a count instead of 150,000
    conflicting inserts, 0.86 s -> about 0.1 s (bench/ item 1). The unique key makes the count
    exact; the batch lock keeps it true until commit.
    """
    return int(
        conn.scalar(
            select(func.count())
            .select_from(J)
            .join(Prompt, and_(Prompt.id == J.prompt_id, Prompt.is_active))
            .join(Model, and_(Model.id == J.model_id, Model.is_active))
            .where(J.batch_key == batch_key, J.run_index < Prompt.runs)
        )
        or 0
    )


def _lock_batch(conn: Connection, batch_key: str) -> None:
    if not is_sqlite(conn):
        conn.execute(
            select(func.pg_advisory_xact_lock(zlib.crc32(f"enqueue:{batch_key}".encode())))
        )


def _analyze_after_bulk_insert(conn: Connection, created: int) -> None:
    """Refresh prompt_jobs' planner statistics after a large enqueue.

    Until autovacuum gets to it (a minute or more), PostgreSQL thinks almost nothing is queued and
    claims by bitmap-scanning and sorting every queued job instead of walking ix_prompt_jobs_claim
    in order: 40 ms instead of 0.2 ms per claim at 20,000 jobs (bench/). SQLite without
    statistics sorts every queued job by ix_prompt_jobs_status alike. ANALYZE counts the rows
    this transaction inserted, so the statistics are right at commit.
    """
    if created >= ANALYZE_AFTER_JOBS:
        conn.execute(text("ANALYZE prompt_jobs"))


def _inserted(conn: Connection, rowcount: int) -> int:
    # pysqlite reports -1 for a statement that starts with WITH; ask SQLite itself.
    return int(conn.scalar(select(func.changes())) or 0) if is_sqlite(conn) else rowcount


def _run_numbers() -> CTE:
    """0 .. max(runs)-1 as a recursive CTE (portable: no generate_series on SQLite)."""
    top = select(func.coalesce(func.max(Prompt.runs), 0)).where(Prompt.is_active).scalar_subquery()
    runs = select(literal(0).label("n")).cte("run_numbers", recursive=True)
    return runs.union_all(select(runs.c.n + 1).where(runs.c.n + 1 < top))


def _enqueue_statement(
    conn: Connection, batch_key: str, max_attempts: int, deadline_at: datetime | None, now: datetime
) -> Any:
    runs = _run_numbers()
    source = (
        select(
            Prompt.id,
            Model.id,
            runs.c.n,
            literal(batch_key),
            literal(JobStatus.QUEUED.value),
            literal(0),
            literal(0),
            literal(max_attempts),
            literal(now, J.scheduled_for.type),
            literal(deadline_at, J.deadline_at.type),
            literal(now, J.created_at.type),
            literal(now, J.updated_at.type),
        )
        .select_from(Prompt)
        .join(Model, true())
        .join(runs, runs.c.n < Prompt.runs)
        .where(Prompt.is_active, Model.is_active)
        .order_by(Prompt.id, Model.id, runs.c.n)
    )
    columns = [
        *_KEY_COLUMNS,
        "status",
        "priority",
        "attempt_count",
        "max_attempts",
        "scheduled_for",
        "deadline_at",
        "created_at",
        "updated_at",
    ]
    dialect_insert = sqlite.insert if is_sqlite(conn) else postgresql.insert
    return (
        dialect_insert(J)
        .from_select(columns, source)
        .on_conflict_do_nothing(index_elements=list(_KEY_COLUMNS))
    )


def _expected_jobs(conn: Connection) -> int:
    runs = conn.scalar(select(func.coalesce(func.sum(Prompt.runs), 0)).where(Prompt.is_active))
    models = conn.scalar(select(func.count()).select_from(Model).where(Model.is_active))
    return int(runs or 0) * int(models or 0)


# --- claim -----------------------------------------------------------------------------------


def claim_jobs(
    engine: Engine,
    worker_id: str,
    limit: int,
    *,
    lease_seconds: float,
    now: datetime | None = None,
    budget: BudgetPolicy | None = None,
) -> list[ClaimedJob]:
    """Move up to `limit` due queued jobs to 'processing' for `worker_id` and return them.

    One transaction; order (priority, scheduled_for, id) across all models; jobs of inactive
    prompts or models are not claimed (the reaper skips them); models.max_concurrency is honoured
    across all runners by locking a capped model's row while its free slots are counted.
    PostgreSQL picks the jobs with FOR UPDATE SKIP LOCKED, so concurrent claimers never wait on or
    share a job (case C7); SQLite runs the same statements inside BEGIN IMMEDIATE (case C13).
    With `budget`, no more jobs are held in flight than the daily budgets left cover at their
    worst case (db.budgets).
    """
    if limit < 1:
        return []
    return _claim_jobs(
        engine, worker_id, limit, lease_seconds=lease_seconds, now=now, budget=budget
    )


def claim_jobs_in(
    conn: Connection,
    worker_id: str,
    limit: int,
    *,
    lease_seconds: float,
    now: datetime | None = None,
    budget: BudgetPolicy | None = None,
) -> list[ClaimedJob]:
    """claim_jobs inside the caller's write transaction (see db.results.complete_and_claim)."""
    if limit < 1:
        return []
    at = now or utcnow()
    lease_until = at + timedelta(seconds=lease_seconds)
    global_budget = budget is not None and budget.daily_budget_usd is not None
    if not is_sqlite(conn) and not global_budget:
        claimed = _claim_uncapped_pg(conn, limit, worker_id, at, lease_until)
        if claimed is not None:
            return claimed
    caps: dict[int, int] = {}
    if budget is not None and budgets.uses_budgets(conn, budget):
        caps, room = budgets.budget_caps(conn, budget, at)
        limit = limit if room is None else min(limit, room)
    models = _active_models(conn, caps)
    return _take(conn, _pick_ids(conn, models, limit, at), worker_id, at, lease_until)


_claim_jobs = write_operation(claim_jobs_in)


def _active_models(
    conn: Connection, budget_caps: dict[int, int] | None = None
) -> list[tuple[int, int | None]]:
    """(model id, concurrency cap) of the models that may be claimed for, in one lock order for
    every claimer. A model with model-level failures since its last success is probed one call
    at a time (cap 1): after a key is rejected, at most K calls go out before it pauses; one
    that got a 429 is capped at the concurrency adapted to it (db.pacing, AIMD), and one with a
    daily budget at the jobs its budget left covers (db.budgets)."""
    rows = conn.execute(
        select(Model.id, Model.max_concurrency, Model.failure_streak, ModelPacing.concurrency)
        .outerjoin(ModelPacing, ModelPacing.model_id == Model.id)
        .where(Model.is_active, Model.paused_at.is_(None))
        .order_by(Model.id)
    )
    caps = budget_caps or {}
    return [
        (r.id, _cap(r.max_concurrency, r.failure_streak, r.concurrency, caps.get(r.id)))
        for r in rows
    ]


def _cap(
    configured: int | None, failure_streak: int, adapted: float | None, budget: int | None
) -> int | None:
    """A model's jobs in flight at most: the smallest of max_concurrency, the concurrency adapted
    to its 429s, what its budget covers, and 1 while probing after a model-level failure (None:
    no cap; 0: none at all)."""
    caps = [
        c
        for c in (
            configured,
            None if adapted is None else max(int(adapted), 1),
            1 if failure_streak > 0 else None,
            budget,
        )
        if c is not None
    ]
    return min(caps) if caps else None


# The claim when no active model is capped (the common case) in ONE statement of fixed text,
# prepared once per connection: pick, lock and take the jobs and read their prompt and model.
# `picked` walks ix_prompt_jobs_claim in order and skips rows other claimers hold (case C7). When
# a model is capped (max_concurrency, or probed one call at a time after a model-level failure)
# it takes nothing and says so (one row, capped = true), and the caller runs the per-model claim
# that counts free slots. Paused models' jobs, and jobs past their deadline, are never taken.
_CLAIM_PG = text("""
WITH capped AS (
    SELECT EXISTS (
        SELECT 1 FROM models
        WHERE is_active AND paused_at IS NULL
          AND (max_concurrency IS NOT NULL OR failure_streak > 0 OR daily_budget_usd IS NOT NULL)
    ) OR EXISTS (SELECT 1 FROM model_pacing WHERE concurrency IS NOT NULL) AS found
), picked AS (
    SELECT j.id FROM prompt_jobs AS j
    WHERE NOT (SELECT found FROM capped)
      AND j.status = 'queued' AND j.scheduled_for <= :now
      AND (j.deadline_at IS NULL OR j.deadline_at > :now)
      AND EXISTS (
          SELECT 1 FROM models AS m
          WHERE m.id = j.model_id AND m.is_active AND m.paused_at IS NULL
      )
      AND EXISTS (SELECT 1 FROM prompts AS p WHERE p.id = j.prompt_id AND p.is_active)
    ORDER BY j.priority, j.scheduled_for, j.id
    LIMIT :limit
    FOR UPDATE OF j SKIP LOCKED
), taken AS (
    UPDATE prompt_jobs AS j
    SET status = 'processing', locked_by = :worker_id, lease_expires_at = :lease_until,
        started_at = :now, updated_at = :now, attempt_count = j.attempt_count + 1
    FROM picked, prompts AS p, models AS m
    WHERE j.id = picked.id AND p.id = j.prompt_id AND m.id = j.model_id
    RETURNING j.id, j.prompt_id, j.model_id, j.run_index, j.batch_key, j.attempt_count,
              j.max_attempts, j.started_at, p.text, m.provider, m.name, m.base_url,
              m.supports_json_schema, m.input_usd_per_mtok, m.output_usd_per_mtok, m.max_tokens,
              m.temperature, m.seed, m.custom_host, m.rpm, m.tpm, m.failure_streak,
              j.deferrals, j.deadline_at, j.priority, j.scheduled_for
)
SELECT taken.*, capped.found AS capped FROM capped LEFT JOIN taken ON true
""")


def claim_plan(engine: Engine, limit: int) -> list[str]:
    """EXPLAIN ANALYZE of the PostgreSQL claim statement for `limit` jobs, rolled back (nothing is
    claimed): for bench/ and for operators checking that it walks ix_prompt_jobs_claim."""
    now = utcnow()
    params = _claim_params(limit, "explain", now, now + timedelta(seconds=60))
    with engine.connect() as conn, conn.begin() as tx:
        plan = [row[0] for row in conn.execute(text(f"EXPLAIN ANALYZE {_CLAIM_PG.text}"), params)]
        tx.rollback()
    return plan


def _claim_uncapped_pg(
    conn: Connection, limit: int, worker_id: str, now: datetime, lease_until: datetime
) -> list[ClaimedJob] | None:
    """The claimed jobs in claim order, or None when a model is capped (nothing was taken)."""
    rows = list(conn.execute(_CLAIM_PG, _claim_params(limit, worker_id, now, lease_until)))
    if rows[0].capped:
        return None
    taken = sorted((r for r in rows if r.id is not None), key=_claim_order)
    return [_claimed(r, worker_id) for r in taken]


def _claim_params(
    limit: int, worker_id: str, now: datetime, lease_until: datetime
) -> dict[str, Any]:
    return {"now": now, "limit": limit, "worker_id": worker_id, "lease_until": lease_until}


def _claim_order(row: Any) -> tuple[int, datetime, int]:
    """The claim order, (priority, scheduled_for, id), of a row that has those columns."""
    return row.priority, row.scheduled_for, row.id


def _pick_ids(
    conn: Connection, models: Sequence[tuple[int, int | None]], limit: int, now: datetime
) -> list[int]:
    # Each model group's first jobs are locked, then the best `limit` of them are taken: one
    # query per group keeps a capped model's quota exact, the merge keeps the order global.
    order = sorted(_candidates(conn, models, limit, now), key=_claim_order)
    return [r.id for r in order[:limit]]


def _take(
    conn: Connection, ids: list[int], worker_id: str, now: datetime, lease_until: datetime
) -> list[ClaimedJob]:
    """Mark the picked jobs 'processing' for `worker_id` and return them in claim order."""
    if not ids:
        return []
    stmt = (
        update(J)
        .where(J.id.in_(ids), J.status == JobStatus.QUEUED.value)
        .values(
            status=JobStatus.PROCESSING.value,
            locked_by=worker_id,
            lease_expires_at=lease_until,
            started_at=now,
            updated_at=now,
            attempt_count=J.attempt_count + 1,
        )
    )
    if is_sqlite(conn):  # SQLite's RETURNING cannot read the tables of UPDATE ... FROM
        return _load_claimed(conn, list(conn.scalars(stmt.returning(J.id))), worker_id)
    # PostgreSQL: the update returns the job with its prompt and model (one round trip less).
    stmt = stmt.where(Prompt.id == J.prompt_id, Model.id == J.model_id).returning(
        *_CLAIMED_COLUMNS, J.priority, J.scheduled_for
    )
    rows = sorted(conn.execute(stmt), key=_claim_order)
    return [_claimed(r, worker_id) for r in rows]


def _candidates(
    conn: Connection, models: Sequence[tuple[int, int | None]], limit: int, now: datetime
) -> list[Row[int, int, datetime]]:
    """Up to `limit` due jobs of the uncapped models, and up to min(limit, free slots) of each
    capped model, locked for this transaction."""
    uncapped = [model_id for model_id, cap in models if cap is None]
    rows = list(conn.execute(_claimable(conn, uncapped, limit, now))) if uncapped else []
    for model_id, cap in ((model_id, cap) for model_id, cap in models if cap is not None):
        room = min(limit, _free_slots(conn, model_id, cap))
        if room > 0:
            rows += conn.execute(_claimable(conn, [model_id], room, now))
    return rows


def _free_slots(conn: Connection, model_id: int, cap: int) -> int:
    """Slots left under a model's max_concurrency; locks the model row until the claim commits."""
    if not is_sqlite(conn):  # SQLite's IMMEDIATE transaction already serializes claimers
        conn.execute(select(Model.id).where(Model.id == model_id).with_for_update())
    busy = conn.scalar(
        select(func.count())
        .select_from(J)
        .where(J.model_id == model_id, J.status == JobStatus.PROCESSING.value)
    )
    return cap - int(busy or 0)


def _claimable(
    conn: Connection, model_ids: Sequence[int], limit: int, now: datetime
) -> Select[int, int, datetime]:
    prompt_active = exists().where(Prompt.id == J.prompt_id, Prompt.is_active)
    query = (
        select(J.id, J.priority, J.scheduled_for)
        .where(
            J.status == JobStatus.QUEUED.value,
            J.scheduled_for <= now,
            or_(J.deadline_at.is_(None), J.deadline_at > now),
            J.model_id.in_(model_ids),
            prompt_active,
        )
        .order_by(J.priority, J.scheduled_for, J.id)
        .limit(limit)
    )
    return query if is_sqlite(conn) else query.with_for_update(skip_locked=True, of=J)


_CLAIMED_COLUMNS = (
    J.id,
    J.prompt_id,
    J.model_id,
    J.run_index,
    J.batch_key,
    J.attempt_count,
    J.max_attempts,
    J.started_at,
    Prompt.text,
    Model.provider,
    Model.name,
    Model.base_url,
    Model.supports_json_schema,
    Model.input_usd_per_mtok,
    Model.output_usd_per_mtok,
    Model.max_tokens,
    Model.temperature,
    Model.seed,
    Model.custom_host,
    Model.rpm,
    Model.tpm,
    Model.failure_streak,
    J.deferrals,
    J.deadline_at,
)


def _load_claimed(conn: Connection, ids: list[int], worker_id: str) -> list[ClaimedJob]:
    if not ids:
        return []
    rows = conn.execute(
        select(*_CLAIMED_COLUMNS)
        .join(Prompt, Prompt.id == J.prompt_id)
        .join(Model, Model.id == J.model_id)
        .where(J.id.in_(ids))
        .order_by(J.priority, J.scheduled_for, J.id)
    )
    return [_claimed(r, worker_id) for r in rows]


def _claimed(r: Any, worker_id: str) -> ClaimedJob:
    """A row of _CLAIMED_COLUMNS as the ClaimedJob handed to a worker."""
    return ClaimedJob(
        id=r.id,
        prompt_id=r.prompt_id,
        model_id=r.model_id,
        run_index=r.run_index,
        batch_key=r.batch_key,
        attempt=r.attempt_count,
        max_attempts=r.max_attempts,
        worker_id=worker_id,
        prompt_text=r.text,
        provider=r.provider,
        model_name=r.name,
        base_url=r.base_url,
        supports_json_schema=r.supports_json_schema,
        input_usd_per_mtok=r.input_usd_per_mtok,
        output_usd_per_mtok=r.output_usd_per_mtok,
        started_at=r.started_at,
        max_tokens=r.max_tokens,
        temperature=r.temperature,
        seed=r.seed,
        custom_host=bool(r.custom_host),
        rpm=r.rpm,
        tpm=r.tpm,
        failure_streak=r.failure_streak,
        deferrals=r.deferrals,
        deadline_at=r.deadline_at,
    )


def model_gate(engine: Engine, model_id: int) -> tuple[int, bool]:
    """(failure_streak, paused) of a model now: a job claimed before a model-level failure of
    its model holds its call (runner.worker.jobs), so a rejected key costs at most K calls."""
    with read_tx(engine) as conn:
        row = conn.execute(
            select(Model.failure_streak, Model.paused_at).where(Model.id == model_id)
        ).one_or_none()
    return (0, False) if row is None else (row.failure_streak, row.paused_at is not None)


# --- lease upkeep ----------------------------------------------------------------------------


def heartbeat(
    engine: Engine, worker_id: str, held: Sequence[tuple[int, int]], *, lease_seconds: float
) -> set[tuple[int, int]]:
    """Extend the leases of a worker's attempts in flight, (job id, attempt) pairs, in one
    statement; returns the pairs it still holds.

    A pair missing from the result was cancelled or taken over, or is an earlier attempt of a
    job the worker claimed again (a freeze past its lease, the reaper, a new claim): its result
    will be dropped, so it must not call its model."""
    return _extend_leases(engine, worker_id, held, lease_seconds) if held else set()


@write_operation
def _extend_leases(
    conn: Connection, worker_id: str, held: Sequence[tuple[int, int]], lease_seconds: float
) -> set[tuple[int, int]]:
    now = utcnow()
    stmt = (
        update(J)
        .where(_held_by(worker_id, held))
        .values(lease_expires_at=now + timedelta(seconds=lease_seconds))
        .returning(J.id, J.attempt_count)
    )
    return {(job_id, attempt) for job_id, attempt in conn.execute(stmt)}


def _held_by(worker_id: str, held: Sequence[tuple[int, int]]) -> Any:
    """Those of the (job id, attempt) pairs that `worker_id` holds now (processing, locked by it,
    at that attempt): not an earlier attempt of a job it claimed again."""
    return and_(
        tuple_(J.id, J.attempt_count).in_(held),
        J.locked_by == worker_id,
        J.status == JobStatus.PROCESSING.value,
    )


def release_jobs(
    engine: Engine,
    worker_id: str,
    held: Sequence[tuple[int, int]],
    *,
    delay_seconds: float = 0.0,
) -> int:
    """Hand held attempts, (job id, attempt) pairs, back to 'queued' uncalled, without spending
    their attempt, due again in `delay_seconds` (graceful shutdown and a batch's tail: 0; a
    model's rate limit taken: until its place); how many were released. By attempt: an earlier
    attempt of a job its worker claimed again must not release the later claim."""
    return _release(engine, worker_id, held, delay_seconds) if held else 0


@write_operation
def _release(
    conn: Connection, worker_id: str, held: Sequence[tuple[int, int]], delay_seconds: float
) -> int:
    now = utcnow()
    stmt = (
        update(J)
        .where(_held_by(worker_id, held))
        .values(
            status=JobStatus.QUEUED.value,
            attempt_count=J.attempt_count - 1,
            locked_by=None,
            lease_expires_at=None,
            started_at=None,
            scheduled_for=now + timedelta(seconds=delay_seconds),
            updated_at=now,
        )
    )
    return conn.execute(stmt).rowcount


DEFAULT_MAX_INTERRUPTIONS = 5  # leases a job may lose with its worker before it fails


@write_operation
def reap_expired(
    conn: Connection, *, max_interruptions: int = DEFAULT_MAX_INTERRUPTIONS
) -> list[tuple[int, str]]:
    """Return jobs whose lease expired to 'queued', or 'failed' when their interruption budget is
    spent (case C8). Returns (job_id, new status) pairs.

    A lost lease is the worker's failure, not the model's: it spends no attempt (max_attempts is
    raised by one) but one of `max_interruptions`, so a job that kills its worker every time
    still ends (failed, 'lease_expired'). Idempotent and safe to run from every runner at once;
    each reaped claim is recorded in job_attempts (outcome 'lost').
    """
    now = utcnow()
    expired = and_(J.status == JobStatus.PROCESSING.value, J.lease_expires_at < now)
    reason = literal("lease expired: worker ") + func.coalesce(J.locked_by, "?")
    return _take_back(conn, expired, reason + literal(" stopped heartbeating"), max_interruptions)


@write_operation
def rescue_worker(
    conn: Connection,
    worker_id: str,
    *,
    why: str = "died",
    max_interruptions: int = DEFAULT_MAX_INTERRUPTIONS,
) -> list[tuple[int, str]]:
    """Take back at once the jobs held by `worker_id`, a worker its supervisor saw die: as
    reap_expired does for an expired lease, without waiting for the lease (issue 12: a killed
    worker's jobs waited out the 60 s lease plus the reaper's interval). Fenced by the worker id
    (locked_by) and the claim's attempt: a late write of that worker is dropped. Returns
    (job_id, new status) pairs."""
    held = and_(J.status == JobStatus.PROCESSING.value, J.locked_by == worker_id)
    reason = literal(f"worker {worker_id} {why}; its jobs were taken back at once")
    return _take_back(conn, held, reason, max_interruptions)


def _take_back(
    conn: Connection, where: Any, reason: Any, max_interruptions: int
) -> list[tuple[int, str]]:
    """Return the held jobs matching `where` to 'queued' (or fail those whose interruption
    budget is spent), each claim recorded as a lost attempt with `reason`."""
    now = utcnow()
    spent = J.interruptions + 1 >= max_interruptions
    stmt = (
        update(J)
        .where(where)
        .values(
            status=case((spent, JobStatus.FAILED.value), else_=JobStatus.QUEUED.value),
            finished_at=case((spent, now), else_=None),
            interruptions=J.interruptions + 1,
            max_attempts=J.max_attempts + 1,
            error_kind=ErrorKind.LEASE_EXPIRED.value,
            error_message=reason,
            locked_by=None,
            lease_expires_at=None,
            scheduled_for=now,
            updated_at=now,
        )
        .returning(J.id, J.status, J.attempt_count, J.started_at, J.error_message)
    )
    rows = conn.execute(stmt).all()
    for r in rows:
        record_attempt(
            conn,
            attempt_row(
                r.id,
                r.attempt_count,
                worker_id=None,
                started_at=r.started_at,
                finished_at=now,
                outcome=AttemptOutcome.LOST,
                error_kind=ErrorKind.LEASE_EXPIRED.value,
                error_message=r.error_message,
            ),
        )
    return [(r.id, r.status) for r in rows]


@write_operation
def fail_past_deadline(conn: Connection) -> int:
    """Fail the queued jobs whose batch deadline has passed (error_kind 'deadline', the last
    error kept in the message); returns how many. A job being processed is left to finish."""
    now = utcnow()
    last = func.coalesce(literal("; last error: ") + J.error_message, literal(""))
    stmt = update(J).where(J.status == JobStatus.QUEUED.value, J.deadline_at <= now)
    return conn.execute(
        stmt.values(
            status=JobStatus.FAILED.value,
            finished_at=now,
            updated_at=now,
            error_kind=ErrorKind.DEADLINE.value,
            error_message=literal("not done by its batch deadline") + last,
        )
    ).rowcount


@write_operation
def skip_inactive(conn: Connection) -> int:
    """Mark queued jobs of deactivated prompts or models as 'skipped'; returns how many."""
    now = utcnow()
    inactive = ~exists().where(Prompt.id == J.prompt_id, Prompt.is_active) | ~exists().where(
        Model.id == J.model_id, Model.is_active
    )
    stmt = (
        update(J)
        .where(J.status == JobStatus.QUEUED.value, inactive)
        .values(
            status=JobStatus.SKIPPED.value,
            finished_at=now,
            updated_at=now,
            error_kind=None,
            error_message="prompt or model deactivated",
        )
    )
    return conn.execute(stmt).rowcount


# --- shared writers --------------------------------------------------------------------------


def record_attempt(conn: Connection, row: dict[str, Any]) -> None:
    """Append a job_attempts row (`attempt_row`) in the caller's transaction."""
    conn.execute(insert(JobAttempt).values(row))


def attempt_row(
    job_id: int,
    attempt: int,
    *,
    worker_id: str | None,
    started_at: datetime | None,
    finished_at: datetime,
    outcome: AttemptOutcome,
    error_kind: str | None,
    error_message: str | None,
    latency_ms: int | None = None,
    usage: CallUsage | None = None,
    raw_body: str | None = None,
) -> dict[str, Any]:
    """A job_attempts row, every column named (so many rows can go in one statement: the SQLite
    group commit); `usage` is what the attempt's paid calls used (tokens, USD, request ids),
    `raw_body` a failed attempt's last body."""
    return {
        "job_id": job_id,
        "attempt": attempt,
        "worker_id": worker_id,
        "started_at": started_at,
        "finished_at": finished_at,
        "outcome": outcome.value,
        "error_kind": error_kind,
        "error_message": error_message,
        "latency_ms": latency_ms,
        **usage_columns(usage),
        "raw_body": raw_body[:MAX_RAW_BODY_CHARS] if raw_body is not None else None,
    }


MAX_RAW_BODY_CHARS = 20_000  # a failed attempt's body kept for diagnosis


def usage_columns(usage: CallUsage | None) -> dict[str, Any]:
    """job_attempts' request_id, calls, tokens and cost columns for `usage` (all None without)."""
    if usage is None:
        return dict.fromkeys(usage_columns(CallUsage()))
    return {
        "request_id": usage.request_id,
        "calls": usage.calls,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "cost": usage.cost_usd,
        "cost_source": usage.cost_source.value if usage.cost_source else None,
    }


def write_audit(
    conn: Connection,
    actor: str,
    action: AuditAction,
    target: dict[str, Any],
    count: int,
    at: datetime,
) -> None:
    """Append an audit_log row (target as sorted JSON) in the caller's transaction."""
    conn.execute(
        insert(AuditLog).values(
            at=at,
            actor=actor,
            action=action.value,
            target=json.dumps(target, sort_keys=True, default=str),
            count=count,
        )
    )


def fence(job_id: int, worker_id: str, attempt: int) -> Any:
    """The WHERE clause every write for a claimed job carries (DESIGN.md, "Fencing")."""
    return and_(
        J.id == job_id,
        J.status == JobStatus.PROCESSING.value,
        J.locked_by == worker_id,
        J.attempt_count == attempt,
    )
