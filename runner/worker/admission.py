"""Whether and when a claimed job may call its model (issue 10): its place under the model's
rpm/tpm shared by every runner (db.pacing), the gate that holds a call claimed before its model's
latest model-level failure, and the tokens given back after the call."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from typing import TYPE_CHECKING, Any

from db import pacing, queue
from db.errors import DatabaseUnavailable
from db.types import ClaimedJob, FailureRecord, Provider
from runner.llm.answers import ModelReply
from runner.llm.client import estimate_tokens
from runner.worker.outcome import JobOutcome

if TYPE_CHECKING:
    from runner.worker.jobs import JobContext

log = logging.getLogger(__name__)


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Mark a background read's error as seen (a later gate reads again)."""
    if not future.cancelled():
        future.exception()


STOP_CHECK_SECONDS = 0.25  # how soon a job waiting for its pacing place sees a stop
# How long one read of a model's (failure_streak, paused) serves every gate of this process: a
# read per call was a seventh of a worker's CPU at 1,024 in flight (bench/ item 3). An older
# read is refreshed, and while the refresh runs, a read younger than GATE_STALE_SECONDS still
# serves (waiting for it cost a call 0.1 s on average there). So a model-level failure in
# another runner holds this process's calls within GATE_READ_SECONDS, GATE_STALE_SECONDS when
# its database thread is slow; this process's own failures hold them at once.
GATE_READ_SECONDS = 0.1
GATE_STALE_SECONDS = 1.0


class GateReads:
    """Per process, on the event loop: model id -> its latest (failure_streak, paused), read
    from the database at most every GATE_READ_SECONDS, one read at a time per model."""

    def __init__(self) -> None:
        self._read: dict[int, tuple[float, tuple[int, bool]]] = {}  # model -> (monotonic, value)
        self._pending: dict[int, asyncio.Future[tuple[int, bool]]] = {}

    async def state(self, ctx: JobContext, model_id: int) -> tuple[int, bool]:
        """The model's (failure_streak, paused); raises DatabaseUnavailable."""
        read = self._read.get(model_id)
        age = time.monotonic() - read[0] if read is not None else math.inf
        if read is not None and age < GATE_READ_SECONDS:
            return read[1]
        pending = self._pending.get(model_id)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch(ctx, model_id))
            pending.add_done_callback(_retrieved)
            self._pending[model_id] = pending
        if read is not None and age < GATE_STALE_SECONDS:
            return read[1]
        return await asyncio.shield(pending)

    async def _fetch(self, ctx: JobContext, model_id: int) -> tuple[int, bool]:
        started = time.monotonic()
        try:
            value = await ctx.db(queue.model_gate, ctx.control, model_id)
        finally:
            self._pending.pop(model_id, None)
        self._read[model_id] = (started, value)
        return value


async def pace(ctx: JobContext, job: ClaimedJob) -> JobOutcome | None:
    """Wait for the job's place under its model's rpm/tpm, shared by every runner (db.pacing);
    None: call now. A place further than pacing_max_wait seconds away hands the job back until
    then (POSTPONED, no attempt spent); a stop during the wait hands it back uncalled."""
    rpm, tpm = ctx.pace_of(job)
    if not (rpm or tpm):
        return None
    wait = ctx.settings.pacing_max_wait
    try:
        place = await ctx.db(
            pacing.reserve_call,
            ctx.control,
            job.model_id,
            rpm=rpm,
            tpm=tpm,
            tokens=estimate_tokens(job, ctx.settings),
            max_wait=wait,
        )
    except DatabaseUnavailable as exc:
        log.warning("pacing failed: %s", exc, extra={"action": "pacing_failed", "job_id": job.id})
        return await _hand_back(ctx, job, ctx.settings.poll_interval)
    if not place.granted:
        return await _hand_back(ctx, job, place.wait_seconds - wait)
    if place.wait_seconds > 0 and await _stopped_within(ctx.draining, place.wait_seconds):
        return JobOutcome.NOT_STARTED  # the reserved place goes unused; nothing was sent
    return None


async def _stopped_within(stop: threading.Event | None, seconds: float) -> bool:
    """Sleep `seconds` on the loop, waking early when `stop` is set; whether it was."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if stop is not None and stop.is_set():
            return True
        await asyncio.sleep(min(left, STOP_CHECK_SECONDS) if stop is not None else left)
    return stop is not None and stop.is_set()


async def gate(ctx: JobContext, job: ClaimedJob) -> JobOutcome | None:
    """Hold the call of a job claimed before its model's latest model-level failure (or whose
    model is paused since): hand it back uncalled. Only the probe claimed after the failure
    calls, so a rejected key costs at most PAUSE_AFTER calls after the first (issue 10)."""
    seen = ctx.model_failures.get(job.model_id)
    if seen is None or job.started_at > seen:  # this process knows of no failure since
        try:
            streak, paused = await ctx.gates.state(ctx, job.model_id)
        except DatabaseUnavailable:
            return None  # the call itself decides; a failure is recorded as usual
        if not paused and streak <= job.failure_streak:
            return None
    return await _hand_back(ctx, job, 0.0, "its model failed since it was claimed, or is paused")


async def _hand_back(
    ctx: JobContext,
    job: ClaimedJob,
    delay: float,
    why: str = "its model's rate limit is taken until then",
) -> JobOutcome:
    """Give the job back to the queue uncalled, due again in `delay` seconds."""
    try:
        await ctx.db(
            queue.release_jobs, ctx.control, job.worker_id, [job.key], delay_seconds=max(delay, 0)
        )
    except DatabaseUnavailable:
        return JobOutcome.NOT_STARTED  # the worker hands it back when it stops, or the lease ends
    log.info(
        "job handed back uncalled, due in %.1fs: %s",
        delay,
        why,
        extra={"action": "job_postponed", "job_id": job.id, "model": job.model_name},
    )
    return JobOutcome.POSTPONED


async def settle_tokens(
    ctx: JobContext, job: ClaimedJob, outcome: ModelReply | FailureRecord
) -> None:
    """Give back reserved tokens that do not count against the model's tpm: all of them when the
    provider refused the call unserved; the unused part when the provider counts used tokens
    only (every provider but OpenAI, which counts max_tokens at admission)."""
    tpm = ctx.pace_of(job)[1]
    if not tpm:
        return
    reserved = estimate_tokens(job, ctx.settings)
    usage = outcome.usage
    if isinstance(outcome, FailureRecord) and outcome.kind.deferred:
        unused = reserved
    elif job.provider == Provider.OPENAI or usage is None:
        return
    else:
        unused = reserved - (usage.prompt_tokens or 0) - (usage.completion_tokens or 0)
    try:
        await ctx.db(pacing.refund_tokens, ctx.control, job.model_id, tpm=tpm, tokens=unused)
    except DatabaseUnavailable as exc:  # the next calls wait a little longer; nothing is lost
        log.warning("token refund failed: %s", exc, extra={"action": "pacing_failed"})
