"""The progress line a draining runner prints: jobs ended of the batch, by status, and jobs/s.

With JSON logs (PROMPTBATCH_LOG_JSON) it is a log record (action `batch_progress`) instead: the
log stream stays pure JSON lines (issue 12: text lines were interleaved with them on stderr)."""

from __future__ import annotations

import logging
import sys
import time

from db import insights
from db.engine import Engine
from db.errors import DatabaseUnavailable
from db.types import JobStatus

INTERVAL_TTY, INTERVAL_PIPE = 1.0, 10.0
log = logging.getLogger(__name__)


class ProgressReporter:
    """Prints `batch K: ended/total ...` to stderr; redraws in place on a terminal."""

    def __init__(self, engine: Engine, batch_key: str, *, as_log: bool = False) -> None:
        self._engine = engine
        self._batch_key = batch_key
        self._as_log = as_log
        self._tty = sys.stderr.isatty() and not as_log
        self._interval = INTERVAL_TTY if self._tty else INTERVAL_PIPE
        self._next = 0.0
        self._first: tuple[float, int] | None = None

    def maybe_report(self) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self._interval
        try:
            counts = insights.batch_overview(self._engine, self._batch_key)
        except DatabaseUnavailable:
            return
        ended = counts.ended
        self._first = self._first or (now, ended)
        elapsed = now - self._first[0]
        rate = (ended - self._first[1]) / elapsed if elapsed > 0 else 0.0
        line = (
            f"batch {self._batch_key}: {ended}/{counts.total} ended | "
            f"{counts.get(JobStatus.SUCCEEDED)} succeeded, {counts.get(JobStatus.FAILED)} "
            f"failed, {counts.get(JobStatus.PROCESSING)} processing, "
            f"{counts.get(JobStatus.QUEUED)} queued | {rate:.1f} jobs/s"
        )
        if self._as_log:
            log.info(line, extra={"action": "batch_progress", "batch_key": self._batch_key})
            return
        sys.stderr.write(f"\r{line}\033[K" if self._tty else f"{line}\n")
        sys.stderr.flush()
