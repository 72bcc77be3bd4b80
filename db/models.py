"""The schema as SQLAlchemy 2 typed models (DESIGN.md, "Tables").

Alembic migrations in `db/migrations` are the only way the schema is created; these models are what
the migrations were written from and what the named operations in `db/` query.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import DateTime, TypeDecorator

# SQLite has no BIGINT autoincrement; PostgreSQL ids should not run out at 2^31.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both backends (SQLite stores them naive, in UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given where a UTC datetime is required")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Prompt(Base):
    __tablename__ = "prompts"
    __table_args__ = (
        CheckConstraint("runs >= 1", name="ck_prompts_runs"),
        CheckConstraint("length(text) BETWEEN 1 AND 4000", name="ck_prompts_text_length"),
        Index(
            "uq_prompts_active_text",
            "text",
            unique=True,
            sqlite_where=text("is_active"),
            postgresql_where=text("is_active"),
        ),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    category: Mapped[str | None] = mapped_column(String(100))
    runs: Mapped[int] = mapped_column(Integer, default=1)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    last_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Model(Base):
    __tablename__ = "models"
    __table_args__ = (
        CheckConstraint(
            "provider IN ('openai', 'openrouter', 'compatible')", name="ck_models_provider"
        ),
        CheckConstraint(
            "max_concurrency IS NULL OR max_concurrency >= 1", name="ck_models_max_concurrency"
        ),
        CheckConstraint(
            "max_tokens IS NULL OR max_tokens BETWEEN 1 AND 1000000", name="ck_models_max_tokens"
        ),
        CheckConstraint(
            "temperature IS NULL OR temperature BETWEEN 0 AND 2", name="ck_models_temperature"
        ),
        CheckConstraint("rpm IS NULL OR rpm >= 1", name="ck_models_rpm"),
        CheckConstraint("tpm IS NULL OR tpm >= 1", name="ck_models_tpm"),
        CheckConstraint(
            "daily_budget_usd IS NULL OR daily_budget_usd > 0", name="ck_models_daily_budget_usd"
        ),
        UniqueConstraint("provider", "name", name="uq_models_provider_name"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    provider: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(200))
    label: Mapped[str] = mapped_column(String(200))
    base_url: Mapped[str | None] = mapped_column(String(500))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    max_concurrency: Mapped[int | None] = mapped_column(Integer)
    # None = not known yet; False once the provider rejected json_schema (case C16).
    supports_json_schema: Mapped[bool | None] = mapped_column(Boolean)
    input_usd_per_mtok: Mapped[float | None] = mapped_column(Float)
    output_usd_per_mtok: Mapped[float | None] = mapped_column(Float)
    # Generation settings; None = the runner's default (max_tokens) or the provider's (the rest).
    max_tokens: Mapped[int | None] = mapped_column(Integer)
    temperature: Mapped[float | None] = mapped_column(Float)
    seed: Mapped[int | None] = mapped_column(BigInteger)
    # True: the operator allowed an openai/openrouter model's key to go to its base_url's host.
    custom_host: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    # Requests and tokens per minute for all runners together (db.pacing); None: unlimited.
    rpm: Mapped[int | None] = mapped_column(Integer)
    tpm: Mapped[int | None] = mapped_column(BigInteger)
    daily_budget_usd: Mapped[float | None] = mapped_column(Float)  # USD per UTC day; None: none
    # Paused: no job of the model is claimed until `models resume` (reason: the error, or
    # "budget", or the operator's). failure_streak: consecutive model-level failures since the
    # last success; while it is above 0 the model is probed one call at a time.
    paused_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    paused_reason: Mapped[str | None] = mapped_column(String(500))
    failure_streak: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ModelPacing(Base):
    """Where a rate-limited model's calls stand, shared by every runner (db.pacing): the next
    moment a request, and a token reservation, may start."""

    __tablename__ = "model_pacing"
    model_id: Mapped[int] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), primary_key=True
    )
    next_request_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    next_tokens_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The provider's own limits as its headers last stated them (x-ratelimit-limit-*): the
    # pace of a model without --rpm/--tpm.
    learned_rpm: Mapped[int | None] = mapped_column(Integer)
    learned_tpm: Mapped[int | None] = mapped_column(BigInteger)
    learned_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # What the last answer's x-ratelimit-remaining-* said was left (written at most once a
    # second per worker process; learned_at is when).
    remaining_requests: Mapped[int | None] = mapped_column(Integer)
    remaining_tokens: Mapped[int | None] = mapped_column(BigInteger)
    # Jobs in flight the provider takes, adapted across all runners (AIMD: +1/c per answer,
    # halved on a 429 at most once a second); None until its first 429. Caps the claim.
    concurrency: Mapped[float | None] = mapped_column(Float)
    decreased_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ModelSpend(Base):
    """USD a model's attempts spent on one UTC day (YYYY-MM-DD), as recorded with them."""

    __tablename__ = "model_spend"
    model_id: Mapped[int] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), primary_key=True
    )
    day: Mapped[str] = mapped_column(String(10), primary_key=True)
    usd: Mapped[float] = mapped_column(Float)


