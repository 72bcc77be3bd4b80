"""The limits each model's provider states in its response headers, as this worker process
last read them: the pace of a model that has no --rpm/--tpm of its own (db.pacing)."""

from __future__ import annotations

import logging
import threading
import time

from db import pacing
from db.engine import Engine
from db.errors import DatabaseUnavailable
from db.types import ClaimedJob
from runner.llm.ratelimits import RateLimits

log = logging.getLogger(__name__)

WRITE_EVERY_S = 1.0  # what is left is written at most this often per model and process


class LearnedLimits:
    """Per process, thread-safe: model id -> (requests, tokens) per minute from the provider's
    x-ratelimit-limit-* headers; a change is also written to model_pacing for `models list` and
    the console."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self._known: dict[int, tuple[int | None, int | None]] = {}
        self._written: dict[int, float] = {}  # model id -> time.monotonic() of the last write

    def pace_of(self, job: ClaimedJob) -> tuple[int | None, int | None]:
        """(rpm, tpm) to pace `job` by: the model's own settings, else what was learned."""
        with self._lock:
            learned_rpm, learned_tpm = self._known.get(job.model_id, (None, None))
        return job.rpm or learned_rpm, job.tpm or learned_tpm

    def learn(self, job: ClaimedJob, limits: RateLimits | None) -> RateLimits | None:
        """Remember the per-minute limits a response stated for `job`'s model; returns them when
        they are due to be written to model_pacing (changed, or not written for WRITE_EVERY_S):
        the caller passes them to `write`, off the event loop."""
        if limits is None or not (limits.limit_requests or limits.limit_tokens):
            return None
        stated = (limits.limit_requests, limits.limit_tokens)
        now = time.monotonic()
        with self._lock:
            changed = self._known.get(job.model_id) != stated
            due = now - self._written.get(job.model_id, -WRITE_EVERY_S) >= WRITE_EVERY_S
            if not (changed or due):
                return None
            self._known[job.model_id] = stated
            self._written[job.model_id] = now
        if changed:
            log.info(
                "learned %s's limits per minute: requests %s, tokens %s",
                job.model_name,
                *(v if v is not None else "not stated" for v in stated),
                extra={"action": "limits_learned", "model": job.model_name},
            )
        return limits

    def write(self, job: ClaimedJob, limits: RateLimits) -> None:
        """Write what `learn` returned to model_pacing (blocking: one short transaction)."""
        try:
            pacing.record_learned(
                self._engine,
                job.model_id,
                rpm=limits.limit_requests,
                tpm=limits.limit_tokens,
                remaining_requests=limits.remaining_requests,
                remaining_tokens=limits.remaining_tokens,
            )
        except DatabaseUnavailable as exc:  # shown later; the pace is this process's already
            log.warning(
                "could not record learned limits: %s", exc, extra={"action": "pacing_failed"}
            )
