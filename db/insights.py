"""The read model: every read the console's pages, the CLI (`status`, `jobs`, the demo's summary)
and the runner (drain, catch-up, progress line) make, each a named operation (pgqueuer's
InsightsService; STYLE.md 2).

Every query is bounded (LIMIT, a capped count, or one batch) and served by an index of the 0001
migration, so the Overview and Jobs pages stay under a second with 1,000,000 jobs
(measured by bench/seed_console.py). Results are frozen dataclasses of plain values: the console
caches them with st.cache_data, so they must pickle.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import (
    Connection,
    Engine,
    Select,
    and_,
    case,
    func,
    literal_column,
    select,
)

from db.engine import is_sqlite, read_tx
from db.filters import JobQuery
from db.models import (
    AuditLog,
    Entity,
    JobAttempt,
    Mention,
    Model,
    ModelPacing,
    Prompt,
    PromptJob,
    Response,
    utcnow,
)
from db.types import DEFERRED_KINDS, ENDED_STATUSES, AuditAction, JobStatus
from db.workers import WorkerRow, list_workers

J = PromptJob
COUNT_CAP = 100_000  # the Jobs page counts matches up to this many, then shows "100,000+"
MAX_PAGE_SIZE = 10_000  # rows one listing returns at most (the CLI's --limit bound)
MAX_ACTION_JOBS = 10_000  # one action's job ids stay well under SQLite's 32,766 bound variables
RATE_WINDOW_MINUTES = 10  # the ETA uses the completion rate over this many recent minutes
MAX_MINUTES = 24 * 60  # the per-minute chart covers at most the last day of a batch
SNIPPET_CHARS = 300  # listings carry this much of a prompt or error; the detail has it all

SortKey = Literal["id", "finished_at", "updated_at", "attempt_count"]
SORT_COLUMNS: dict[str, Any] = {
    "id": J.id,
    "finished_at": J.finished_at,
    "updated_at": J.updated_at,
    "attempt_count": J.attempt_count,
}


# --- batches and the overview ------------------------------------------------------------------


def batch_keys(engine: Engine, *, limit: int = 60) -> list[str]:
    """The newest `limit` batch keys that have jobs, newest first.

    A loose index scan (one index probe per batch on ix_prompt_jobs_batch_key_status) instead of
    a DISTINCT over every job.
    """
    step = select(func.max(J.batch_key)).scalar_subquery()
    keys = select(step.label("k")).cte("batch_keys", recursive=True)
    below = select(func.max(J.batch_key)).where(J.batch_key < keys.c.k).scalar_subquery()
    keys = keys.union_all(select(below).where(keys.c.k.is_not(None)))
    query = select(keys.c.k).where(keys.c.k.is_not(None)).limit(limit)
    with read_tx(engine) as conn:
        return [str(k) for k in conn.scalars(query)]


@dataclass(frozen=True)
class Overview:
    """A batch at a glance: jobs per status, how much has ended, and when the rest should."""

    batch_key: str
    counts: dict[str, int]
    total: int
    ended: int
    rate_per_minute: float  # jobs that ended per minute over the last RATE_WINDOW_MINUTES
    eta_seconds: float | None  # None: nothing left, or nothing ended recently to estimate from
    as_of: datetime
    deferred: int = 0  # queued jobs waiting after a deferral (a limit, an outage, a paused model)
    deferrals: int = 0  # claims the provider did not serve, over the batch (no attempt spent)
    interruptions: int = 0  # leases lost with their worker, over the batch (no attempt spent)

    @property
    def done_fraction(self) -> float:
        return self.ended / self.total if self.total else 0.0

    def get(self, status: JobStatus) -> int:
        return self.counts.get(status.value, 0)


def batch_overview(engine: Engine, batch_key: str, *, now: datetime | None = None) -> Overview:
    """KPIs of one batch: counts per status, % ended, ETA from the recent completion rate."""
    at = now or utcnow()
    since = at - timedelta(minutes=RATE_WINDOW_MINUTES)
    with read_tx(engine) as conn:
        rows = conn.execute(
            select(J.status, func.count()).where(J.batch_key == batch_key).group_by(J.status)
        ).all()
        recent = int(
            conn.scalar(
                select(func.count())
                .select_from(J)
                .where(J.batch_key == batch_key, J.finished_at >= since)
            )
            or 0
        )
        waits = _waits(conn, batch_key)
    counts = {s.value: 0 for s in JobStatus}
    counts.update({status: int(n) for status, n in rows})
    total = sum(counts.values())
    ended = sum(counts[s.value] for s in ENDED_STATUSES)
    rate = recent / RATE_WINDOW_MINUTES
    left = total - ended
    eta = left / rate * 60 if left and rate else None
    return Overview(batch_key, counts, total, ended, rate, eta, at, *waits)


def _waits(conn: Connection, batch_key: str) -> tuple[int, int, int]:
    """(queued jobs waiting after a deferral, deferrals, interruptions) of a batch."""
    deferred = func.sum(
        case(
            (
                and_(
                    J.status == JobStatus.QUEUED.value,
                    J.error_kind.in_([k.value for k in DEFERRED_KINDS]),
                ),
                1,
            ),
            else_=0,
        )
    )
    row = conn.execute(
        select(deferred, func.sum(J.deferrals), func.sum(J.interruptions)).where(
            J.batch_key == batch_key
        )
    ).one()
    return int(row[0] or 0), int(row[1] or 0), int(row[2] or 0)


@dataclass(frozen=True)
class PausedModel:
    """A paused model: no job of it is claimed until `models resume`."""

    id: int
    name: str
    label: str
    reason: str | None
    since: datetime
    queued: int  # its queued jobs, over all batches


def paused_models(engine: Engine) -> list[PausedModel]:
    """The active models that are paused, with why and since when, oldest pause first."""
    queued = (
        select(func.count())
        .select_from(J)
        .where(J.model_id == Model.id, J.status == JobStatus.QUEUED.value)
        .scalar_subquery()
    )
    query = (
        select(Model.id, Model.name, Model.label, Model.paused_reason, Model.paused_at, queued)
        .where(Model.is_active, Model.paused_at.is_not(None))
        .order_by(Model.paused_at, Model.id)
    )
    with read_tx(engine) as conn:
        return [
            PausedModel(r[0], r[1], r[2], r[3], r[4], int(r[5] or 0)) for r in conn.execute(query)
        ]


def pending_jobs(engine: Engine, *, due_within_seconds: float) -> int:
    """Jobs still to run, over all batches: processing, or queued, due within the horizon
    (seconds from now) and of a model that is not paused (those wait for `models resume`).
    `run --drain` ends when this is 0; it asks every tick, so two counts, each served by its
    own index, rather than one over an OR."""
    horizon = utcnow() + timedelta(seconds=due_within_seconds)
    processing = select(func.count()).select_from(J).where(J.status == JobStatus.PROCESSING.value)
    due = (
        select(func.count())
        .select_from(J)
        .join(Model, Model.id == J.model_id)
        .where(
            J.status == JobStatus.QUEUED.value,
            J.scheduled_for <= horizon,
            Model.paused_at.is_(None),
        )
    )
    with read_tx(engine) as conn:
        return int(conn.scalar(processing) or 0) + int(conn.scalar(due) or 0)


def batches_with_work(engine: Engine) -> list[str]:
    """Batch keys with jobs queued or processing, oldest first (what a `run --drain` drains)."""
    busy = [JobStatus.QUEUED.value, JobStatus.PROCESSING.value]
    with read_tx(engine) as conn:
        return list(
            conn.scalars(
                select(J.batch_key).where(J.status.in_(busy)).distinct().order_by(J.batch_key)
            )
        )


def latest_batch_key(engine: Engine) -> str | None:
    """The newest batch key that has jobs, or None."""
    with read_tx(engine) as conn:
        return conn.scalar(select(func.max(J.batch_key)))


def missed_batches(engine: Engine, *, days: int = 30) -> list[str]:
    """Batch keys the scheduler found missing in the last `days` days (case C2), oldest first."""
    since = utcnow() - timedelta(days=days)
    query = select(AuditLog.target).where(
        AuditLog.action == AuditAction.BATCH_MISSED.value, AuditLog.at >= since
    )
    with read_tx(engine) as conn:
        return sorted({json.loads(t)["batch_key"] for t in conn.scalars(query)})


@dataclass(frozen=True)
class ModelProgress:
    model_id: int
    model: str  # the model's label
    status: str
    jobs: int


def progress_by_model(engine: Engine, batch_key: str) -> list[ModelProgress]:
    """Jobs per (model, status) of one batch."""
    counts = (
        select(J.model_id, J.status, func.count().label("n"))
        .where(J.batch_key == batch_key)
        .group_by(J.model_id, J.status)
        .subquery()
    )
    query = (
        select(counts.c.model_id, Model.label, counts.c.status, counts.c.n)
        .join(Model, Model.id == counts.c.model_id)
        .order_by(Model.label, counts.c.status)
    )
    with read_tx(engine) as conn:
        return [
            ModelProgress(int(m), label, status, int(n))
            for m, label, status, n in conn.execute(query)
        ]


@dataclass(frozen=True)
class MinuteCount:
    minute: datetime  # UTC, the start of the minute
    succeeded: int
    failed: int


def completions_per_minute(engine: Engine, batch_key: str) -> list[MinuteCount]:
    """Jobs of a batch that succeeded / failed in each minute, oldest first (at most a day)."""
    with read_tx(engine) as conn:
        minute = _minute(conn, J.finished_at)
        query = (
            select(
                minute.label("minute"),
                func.sum(case((J.status == JobStatus.SUCCEEDED.value, 1), else_=0)),
                func.sum(case((J.status == JobStatus.FAILED.value, 1), else_=0)),
            )
            .where(J.batch_key == batch_key, J.finished_at.is_not(None))
            .group_by(minute)
            .order_by(minute.desc())
            .limit(MAX_MINUTES)
        )
        rows = conn.execute(query).all()
    return [MinuteCount(_as_utc(m), int(ok or 0), int(bad or 0)) for m, ok, bad in reversed(rows)]


def _minute(conn: Connection, column: Any) -> Any:
    if is_sqlite(conn):  # stored as 'YYYY-MM-DD HH:MM:SS[.ffffff]', naive UTC
        return func.strftime("%Y-%m-%d %H:%M:00", column)
    return func.date_trunc("minute", column)


def _as_utc(value: datetime | str) -> datetime:
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@dataclass(frozen=True)
class BatchSummary:
    """One past batch: size, outcome, duration (enqueue to last finish), and the tokens and USD
    of every paid call of its attempts (failed ones and a fallback's first call included)."""

    batch_key: str
    jobs: int
    succeeded: int
    failed: int
    first_created_at: datetime | None
    last_finished_at: datetime | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float

    @property
    def success_rate(self) -> float:
        ended = self.succeeded + self.failed
        return self.succeeded / ended if ended else 0.0

    @property
    def duration_seconds(self) -> float | None:
        if self.first_created_at is None or self.last_finished_at is None:
            return None
        return max((self.last_finished_at - self.first_created_at).total_seconds(), 0.0)


def batch_history(engine: Engine, *, limit: int = 14) -> list[BatchSummary]:
    """The last `limit` batches, newest first."""
    keys = batch_keys(engine, limit=limit)
    if not keys:
        return []
    jobs = (
        select(
            J.batch_key,
            func.count(),
            func.sum(case((J.status == JobStatus.SUCCEEDED.value, 1), else_=0)),
            func.sum(case((J.status == JobStatus.FAILED.value, 1), else_=0)),
            func.min(J.created_at),
            func.max(J.finished_at),
        )
        .where(J.batch_key.in_(keys))
        .group_by(J.batch_key)
    )
    usage = (  # every paid call: failed attempts and a fallback's first call cost money too
        select(
            J.batch_key,
            func.sum(JobAttempt.prompt_tokens),
            func.sum(JobAttempt.completion_tokens),
            func.sum(JobAttempt.cost),
        )
        .join(J, J.id == JobAttempt.job_id)
        .where(J.batch_key.in_(keys))
        .group_by(J.batch_key)
    )
    with read_tx(engine) as conn:
        counted = {row[0]: row for row in conn.execute(jobs)}
        used = {row[0]: row for row in conn.execute(usage)}
    out = []
    for key in keys:
        _, n, ok, bad, first, last = counted[key]
        _, p_tok, c_tok, cost = used.get(key, (key, 0, 0, 0.0))
        out.append(
            BatchSummary(
                key,
                int(n),
                int(ok or 0),
                int(bad or 0),
                _maybe_utc(first),
                _maybe_utc(last),
                int(p_tok or 0),
                int(c_tok or 0),
                float(cost or 0.0),
            )
        )
    return out


def _maybe_utc(value: datetime | str | None) -> datetime | None:
    return None if value is None else _as_utc(value)


# --- jobs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobListRow:
    id: int
    batch_key: str
    status: str
    model: str  # the model's label
    prompt: str  # the first SNIPPET_CHARS characters
    run_index: int
    attempt_count: int
    max_attempts: int
    error_kind: str | None
    error_message: str | None  # the first SNIPPET_CHARS characters
    finished_at: datetime | None
    updated_at: datetime


@dataclass(frozen=True)
class JobPage:
    rows: list[JobListRow]
    total: int  # matching jobs, counted up to COUNT_CAP
    total_capped: bool  # True: at least `total` match (more were not counted)


def list_jobs_page(
    engine: Engine,
    query: JobQuery,
    *,
    sort: SortKey = "id",
    descending: bool = True,
    limit: int = 50,
    offset: int = 0,
) -> JobPage:
    """One page of matching jobs, sorted server-side (ties by id), and their capped count."""
    # The page's ids first, from prompt_jobs alone (an index walk), then the joins for those
    # rows only: joining first lets the planner sort all matches before the LIMIT.
    page_ids = (
        select(J.id)
        .where(query.clause())
        .order_by(*_order(sort, descending))
        .limit(max(1, min(limit, MAX_PAGE_SIZE)))
        .offset(max(offset, 0))
        .subquery()
    )
    rows_q = (
        select(
            J.id,
            J.batch_key,
            J.status,
            Model.label,
            func.substr(Prompt.text, 1, SNIPPET_CHARS),
            J.run_index,
            J.attempt_count,
            J.max_attempts,
            J.error_kind,
            func.substr(J.error_message, 1, SNIPPET_CHARS),
            J.finished_at,
            J.updated_at,
        )
        .join(page_ids, page_ids.c.id == J.id)
        .join(Prompt, Prompt.id == J.prompt_id)
        .join(Model, Model.id == J.model_id)
        .order_by(*_order(sort, descending))
    )
    capped: Select[Any] = (
        select(literal_column("1")).select_from(J).where(query.clause()).limit(COUNT_CAP + 1)
    )
    with read_tx(engine) as conn:
        rows = [JobListRow(*row) for row in conn.execute(rows_q)]
        total = int(conn.scalar(select(func.count()).select_from(capped.subquery())) or 0)
    return JobPage(rows, min(total, COUNT_CAP), total > COUNT_CAP)


def _order(sort: SortKey, descending: bool) -> list[Any]:
    column = SORT_COLUMNS[sort]
    order = [column.desc().nulls_last() if descending else column.asc().nulls_last()]
    if sort != "id":
        order.append(J.id.desc() if descending else J.id.asc())
    return order


def matching_job_ids(engine: Engine, query: JobQuery, *, limit: int = MAX_ACTION_JOBS) -> list[int]:
    """Ids of the jobs matching `query` (at most `limit` + 1, so a caller can tell "too many")."""
    ids_q = select(J.id).where(query.clause()).order_by(J.id).limit(limit + 1)
    with read_tx(engine) as conn:
        return [int(i) for i in conn.scalars(ids_q)]


@dataclass(frozen=True)
class AttemptRow:
    attempt: int
    worker_id: str | None
    started_at: datetime | None
    finished_at: datetime
    outcome: str
    error_kind: str | None
    error_message: str | None
    latency_ms: int | None
    calls: int | None  # paid calls in the attempt (a fallback makes two)
    prompt_tokens: int | None
    completion_tokens: int | None
    cost_usd: float | None
    cost_source: str | None  # "provider" (charged) or "estimate" (prices)
    request_id: str | None  # the calls' ids, space-separated


@dataclass(frozen=True)
class MentionRow:
    position: int
    brand: str  # the canonical entity name
    raw_name: str  # as the answer wrote it
    char_offset: int


@dataclass(frozen=True)
class ResponseRow:
    answer: str | None
    output_mode: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cost_usd: float | None
    cost_source: str | None
    latency_ms: int
    request_id: str | None
    created_at: datetime


@dataclass(frozen=True)
class JobDetail:
    """Everything about one job: the job, its prompt and model, every attempt, the response."""

    id: int
    batch_key: str
    status: str
    run_index: int
    attempt_count: int
    max_attempts: int
    error_kind: str | None
    error_message: str | None
    scheduled_for: datetime
    started_at: datetime | None
    finished_at: datetime | None
    created_at: datetime
    updated_at: datetime
    locked_by: str | None
    lease_expires_at: datetime | None
    prompt_id: int
    prompt_text: str
    model_id: int
    model_label: str
    model_name: str
    provider: str
    attempts: list[AttemptRow] = field(default_factory=list)
    response: ResponseRow | None = None
    mentions: list[MentionRow] = field(default_factory=list)


_JOB_FIELDS = [f.name for f in fields(JobDetail)][:-3]  # all but attempts, response, mentions
MAX_ATTEMPT_ROWS = 200
MAX_MENTION_ROWS = 500


def job_detail(engine: Engine, job_id: int) -> JobDetail | None:
    """One job with its attempts (oldest first), response and mentions; None when unknown."""
    job_q = (
        select(
            J.id,
            J.batch_key,
            J.status,
            J.run_index,
            J.attempt_count,
            J.max_attempts,
            J.error_kind,
            J.error_message,
            J.scheduled_for,
            J.started_at,
            J.finished_at,
            J.created_at,
            J.updated_at,
            J.locked_by,
            J.lease_expires_at,
            J.prompt_id,
            Prompt.text,
            J.model_id,
            Model.label,
            Model.name,
            Model.provider,
        )
        .join(Prompt, Prompt.id == J.prompt_id)
        .join(Model, Model.id == J.model_id)
        .where(J.id == job_id)
    )
    attempts_q = (
        select(
            JobAttempt.attempt,
            JobAttempt.worker_id,
            JobAttempt.started_at,
            JobAttempt.finished_at,
            JobAttempt.outcome,
            JobAttempt.error_kind,
            JobAttempt.error_message,
            JobAttempt.latency_ms,
            JobAttempt.calls,
            JobAttempt.prompt_tokens,
            JobAttempt.completion_tokens,
            JobAttempt.cost,
            JobAttempt.cost_source,
            JobAttempt.request_id,
        )
        .where(JobAttempt.job_id == job_id)
        .order_by(JobAttempt.attempt)
        .limit(MAX_ATTEMPT_ROWS)
    )
    response_q = select(
        Response.id,
        Response.answer,
        Response.output_mode,
        Response.finish_reason,
        Response.prompt_tokens,
        Response.completion_tokens,
        Response.cost,
        Response.cost_source,
        Response.latency_ms,
        Response.request_id,
        Response.created_at,
    ).where(Response.job_id == job_id)
    with read_tx(engine) as conn:
        job = conn.execute(job_q).one_or_none()
        if job is None:
            return None
        attempts = [AttemptRow(*tuple(row)) for row in conn.execute(attempts_q)]
        response = conn.execute(response_q).one_or_none()
        mentions = _mentions_of(conn, response[0]) if response is not None else []
    core = dict(zip(_JOB_FIELDS, job, strict=True))
    return JobDetail(
        **core,
        attempts=attempts,
        response=ResponseRow(*tuple(response)[1:]) if response is not None else None,
        mentions=mentions,
    )


def _mentions_of(conn: Connection, response_id: int) -> list[MentionRow]:
    query = (
        select(Mention.position, Entity.name, Mention.raw_name, Mention.char_offset)
        .join(Entity, Entity.id == Mention.entity_id)
        .where(Mention.response_id == response_id)
        .order_by(Mention.position)
        .limit(MAX_MENTION_ROWS)
    )
    return [MentionRow(*row) for row in conn.execute(query)]


# --- failures -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FailureGroup:
    """Failed jobs of a batch sharing an error kind and message, for one model."""

    error_kind: str | None
    error_message: str | None
    model_id: int
    model: str
    jobs: int
    last_failed_at: datetime | None


def failure_groups(engine: Engine, batch_key: str, *, limit: int = 500) -> list[FailureGroup]:
    """Failed jobs of a batch grouped by (error kind, message, model), largest groups first."""
    groups = (
        select(
            J.error_kind,
            J.error_message,
            J.model_id,
            func.count().label("n"),
            func.max(J.finished_at).label("last"),
        )
        .where(J.batch_key == batch_key, J.status == JobStatus.FAILED.value)
        .group_by(J.error_kind, J.error_message, J.model_id)
        .subquery()
    )
    query = (
        select(
            groups.c.error_kind,
            groups.c.error_message,
            groups.c.model_id,
            Model.label,
            groups.c.n,
            groups.c.last,
        )
        .join(Model, Model.id == groups.c.model_id)
        .order_by(groups.c.n.desc(), groups.c.error_kind, Model.label)
        .limit(limit)
    )
    with read_tx(engine) as conn:
        rows = conn.execute(query).all()
    return [
        FailureGroup(kind, message, int(model_id), label, int(n), _maybe_utc(last))
        for kind, message, model_id, label, n, last in rows
    ]


def error_kinds(engine: Engine, batch_key: str | None) -> list[str]:
    """The error kinds present among a batch's jobs (or all jobs), for a filter's choices."""
    query: Select[Any] = select(J.error_kind).where(J.error_kind.is_not(None)).distinct()
    if batch_key:
        query = query.where(J.batch_key == batch_key)
    with read_tx(engine) as conn:
        return sorted(str(k) for k in conn.scalars(query.limit(100)))


# --- mentions -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BrandVisibility:
    """A brand's visibility in the answers of one model (model_id None = all models).

    mention_rate = answers mentioning it / answers; share_of_voice = its mentions / all mentions;
    refusals are not answers (case C17).
    """

    entity_id: int
    brand: str
    model_id: int | None
    model: str
    answers_mentioning: int
    answers: int
    mention_rate: float
    share_of_voice: float
    avg_position: float


ALL_MODELS = "All models"


def brand_visibility(
    engine: Engine, first_key: str, last_key: str, *, limit: int = 30
) -> list[BrandVisibility]:
    """Per brand, per model and over all models, for batches first_key..last_key (inclusive).

    Only the `limit` brands mentioned most over all models are returned.
    """
    in_range = and_(Response.batch_key >= first_key, Response.batch_key <= last_key)
    answered = Response.output_mode != "refusal"
    top = (
        select(Mention.entity_id)
        .join(Response, Response.id == Mention.response_id)
        .where(in_range)
        .group_by(Mention.entity_id)
        .order_by(func.count().desc(), Mention.entity_id)
        .limit(limit)
    )
    per_model = (
        select(
            Mention.entity_id,
            Entity.name,
            Response.model_id,
            func.count(),
            func.avg(Mention.position),
        )
        .join(Response, Response.id == Mention.response_id)
        .join(Entity, Entity.id == Mention.entity_id)
        .where(in_range, Mention.entity_id.in_(top))
        .group_by(Mention.entity_id, Entity.name, Response.model_id)
    )
    answers_q = (
        select(Response.model_id, func.count())
        .where(in_range, answered)
        .group_by(Response.model_id)
    )
    mentions_q = (
        select(Response.model_id, func.count())
        .join(Mention, Mention.response_id == Response.id)
        .where(in_range)
        .group_by(Response.model_id)
    )
    with read_tx(engine) as conn:
        rows = conn.execute(per_model).all()
        answers = {int(m): int(n) for m, n in conn.execute(answers_q)}
        mentions = {int(m): int(n) for m, n in conn.execute(mentions_q)}
        labels = {int(i): str(label) for i, label in conn.execute(select(Model.id, Model.label))}
    return _visibility_rows(rows, answers, mentions, labels)


def _visibility_rows(
    rows: Sequence[Any], answers: dict[int, int], mentions: dict[int, int], labels: dict[int, str]
) -> list[BrandVisibility]:
    out: list[BrandVisibility] = []
    totals: dict[tuple[int, str], list[float]] = {}
    for entity_id, name, model_id, n, avg_pos in rows:
        out.append(
            _visibility(
                int(entity_id),
                name,
                int(model_id),
                labels.get(model_id, "?"),
                n=int(n),
                answers=answers.get(model_id, 0),
                mentions=mentions.get(model_id, 0),
                avg_position=float(avg_pos),
            )
        )
        acc = totals.setdefault((int(entity_id), name), [0, 0.0])
        acc[0] += int(n)
        acc[1] += float(avg_pos) * int(n)
    all_answers, all_mentions = sum(answers.values()), sum(mentions.values())
    for (entity_id, name), (n, pos_sum) in totals.items():
        out.append(
            _visibility(
                entity_id,
                name,
                None,
                ALL_MODELS,
                n=int(n),
                answers=all_answers,
                mentions=all_mentions,
                avg_position=pos_sum / n if n else 0.0,
            )
        )
    return sorted(
        out, key=lambda v: (v.model_id is not None, v.model, -v.answers_mentioning, v.brand)
    )


def _visibility(
    entity_id: int,
    name: str,
    model_id: int | None,
    model: str,
    *,
    n: int,
    answers: int,
    mentions: int,
    avg_position: float,
) -> BrandVisibility:
    # One mention per (response, entity) (uq_mentions_response_entity): mentions = answers.
    return BrandVisibility(
        entity_id,
        name,
        model_id,
        model,
        n,
        answers,
        n / answers if answers else 0.0,
        n / mentions if mentions else 0.0,
        avg_position,
    )


@dataclass(frozen=True)
class BrandDay:
    batch_key: str
    entity_id: int
    brand: str
    mention_rate: float  # answers of that day mentioning the brand / answers of that day


def brand_trend(
    engine: Engine, first_key: str, last_key: str, entity_ids: Sequence[int]
) -> list[BrandDay]:
    """Each brand's mention rate per batch (day), oldest first; at most 50 brands."""
    ids = list(entity_ids)[:50]
    if not ids:
        return []
    in_range = and_(Response.batch_key >= first_key, Response.batch_key <= last_key)
    per_day = (
        select(Response.batch_key, Mention.entity_id, Entity.name, func.count())
        .join(Mention, Mention.response_id == Response.id)
        .join(Entity, Entity.id == Mention.entity_id)
        .where(in_range, Mention.entity_id.in_(ids))
        .group_by(Response.batch_key, Mention.entity_id, Entity.name)
        .order_by(Response.batch_key)
    )
    answers_q = (
        select(Response.batch_key, func.count())
        .where(in_range, Response.output_mode != "refusal")
        .group_by(Response.batch_key)
    )
    with read_tx(engine) as conn:
        answers = {k: int(n) for k, n in conn.execute(answers_q)}
        rows = conn.execute(per_day).all()
    return [
        BrandDay(key, int(entity_id), name, int(n) / answers[key] if answers.get(key) else 0.0)
        for key, entity_id, name, n in rows
    ]


# --- workers ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerStatus(WorkerRow):
    stale: bool  # not stopped, yet not seen for longer than the stale threshold


def worker_statuses(
    engine: Engine,
    *,
    stale_after_seconds: float,
    include_stopped: bool = False,
    now: datetime | None = None,
) -> list[WorkerStatus]:
    """Registered worker processes, most recently seen first, stale ones marked."""
    cutoff = (now or utcnow()) - timedelta(seconds=stale_after_seconds)
    return [
        WorkerStatus(**asdict(w), stale=w.stopped_at is None and w.last_seen_at < cutoff)
        for w in list_workers(engine, include_stopped=include_stopped)
    ]


# --- cost estimate ---------------------------------------------------------------------------

HISTORY_BATCHES = 7  # the last batches an estimate averages tokens over


@dataclass(frozen=True)
class CostEstimate:
    """A batch's expected spend on one model, before anything is spent.

    `basis`: "history" (mean tokens of its answers over the last HISTORY_BATCHES batches),
    "max_tokens" (no history: the prompts' estimate and the full output cap), or "unpriced"
    (no prices and no provider-reported cost: `usd` None)."""

    model_id: int
    model: str
    jobs: int
    prompt_tokens_per_job: float
    completion_tokens_per_job: float
    usd_per_job: float | None
    usd: float | None
    basis: str
    daily_budget_usd: float | None


def estimate_batch(
    engine: Engine, batch_key: str, *, default_max_tokens: int
) -> list[CostEstimate]:
    """Expected USD per active model for `batch_key`: its jobs (enqueued, else active prompts x
    runs) x the mean tokens of its answers in the last batches (else max_tokens) x its prices (else
    its answers' mean provider-reported cost)."""
    with read_tx(engine) as conn:
        models = conn.execute(
            select(
                Model.id,
                Model.label,
                Model.input_usd_per_mtok,
                Model.output_usd_per_mtok,
                Model.max_tokens,
                Model.daily_budget_usd,
            )
            .where(Model.is_active)
            .order_by(Model.id)
        ).all()
        planned = _planned_jobs(conn, batch_key)
        prompt_chars = conn.scalar(
            select(func.avg(func.length(Prompt.text))).where(Prompt.is_active)
        )
        history = _token_history(conn, batch_key)
    return [
        _estimate(
            m, planned.get(m.id), history.get(m.id), float(prompt_chars or 0), default_max_tokens
        )
        for m in models
    ]


def _planned_jobs(conn: Connection, batch_key: str) -> dict[int, int]:
    enqueued = dict(
        conn.execute(
            select(J.model_id, func.count()).where(J.batch_key == batch_key).group_by(J.model_id)
        ).all()
    )
    runs = int(
        conn.scalar(select(func.coalesce(func.sum(Prompt.runs), 0)).where(Prompt.is_active)) or 0
    )
    models = conn.scalars(select(Model.id).where(Model.is_active))
    return {m: int(enqueued.get(m, runs)) for m in models}


_History = tuple[float, float, float | None]  # mean prompt tokens, completion tokens, USD


def _token_history(conn: Connection, batch_key: str) -> dict[int, _History]:
    """Mean (prompt tokens, completion tokens, provider cost USD) per model's answer over the
    last HISTORY_BATCHES batches before `batch_key`."""
    keys = list(
        conn.scalars(
            select(Response.batch_key)
            .where(Response.batch_key < batch_key)
            .group_by(Response.batch_key)
            .order_by(Response.batch_key.desc())
            .limit(HISTORY_BATCHES)
        )
    )
    if not keys:
        return {}
    provider_cost = func.avg(case((Response.cost_source == "provider", Response.cost)))
    rows = conn.execute(
        select(
            Response.model_id,
            func.avg(Response.prompt_tokens),
            func.avg(Response.completion_tokens),
            provider_cost,
        )
        .where(Response.batch_key.in_(keys), Response.prompt_tokens.is_not(None))
        .group_by(Response.model_id)
    ).all()
    return {
        int(r[0]): (float(r[1] or 0), float(r[2] or 0), None if r[3] is None else float(r[3]))
        for r in rows
    }


def _estimate(
    m: Any,
    jobs: int | None,
    history: _History | None,
    prompt_chars: float,
    default_max_tokens: int,
) -> CostEstimate:
    if history is not None:
        prompt, completion, reported = history
        basis = "history"
    else:
        prompt, completion, reported = (
            prompt_chars / 4 + 100,
            float(m.max_tokens or default_max_tokens),
            None,
        )
        basis = "max_tokens"
    if m.input_usd_per_mtok is not None and m.output_usd_per_mtok is not None:
        per_job: float | None = (
            prompt * m.input_usd_per_mtok + completion * m.output_usd_per_mtok
        ) / 1e6
    else:
        per_job = reported
        basis = basis if reported is not None else "unpriced"
    count = jobs or 0
    return CostEstimate(
        m.id,
        m.label,
        count,
        round(prompt, 1),
        round(completion, 1),
        per_job,
        None if per_job is None else per_job * count,
        basis,
        m.daily_budget_usd,
    )


# --- metrics ---------------------------------------------------------------------------------

LATENCY_BUCKETS_S = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)


