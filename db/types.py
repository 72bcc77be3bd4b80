"""Typed values that cross the `db` boundary (and process boundaries): enums, frozen dataclasses.

Only plain data lives here: a worker process receives a `ClaimedJob`, sends back nothing but the
outcome dataclasses, and never holds an SDK or SQLAlchemy object across a process boundary
(case C5).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar


class JobStatus(enum.StrEnum):
    """Where a job is in its lifecycle (DESIGN.md, "Job lifecycle")."""

    QUEUED = "queued"  # waiting to be claimed once scheduled_for has passed
    PROCESSING = "processing"  # claimed by a worker that holds the lease
    SUCCEEDED = "succeeded"  # the answer (or a refusal) and its mentions are saved
    FAILED = "failed"  # permanent error, or attempts spent
    SKIPPED = "skipped"  # its prompt or model was deactivated before it ran
    CANCELLED = "cancelled"  # an operator cancelled it; a late result is dropped


ENDED_STATUSES = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.SKIPPED, JobStatus.CANCELLED}
)
REQUEUEABLE_STATUSES = frozenset({JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.SKIPPED})
CANCELLABLE_STATUSES = frozenset({JobStatus.QUEUED, JobStatus.PROCESSING})


class ErrorKind(enum.StrEnum):
    """Why an attempt failed; decides retry (transient) or fail (permanent). DESIGN.md, "Model
    calls"."""

    RATE_LIMITED = "rate_limited"  # HTTP 429, 402 with Retry-After, or a 200-with-error code 429
    UNAVAILABLE = "unavailable"  # 502/503/529, or the connection refused before the request went
    TIMEOUT = "timeout"  # no answer within the request timeout (HTTP 408 too)
    CONNECTION = "connection"  # connection reset / dropped after the request was sent
    SERVER_ERROR = "server_error"  # HTTP 500 and other 5xx (and 409, which OpenAI lists)
    BAD_REQUEST = "bad_request"  # HTTP 400/422 not explained by json_schema support
    AUTH = "auth"  # HTTP 401: a missing or wrong API key
    FORBIDDEN = "forbidden"  # HTTP 403 for the account: no access to the model, region, permission
    FLAGGED = "flagged"  # HTTP 403 for the prompt: moderation flagged the input (OpenRouter)
    NOT_FOUND = "not_found"  # HTTP 404: the model id does not exist at the provider
    PAYMENT_REQUIRED = "payment_required"  # HTTP 402 without Retry-After: credits exhausted
    QUOTA_EXCEEDED = "quota_exceeded"  # HTTP 429 insufficient_quota: the plan's quota is spent
    PROVIDER_ERROR = "provider_error"  # the answer ended in error mid-generation (a choice's error)
    INVALID_OUTPUT = "invalid_output"  # blank or unparseable answer even after the fallback
    TRUNCATED = "truncated"  # finish_reason 'length': the answer was cut off
    LEASE_EXPIRED = "lease_expired"  # the worker holding the job vanished (reaper)
    DEADLINE = "deadline"  # not done by its batch's deadline (deferred or retried past it)
    CONFIG = "config"  # the job cannot run with this configuration (e.g. missing API key)
    INTERNAL = "internal"  # a bug in promptbatch while handling the job (logged with traceback)

    @property
    def transient(self) -> bool:
        """True when another attempt may succeed."""
        return self in _TRANSIENT

    @property
    def model_level(self) -> bool:
        """True when the error is the account's or the model's, not the job's: every job of the
        model would meet it (401, account-level 403, 402 without Retry-After, insufficient_quota,
        404). The job is deferred and the model's failure streak grows; K in a row pause it."""
        return self in _MODEL_LEVEL

    @property
    def deferred(self) -> bool:
        """True when the provider did not serve the call (a limit, an overload, a refused
        connection): the job waits and is tried again without spending an attempt."""
        return self in _DEFERRED


_TRANSIENT = frozenset(
    {
        ErrorKind.RATE_LIMITED,
        ErrorKind.UNAVAILABLE,
        ErrorKind.TIMEOUT,
        ErrorKind.CONNECTION,
        ErrorKind.SERVER_ERROR,
        ErrorKind.LEASE_EXPIRED,
        ErrorKind.PROVIDER_ERROR,
    }
)
_MODEL_LEVEL = frozenset(
    {
        ErrorKind.AUTH,
        ErrorKind.FORBIDDEN,
        ErrorKind.PAYMENT_REQUIRED,
        ErrorKind.QUOTA_EXCEEDED,
        ErrorKind.NOT_FOUND,
    }
)
_DEFERRED = frozenset({ErrorKind.RATE_LIMITED, ErrorKind.UNAVAILABLE})
# The kinds a job's error_kind holds while it waits after a deferral (status and console count
# these as "deferred").
DEFERRED_KINDS = _DEFERRED | _MODEL_LEVEL


