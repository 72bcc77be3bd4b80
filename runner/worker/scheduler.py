"""The daily enqueue on a `schedule` timer, in UTC whatever the host's time zone (case C1).

`schedule.every().day.at(BATCH_TIME, "UTC")` fires once per UTC day. At start-up, today's batch is
enqueued if it is due and missing (catch-up after downtime, case C2), and at start-up and at every
firing the days missed since the latest batch are reported (a runner frozen across two midnights
fires once when it wakes: the day between was missed, issue 12); those within `catch_up_days`
before today are enqueued late, oldest first. A failed enqueue is logged and retried until it
succeeds; it never stops the timer (case C3).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

import schedule

from db.types import EnqueueResult

log = logging.getLogger(__name__)

RETRY_SECONDS = (5, 15, 30, 60)  # waits between attempts of a failed enqueue, then every 60 s


def utc_batch_key(now: datetime | None = None) -> str:
    """The batch key of a moment: its UTC date, YYYY-MM-DD."""
    return (now or datetime.now(UTC)).astimezone(UTC).date().isoformat()


def missed_days(latest: str | None, today: str) -> list[str]:
    """Batch keys strictly between the latest enqueued batch and today (days the runner was
    down)."""
    if latest is None or latest >= today:
        return []
    first, last = date.fromisoformat(latest) + timedelta(days=1), date.fromisoformat(today)
    return [(first + timedelta(days=n)).isoformat() for n in range((last - first).days)]


class BatchScheduler:
    """Enqueues each UTC day's batch at `batch_time` (HH:MM UTC).

    `enqueue(batch_key)` does the work and may raise; `clock()` returns the aware UTC now.
    """

    def __init__(
        self,
        enqueue: Callable[[str], EnqueueResult],
        batch_time: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        *,
        catch_up_days: int = 0,
        on_missed: Callable[[list[str]], None] | None = None,
    ) -> None:
        self._enqueue = enqueue
        self._clock = clock
        self._batch_time = batch_time
        self._catch_up_days = catch_up_days
        self._on_missed = on_missed  # records missed days (the audit log), may raise
        self._latest: str | None = None  # the newest batch known to exist
        self._schedule = schedule.Scheduler()
        self._schedule.every().day.at(batch_time, "UTC").do(self._fire)
        # Batches whose enqueue failed, oldest first, retried in order: a missed day's late
        # enqueue failing (the database away) must not be superseded by today's (issue 12)
        self._pending: list[str] = []
        self._failures = 0
        self._retry_at: datetime | None = None
        self.enqueued: list[str] = []

    def catch_up(self, latest_batch: str | None) -> list[str]:
        """At start-up: report missed days (enqueueing those in the catch-up window) and enqueue
        today's batch if due and missing. Returns the missed days."""
        now = self._clock()
        today = utc_batch_key(now)
        self._latest = max(self._latest or "", latest_batch or "") or None
        missed = self._missed_before(today)
        due = now.strftime("%H:%M") >= self._batch_time
        if due and (self._latest is None or self._latest < today):
            self._try(today)
        return missed

    def _missed_before(self, today: str) -> list[str]:
        """Report the days between the latest batch and `today`; enqueue those in the window."""
        missed = missed_days(self._latest, today)
        if not missed:
            return []
        log.warning(
            "runner was down or frozen: batches %s were not enqueued on their day",
            ", ".join(missed),
            extra={"action": "batch_missed", "batches": missed},
        )
        if self._on_missed is not None:
            try:
                self._on_missed(missed)
            except Exception:  # the log line above stands; the timer must live on (C3)
                log.exception("could not record missed batches", extra={"action": "batch_missed"})
        window = date.fromisoformat(today) - timedelta(days=self._catch_up_days)
        for key in missed:
            if date.fromisoformat(key) >= window:
                self._try(key)
        self._latest = max(self._latest or "", missed[-1])
        return missed

    def tick(self) -> None:
        """Run what is due: the daily timer and any enqueue retry."""
        self._schedule.run_pending()
        if self._pending and self._retry_at and self._clock() >= self._retry_at:
            for batch_key in list(self._pending):
                if not self._try(batch_key):
                    break  # still failing: the rest wait for the next retry

    def _fire(self) -> None:
        today = utc_batch_key(self._clock())
        self._missed_before(today)
        self._try(today)

    def _try(self, batch_key: str) -> bool:
        """Enqueue `batch_key`; on failure keep it pending for a retry. Whether it was enqueued."""
        try:
            result = self._enqueue(batch_key)
        except Exception as exc:  # the timer must outlive any enqueue failure (case C3)
            self._schedule_retry(batch_key, exc)
            return False
        if batch_key in self._pending:
            self._pending.remove(batch_key)
        if not self._pending:
            self._failures, self._retry_at = 0, None
        self.enqueued.append(batch_key)
        self._latest = max(self._latest or "", batch_key)
        log.info(
            "batch %s enqueued: %d created, %d existing",
            batch_key,
            result.created,
            result.existing,
            extra={
                "action": "batch_enqueued",
                "batch_key": batch_key,
                "jobs_created": result.created,
            },
        )
        return True

    def _schedule_retry(self, batch_key: str, exc: Exception) -> None:
        wait = RETRY_SECONDS[min(self._failures, len(RETRY_SECONDS) - 1)]
        self._failures += 1
        if batch_key not in self._pending:
            self._pending = sorted([*self._pending, batch_key])
        self._retry_at = self._clock() + timedelta(seconds=wait)
        log.error(
            "enqueue of batch %s failed (attempt %d), retrying in %ds: %s",
            batch_key,
            self._failures,
            wait,
            exc,
            exc_info=exc,
            extra={"action": "enqueue_failed", "batch_key": batch_key},
        )
