"""Running one claimed job: ask the model, extract mentions, record the outcome.

A job is a coroutine on its worker process's event loop (issue 11): a call in flight costs a
task and a socket, not a thread. Every blocking database statement a job makes (pacing, the
model gate, a catalog refresh) runs on the process's small database executor (`JobContext.db`),
and its outcome is written by the group commit, so the loop never waits on the database.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

from db import results
from db.engine import Engine
from db.errors import DatabaseUnavailable
from db.types import (
    AnswerRecord,
    ClaimedJob,
    Completion,
    ErrorKind,
    Failure,
    FailureRecord,
    MentionRecord,
    OutputMode,
    Recorded,
    defers,
)
from runner.extraction.find import extract_from_text, order_mentions
from runner.extraction.resolve import Catalog
from runner.llm.answers import ModelReply
from runner.llm.client import ModelClient
from runner.llm.errors import CallFailed
from runner.llm.ratelimits import RateLimits
from runner.settings import Settings
from runner.worker import admission
from runner.worker.backoff import backoff_seconds
from runner.worker.catalog_cache import CatalogCache
from runner.worker.group_commit import GroupCommit
from runner.worker.learned import LearnedLimits
from runner.worker.outcome import JobOutcome
from runner.worker.spacing import StartSpacing

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class JobContext:
    """What a job coroutine needs; one per worker process."""

    settings: Settings
    engine: Engine
    client: ModelClient
    catalog: CatalogCache
    outcomes: GroupCommit  # writes every outcome (its process's group commit)
    call_slots: asyncio.Semaphore | None = None  # bounds concurrent model calls (concurrency)
    draining: threading.Event | None = None  # set when the worker stops: start no more calls
    learned: LearnedLimits | None = None  # the providers' stated limits (pace without --rpm)
    # model id -> when this process last saw one of its model-level failures (UTC)
    model_failures: dict[int, datetime] = field(default_factory=dict)
    # The engine of the jobs' own short statements (pacing, the model gate): one connection per
    # process, never one per call in flight (3 runners x 2 x 16 > max_connections 100, found).
    control_engine: Engine | None = None
    # Runs the jobs' blocking statements off the event loop (None: the loop's default executor)
    db_executor: Executor | None = None
    # (job id, attempt) of the attempts whose model call has started: a stopping worker lets
    # these finish and cancels the others (prefetched, waiting for a slot or a pacing place).
    calling: set[tuple[int, int]] = field(default_factory=set)
    # (job id, attempt) of the held jobs waiting for a call slot: at a batch's tail the worker
    # hands these back for a process with a free slot (Worker._hand_back_waiting)
    awaiting_slot: set[tuple[int, int]] = field(default_factory=set)
    gates: admission.GateReads = field(default_factory=admission.GateReads)
    # (job id, attempt) -> time.monotonic() its lease runs out, as its claim and the heartbeats
    # set it (0: a heartbeat found it lost: cancelled, taken over, or claimed again by this
    # worker after a freeze); an attempt past it is not called (issue 12). By attempt, since
    # one worker may hold two attempts of a job (the earlier must not call, the later must).
    leases: dict[tuple[int, int], float] = field(default_factory=dict)
    # Spaces this process's call starts by what a job costs it (None: start at once)
    spacing: StartSpacing | None = None

    async def db(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` (a blocking database call) on the database executor."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.db_executor, partial(fn, *args, **kwargs))

    @property
    def control(self) -> Engine:
        return self.control_engine or self.engine

    def pace_of(self, job: ClaimedJob) -> tuple[int | None, int | None]:
        """(rpm, tpm) to pace `job` by (its model's, else what its provider stated)."""
        return self.learned.pace_of(job) if self.learned else (job.rpm, job.tpm)


async def run_job(ctx: JobContext, job: ClaimedJob) -> JobOutcome:
    """Run `job` to a recorded outcome (a coroutine on the worker's loop). Never raises for a
    job's own failure."""
    async with AsyncExitStack() as slot:
        if ctx.call_slots is not None:
            ctx.awaiting_slot.add(job.key)
            try:
                await slot.enter_async_context(ctx.call_slots)
            finally:
                ctx.awaiting_slot.discard(job.key)
        if ctx.draining is not None and ctx.draining.is_set():
            return JobOutcome.NOT_STARTED
        if (held := await admission.pace(ctx, job) or await admission.gate(ctx, job)) is not None:
            return held
        if ctx.spacing is not None:
            await ctx.spacing.wait()
        if ctx.draining is not None and ctx.draining.is_set():  # no await from here to the add
            return JobOutcome.NOT_STARTED
        if ctx.leases.get(job.key, math.inf) <= time.monotonic():
            _log_lost_before_call(job)
            return JobOutcome.DROPPED
        ctx.calling.add(job.key)  # from here on the job runs to its outcome, a stop or not
        try:
            return await _call_and_record(ctx, job, slot)
        finally:
            ctx.calling.discard(job.key)


async def _call_and_record(ctx: JobContext, job: ClaimedJob, slot: AsyncExitStack) -> JobOutcome:
    started = time.monotonic()
    outcome = await _ask(ctx, job)
    latency_ms = _ms_since(started)
    await slot.aclose()  # the call slot is free while the answer is being recorded
    await admission.settle_tokens(ctx, job, outcome)
    if isinstance(outcome, ModelReply):
        return await _record_success(ctx, job, outcome, latency_ms)
    return await _record_failure(ctx, job, replace(outcome, latency_ms=latency_ms))


async def _ask(ctx: JobContext, job: ClaimedJob) -> ModelReply | FailureRecord:
    """The model's reply, or the failure to record (latency filled in by the caller)."""
    try:
        reply = await ctx.client.ask_async(job)
    except CallFailed as exc:
        await _learn(ctx, job, exc.limits)
        return FailureRecord(
            exc.kind,
            str(exc),
            retry_after=exc.retry_after,
            request_id=exc.request_id,
            usage=exc.usage,
            raw_body=exc.raw_body,
        )
    except Exception as exc:  # a bug of ours: the job fails visibly, the worker lives on
        log.exception("job crashed", extra={"action": "job_crashed", "job_id": job.id})
        return FailureRecord(ErrorKind.INTERNAL, f"{type(exc).__name__}: {exc}")
    await _learn(ctx, job, reply.limits)
    return reply


async def _learn(ctx: JobContext, job: ClaimedJob, limits: RateLimits | None) -> None:
    if ctx.learned and (due := ctx.learned.learn(job, limits)) is not None:
        await ctx.db(ctx.learned.write, job, due)


async def _record_success(
    ctx: JobContext, job: ClaimedJob, reply: ModelReply, latency_ms: int
) -> JobOutcome:
    if reply.schema_unsupported:
        await _mark_schema_unsupported(ctx, job)
        log.info(
            "model rejects or ignores json_schema; using the plain call from now on",
            extra={"action": "json_schema_unsupported", "model": job.model_name},
        )
    answer = AnswerRecord(
        answer=reply.answer,
        raw_body=reply.raw_body,
        output_mode=reply.output_mode,
        finish_reason=reply.finish_reason,
        prompt_tokens=reply.call.prompt_tokens,
        completion_tokens=reply.call.completion_tokens,
        latency_ms=latency_ms,
        request_id=reply.call.request_id,
        mentions=find_mentions(reply, await _catalog(ctx)),
        cost_usd=reply.call.cost_usd,
        cost_source=reply.call.cost_source,
    )
    if await ctx.outcomes.submit(Completion(job, answer, reply.usage)) is Recorded.DROPPED:
        _log_dropped(job)
        return JobOutcome.DROPPED
    log.info(
        "job succeeded",
        extra={
            "action": "job_succeeded",
            "job_id": job.id,
            "model": job.model_name,
            "attempt": job.attempt,
            "latency_ms": latency_ms,
        },
    )
    return JobOutcome.SUCCEEDED


# How a recorded failure is logged: level, what happened ({delay}: seconds until it runs again,
# {k}: PAUSE_AFTER), action, and what the job thread returns.
_FAILURE_LOGS = {
    Recorded.PAUSED: (
        logging.ERROR,
        "model paused after {k} model-level failures in a row",
        "model_paused",
        JobOutcome.DEFERRED,
    ),
    Recorded.DEFERRED: (
        logging.WARNING,
        "job deferred {delay:.1f}s (no attempt spent)",
        "job_deferred",
        JobOutcome.DEFERRED,
    ),
    Recorded.RETRY: (
        logging.WARNING,
        "job will be retried in {delay:.1f}s",
        "job_retry",
        JobOutcome.RETRY,
    ),
    Recorded.FAILED: (logging.ERROR, "job failed", "job_failed", JobOutcome.FAILED),
}


async def _catalog(ctx: JobContext) -> Catalog:
    """The catalog to extract with: the cached one, reloaded off the loop when stale."""
    catalog = ctx.catalog.fresh()
    return catalog if catalog is not None else await ctx.db(ctx.catalog.get)


async def _mark_schema_unsupported(ctx: JobContext, job: ClaimedJob) -> None:
    try:
        await ctx.db(results.mark_json_schema_unsupported, ctx.control, job.model_id)
    except DatabaseUnavailable as exc:  # the next answer in prose marks it; keep this one
        log.warning("could not mark the model: %s", exc, extra={"action": "model_mark_failed"})
        return
    log.info(
        "model rejects or ignores json_schema; using the plain call from now on",
        extra={"action": "json_schema_unsupported", "model": job.model_name},
    )


async def _record_failure(ctx: JobContext, job: ClaimedJob, failure: FailureRecord) -> JobOutcome:
    s = ctx.settings
    if failure.kind.model_level and s.pause_after > 0:  # hold this process's other calls now,
        ctx.model_failures[job.model_id] = datetime.now(UTC)  # before the database knows
    delay = backoff_seconds(
        job.deferrals + 1 if defers(failure.kind, s.pause_after) else job.attempt,
        base=s.backoff_base,
        cap=s.backoff_cap,
        retry_after=failure.retry_after,
    )
    recorded = await ctx.outcomes.submit(Failure(job, failure, delay, s.pause_after))
    if recorded is Recorded.DROPPED:
        _log_dropped(job)
        return JobOutcome.DROPPED
    level, message, action, outcome = _FAILURE_LOGS[recorded]
    extra = {
        "action": action,
        "job_id": job.id,
        "model": job.model_name,
        "attempt": job.attempt,
        "error_kind": failure.kind.value,
    }
    what = message.format(delay=delay, k=s.pause_after)
    log.log(level, "%s: %s", what, failure.message, extra=extra)
    return outcome


def _log_lost_before_call(job: ClaimedJob) -> None:
    log.warning(
        "job not called: its lease ran out or it was cancelled or taken over since its claim",
        extra={"action": "job_lost_before_call", "job_id": job.id, "attempt": job.attempt},
    )


def _log_dropped(job: ClaimedJob) -> None:
    log.warning(
        "result dropped: job was cancelled or its lease was taken over",
        extra={"action": "job_result_dropped", "job_id": job.id, "attempt": job.attempt},
    )


def find_mentions(reply: ModelReply, catalog: Catalog) -> tuple[MentionRecord, ...]:
    """Mentions with positions from the answer text; none for a refusal (case C17)."""
    if reply.output_mode is OutputMode.REFUSAL or not reply.answer:
        return ()
    found = (
        order_mentions(reply.answer, reply.mention_names, catalog)
        if reply.mention_names is not None
        else extract_from_text(reply.answer, catalog)
    )
    unique = list({m.key: m for m in reversed(found)}.values())[::-1]  # first appearance wins
    unique.sort(key=lambda m: m.char_offset)
    # One mention per entity per answer (the table's unique key); positions renumbered 1..n.
    return tuple(
        MentionRecord(m.raw_name, m.display, m.key, n, m.char_offset)
        for n, m in enumerate(unique, start=1)
    )


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