class AttemptOutcome(enum.StrEnum):
    """How one attempt of a job ended, as job_attempts.outcome records it."""

    SUCCEEDED = "succeeded"  # the answer (or a refusal) was saved
    RETRY = "retry"  # a transient error with attempts left: queued again after the backoff
    DEFERRED = "deferred"  # not served (a limit, an overload) or a model-level error: queued
    # again when the limit resets, no attempt spent
    FAILED = "failed"  # a permanent error, or the last attempt
    LOST = "lost"  # the lease expired with its worker (the reaper wrote this row)
    CANCELLED = "cancelled"  # an operator cancelled the job while a worker held it


class AuditAction(enum.StrEnum):
    """What an audit_log row records."""

    ENQUEUE = "enqueue"  # a batch's jobs created (count: how many were new)
    REQUEUE = "requeue"  # an operator re-queued jobs
    CANCEL = "cancel"  # an operator cancelled jobs
    BATCH_MISSED = "batch_missed"  # the scheduler found a day with no batch (runner was down)
    PROMPTS_IMPORT = "prompts_import"
    PROMPT_UPDATE = "prompt_update"
    MODEL_ADD = "model_add"
    MODEL_UPDATE = "model_update"
    MODEL_PAUSE = "model_pause"  # an operator paused a model (a runner's pause is the model row's)
    MODEL_RESUME = "model_resume"  # an operator resumed a paused model


class OutputMode(enum.StrEnum):
    """How the saved answer was obtained."""

    STRUCTURED = "structured"  # json_schema response validated by pydantic
    JSON = "json"  # JSON recovered from plain content (code fences stripped)
    TEXT_FALLBACK = "text_fallback"  # plain text; mentions found from the entity catalog
    REFUSAL = "refusal"  # the model refused; saved with no mentions


class CostSource(enum.StrEnum):
    """Where a stored USD cost comes from."""

    PROVIDER = "provider"  # the provider's own `usage.cost`: what was charged (OpenRouter)
    ESTIMATE = "estimate"  # tokens x the model's per-million-token prices


class Provider(enum.StrEnum):
    """Where a model is served."""

    OPENAI = "openai"
    OPENROUTER = "openrouter"
    COMPATIBLE = "compatible"  # any OpenAI-compatible base_url (vLLM, Ollama, the simulator)


@dataclass(frozen=True)
class ClaimedJob:
    """A job a worker holds: everything needed to run it, as plain data.

    `attempt` is the job's attempt_count after the claim (1 = first try); with `worker_id` it fences
    every later write for the job.
    """

    id: int
    prompt_id: int
    model_id: int
    run_index: int
    batch_key: str
    attempt: int
    max_attempts: int
    worker_id: str
    prompt_text: str
    provider: str
    model_name: str
    base_url: str | None
    supports_json_schema: bool | None
    input_usd_per_mtok: float | None
    output_usd_per_mtok: float | None
    started_at: datetime
    max_tokens: int | None = None  # None: the runner's default (PROMPTBATCH_DEFAULT_MAX_TOKENS)
    temperature: float | None = None  # None: not sent (the provider's default)
    seed: int | None = None  # None: not sent
    custom_host: bool = False  # the operator allowed this model's key to go to its base_url
    rpm: int | None = None  # the model's requests per minute across all runners (db.pacing)
    tpm: int | None = None  # the model's tokens per minute across all runners
    failure_streak: int = 0  # its model's model-level failures in a row when it was claimed
    deferrals: int = 0  # earlier claims the provider did not serve (they spent no attempt)
    deadline_at: datetime | None = None  # its batch's deadline: no retry or deferral past it

    @property
    def key(self) -> tuple[int, int]:
        """(id, attempt): this claim of the job (a worker may hold two attempts of one job)."""
        return (self.id, self.attempt)


