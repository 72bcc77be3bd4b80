"""How running one claimed job ended, as the worker sees it."""

from __future__ import annotations

from enum import StrEnum


class JobOutcome(StrEnum):
    SUCCEEDED = "succeeded"
    RETRY = "retry"
    DEFERRED = "deferred"  # queued again without spending an attempt (its model may be paused)
    FAILED = "failed"
    DROPPED = "dropped"  # the worker no longer held the job: nothing was written
    NOT_STARTED = "not_started"  # the worker is stopping: a prefetched job goes back uncalled
    POSTPONED = "postponed"  # handed back uncalled: its model's rate limit is taken until later