@dataclass(frozen=True)
class ModelMetrics:
    """One model's figures for Prometheus (runner.worker.metrics), all from the database."""

    model: str
    provider: str
    jobs: dict[str, int]  # by status
    attempts: dict[tuple[str, str], int]  # by (outcome, error_kind or "")
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    latency_buckets: tuple[int, ...]  # cumulative counts for LATENCY_BUCKETS_S, then +Inf
    latency_sum_s: float
    in_flight: int
    # max_concurrency, rpm, tpm, learned_rpm, learned_tpm, concurrency, and what the provider's
    # last x-ratelimit-remaining-* said was left (remaining_requests, remaining_tokens)
    limits: dict[str, float]
    paused: bool


def metrics_snapshot(engine: Engine) -> list[ModelMetrics]:
    """Every model's jobs, attempts, spend, call latency, in-flight jobs, limits and pause, over
    all batches (counters as totals of job_attempts: monotonic while rows are kept)."""
    with read_tx(engine) as conn:
        models = conn.execute(
            select(
                Model.id,
                Model.name,
                Model.provider,
                Model.max_concurrency,
                Model.rpm,
                Model.tpm,
                Model.paused_at,
                ModelPacing.learned_rpm,
                ModelPacing.learned_tpm,
                ModelPacing.concurrency,
                ModelPacing.remaining_requests,
                ModelPacing.remaining_tokens,
            )
            .outerjoin(ModelPacing, ModelPacing.model_id == Model.id)
            .order_by(Model.id)
        ).all()
        jobs = _grouped(
            conn, select(J.model_id, J.status, func.count()).group_by(J.model_id, J.status)
        )
        attempts = _attempt_counts(conn)
        spend = _attempt_spend(conn)
    return [
        _model_metrics(m, jobs.get(m.id, {}), attempts.get(m.id, {}), spend.get(m.id))
        for m in models
    ]