@dataclass(frozen=True)
class CallUsage:
    """What one attempt's paid calls used: a fallback makes two calls, and both are paid.

    Tokens as the provider's `usage` reports them (None when no call reported any); `cost_usd` in
    USD, from the provider's `usage.cost` when every call reported one (`cost_source` PROVIDER),
    else estimated from the model's prices (ESTIMATE), else None (unpriced); `request_ids` in call
    order.
    """

    calls: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float | None = None
    cost_source: CostSource | None = None
    request_ids: tuple[str, ...] = ()

    def plus(self, other: CallUsage) -> CallUsage:
        """The usage of both calls together."""
        source = (
            other.cost_source
            if self.calls == 0
            else (self.cost_source if self.cost_source == other.cost_source else None)
        )
        return CallUsage(
            calls=self.calls + other.calls,
            prompt_tokens=_add(self.prompt_tokens, other.prompt_tokens),
            completion_tokens=_add(self.completion_tokens, other.completion_tokens),
            cost_usd=_add(self.cost_usd, other.cost_usd) if source else None,
            cost_source=source,
            request_ids=self.request_ids + other.request_ids,
        )

    @property
    def request_id(self) -> str | None:
        """The calls' request ids, space-separated (None when no call carried one)."""
        return " ".join(self.request_ids)[:200] or None


_N = TypeVar("_N", int, float)


def _add(a: _N | None, b: _N | None) -> _N | None:
    return b if a is None else (a if b is None else a + b)


@dataclass(frozen=True)
class MentionRecord:
    """One brand mentioned in an answer; positions come from the answer text (1 = first)."""

    raw_name: str
    display: str
    key: str
    position: int
    char_offset: int


@dataclass(frozen=True)
class AnswerRecord:
    """A model answer to save with its job's success."""

    answer: str | None
    raw_body: str
    output_mode: OutputMode
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_ms: int
    request_id: str | None
    mentions: tuple[MentionRecord, ...] = field(default_factory=tuple)
    cost_usd: float | None = None  # USD of the answering call; None: unpriced
    cost_source: CostSource | None = None


@dataclass(frozen=True)
class Completion:
    """A claimed job's success to record: its answer, and what the attempt's calls used (the
    attempt row; a fallback's first call included)."""

    job: ClaimedJob
    answer: AnswerRecord
    usage: CallUsage = field(default_factory=CallUsage)


@dataclass(frozen=True)
class FailureRecord:
    """Why an attempt failed; `retry_after` (seconds) is the provider's Retry-After, if any."""

    kind: ErrorKind
    message: str
    latency_ms: int | None = None
    retry_after: float | None = None
    request_id: str | None = None
    usage: CallUsage | None = None  # what the attempt's answered calls used, if any
    raw_body: str | None = None  # the last answered body (partial text of an errored answer)


@dataclass(frozen=True)
class Failure:
    """A claimed job's failed attempt to record, and the wait before it is tried again (seconds;
    used when it is deferred, or retried with attempts left).

    `pause_after`: model-level failures in a row (ErrorKind.model_level) that pause the model;
    0 never pauses, and a model-level failure then fails the job.
    """

    job: ClaimedJob
    failure: FailureRecord
    retry_in_seconds: float = 0.0
    pause_after: int = 3

    @property
    def defers(self) -> bool:
        """Whether the job waits without spending an attempt (see `defers`)."""
        return defers(self.failure.kind, self.pause_after)


def defers(kind: ErrorKind, pause_after: int) -> bool:
    """Whether a failure of `kind` defers its job (no attempt spent): the provider did not serve
    the call, or the error is the model's while pausing is on (`pause_after` > 0)."""
    return kind.deferred or (kind.model_level and pause_after > 0)


Outcome = Completion | Failure  # what a job thread hands to its worker's group commit


class Recorded(enum.StrEnum):
    """What writing an outcome did with its job."""

    SUCCEEDED = "succeeded"  # the answer and its mentions are saved
    RETRY = "retry"  # queued again after the backoff
    DEFERRED = "deferred"  # queued again when the limit resets; no attempt spent
    PAUSED = "paused"  # deferred, and its model's failure streak paused the model
    FAILED = "failed"  # permanent error, or attempts spent
    DROPPED = "dropped"  # the fence matched nothing: the worker no longer held the job


def pause_text(reason: str | None, since: datetime) -> str:
    """'paused: <reason> since <UTC time>': how `models list`, `status` and the console say it."""
    return f"paused: {reason or 'no reason given'} since {since:%Y-%m-%d %H:%M:%S} UTC"


@dataclass(frozen=True)
class EnqueueResult:
    """What an enqueue did: jobs `created` now and `existing` from an earlier enqueue."""

    batch_key: str
    created: int
    existing: int