class PromptJob(Base):
    __tablename__ = "prompt_jobs"
    __table_args__ = (
        UniqueConstraint(
            "prompt_id", "model_id", "run_index", "batch_key", name="uq_prompt_jobs_key"
        ),
        CheckConstraint(
            "status IN ('queued', 'processing', 'succeeded', 'failed', 'skipped', 'cancelled')",
            name="ck_prompt_jobs_status",
        ),
        CheckConstraint("run_index >= 0", name="ck_prompt_jobs_run_index"),
        Index("ix_prompt_jobs_status", "status"),
        Index("ix_prompt_jobs_scheduled_for", "scheduled_for"),
        Index("ix_prompt_jobs_prompt_id", "prompt_id"),
        Index("ix_prompt_jobs_model_id", "model_id"),
        Index("ix_prompt_jobs_batch_key_status", "batch_key", "status"),
        Index("ix_prompt_jobs_batch_key_finished_at", "batch_key", "finished_at"),
        # The claim reads only queued rows in claim order: a small partial index stays hot.
        Index(
            "ix_prompt_jobs_claim",
            "priority",
            "scheduled_for",
            "id",
            sqlite_where=text("status = 'queued'"),
            postgresql_where=text("status = 'queued'"),
        ),
        # The deadline sweep reads only queued rows by deadline.
        Index(
            "ix_prompt_jobs_deadline",
            "deadline_at",
            sqlite_where=text("status = 'queued'"),
            postgresql_where=text("status = 'queued'"),
        ),
        # The reaper reads only processing rows by lease expiry.
        Index(
            "ix_prompt_jobs_lease",
            "lease_expires_at",
            sqlite_where=text("status = 'processing'"),
            postgresql_where=text("status = 'processing'"),
        ),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    run_index: Mapped[int] = mapped_column(Integer)
    batch_key: Mapped[str] = mapped_column(String(10))
    status: Mapped[str] = mapped_column(String(20), default="queued")
    priority: Mapped[int] = mapped_column(Integer, default=0)
    error_kind: Mapped[str | None] = mapped_column(String(40))
    error_message: Mapped[str | None] = mapped_column(Text)
    # attempt_count counts claims (the fence token, job_attempts.attempt); a claim that spent no
    # attempt (deferred by the provider, or its lease lost with its worker) raises max_attempts
    # by one and counts in deferrals or interruptions.
    attempt_count: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    deferrals: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    interruptions: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    deadline_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # queued past it: failed
    scheduled_for: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    locked_by: Mapped[str | None] = mapped_column(String(100))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class JobAttempt(Base):
    __tablename__ = "job_attempts"
    __table_args__ = (UniqueConstraint("job_id", "attempt", name="uq_job_attempts_job_attempt"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("prompt_jobs.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    worker_id: Mapped[str | None] = mapped_column(String(100))
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime)
    outcome: Mapped[str] = mapped_column(String(20))  # a db.types.AttemptOutcome value
    error_kind: Mapped[str | None] = mapped_column(String(40))
    error_message: Mapped[str | None] = mapped_column(Text)
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    request_id: Mapped[str | None] = mapped_column(String(200))
    # What the attempt's paid calls spent (a fallback makes two calls): tokens, USD and whether
    # the USD is what the provider reported (db.types.CostSource). None: nothing was answered.
    calls: Mapped[int | None] = mapped_column(Integer)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    cost: Mapped[float | None] = mapped_column(Float)
    cost_source: Mapped[str | None] = mapped_column(String(20))
    raw_body: Mapped[str | None] = mapped_column(Text)  # a failed attempt's body, for diagnosis


class Response(Base):
    __tablename__ = "responses"
    __table_args__ = (
        CheckConstraint(
            "output_mode IN ('structured', 'json', 'text_fallback', 'refusal')",
            name="ck_responses_output_mode",
        ),
        Index("ix_responses_batch_key", "batch_key"),
        Index("ix_responses_model_id", "model_id"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_id: Mapped[int] = mapped_column(
        ForeignKey("prompt_jobs.id", ondelete="CASCADE"), unique=True
    )
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    batch_key: Mapped[str] = mapped_column(String(10))
    run_index: Mapped[int] = mapped_column(Integer)
    answer: Mapped[str | None] = mapped_column(Text)
    raw_body: Mapped[str] = mapped_column(Text)
    output_mode: Mapped[str] = mapped_column(String(20))
    finish_reason: Mapped[str | None] = mapped_column(String(40))
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    cost: Mapped[float | None] = mapped_column(Float)  # USD
    cost_source: Mapped[str | None] = mapped_column(String(20))  # db.types.CostSource
    latency_ms: Mapped[int] = mapped_column(Integer)
    request_id: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Entity(Base):
    __tablename__ = "entities"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(300))
    key: Mapped[str] = mapped_column(String(300), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class EntityAlias(Base):
    __tablename__ = "entity_aliases"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    entity_id: Mapped[int] = mapped_column(ForeignKey("entities.id", ondelete="CASCADE"))
    alias: Mapped[str] = mapped_column(String(300))
    key: Mapped[str] = mapped_column(String(300), unique=True)


class Mention(Base):
    __tablename__ = "mentions"
    __table_args__ = (
        UniqueConstraint("response_id", "entity_id", name="uq_mentions_response_entity"),
        Index("ix_mentions_entity_id", "entity_id"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    response_id: Mapped[int] = mapped_column(ForeignKey("responses.id", ondelete="CASCADE"))
    entity_id: Mapped[int] = mapped_column(ForeignKey("entities.id", ondelete="CASCADE"))
    raw_name: Mapped[str] = mapped_column(String(300))
    position: Mapped[int] = mapped_column(Integer)  # 1 = first mentioned in the answer
    char_offset: Mapped[int] = mapped_column(Integer)


class Worker(Base):
    __tablename__ = "workers"
    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    runner_id: Mapped[str] = mapped_column(String(100))
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    processes: Mapped[int] = mapped_column(Integer)
    concurrency: Mapped[int] = mapped_column(Integer)  # calls in flight per process
    in_flight: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AuditLog(Base):
    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_at", "at"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(40))
    target: Mapped[str] = mapped_column(Text)  # the filter or the job ids, as JSON
    count: Mapped[int] = mapped_column(Integer)