def _grouped(conn: Connection, query: Any) -> dict[int, dict[str, int]]:
    out: dict[int, dict[str, int]] = {}
    for model_id, key, n in conn.execute(query):
        out.setdefault(int(model_id), {})[str(key)] = int(n)
    return out


def _attempt_counts(conn: Connection) -> dict[int, dict[tuple[str, str], int]]:
    query = (
        select(J.model_id, JobAttempt.outcome, JobAttempt.error_kind, func.count())
        .join(J, J.id == JobAttempt.job_id)
        .group_by(J.model_id, JobAttempt.outcome, JobAttempt.error_kind)
    )
    out: dict[int, dict[tuple[str, str], int]] = {}
    for model_id, outcome, kind, n in conn.execute(query):
        out.setdefault(int(model_id), {})[(str(outcome), kind or "")] = int(n)
    return out


def _attempt_spend(conn: Connection) -> dict[int, tuple[Any, ...]]:
    latency = JobAttempt.latency_ms
    buckets = [func.sum(case((latency <= int(b * 1000), 1), else_=0)) for b in LATENCY_BUCKETS_S]
    query = (
        select(
            J.model_id,
            func.coalesce(func.sum(JobAttempt.prompt_tokens), 0),
            func.coalesce(func.sum(JobAttempt.completion_tokens), 0),
            func.coalesce(func.sum(JobAttempt.cost), 0.0),
            func.count(latency),
            func.coalesce(func.sum(latency), 0),
            *buckets,
        )
        .join(J, J.id == JobAttempt.job_id)
        .group_by(J.model_id)
    )
    return {int(r[0]): tuple(r[1:]) for r in conn.execute(query)}


def _model_metrics(
    m: Any,
    jobs: dict[str, int],
    attempts: dict[tuple[str, str], int],
    spend: tuple[Any, ...] | None,
) -> ModelMetrics:
    tokens_in, tokens_out, usd, timed, latency_ms, *buckets = spend or (0, 0, 0.0, 0, 0)
    limits = {
        "max_concurrency": m.max_concurrency,
        "rpm": m.rpm,
        "tpm": m.tpm,
        "learned_rpm": m.learned_rpm,
        "learned_tpm": m.learned_tpm,
        "concurrency": m.concurrency,
        "remaining_requests": m.remaining_requests,
        "remaining_tokens": m.remaining_tokens,
    }
    return ModelMetrics(
        model=m.name,
        provider=m.provider,
        jobs={s.value: jobs.get(s.value, 0) for s in JobStatus},
        attempts=attempts,
        prompt_tokens=int(tokens_in or 0),
        completion_tokens=int(tokens_out or 0),
        cost_usd=float(usd or 0.0),
        latency_buckets=(*(int(b or 0) for b in buckets), int(timed or 0)) if spend else (),
        latency_sum_s=float(latency_ms or 0) / 1000,
        in_flight=jobs.get(JobStatus.PROCESSING.value, 0),
        limits={k: float(v) for k, v in limits.items() if v is not None},
        paused=m.paused_at is not None,
    )
