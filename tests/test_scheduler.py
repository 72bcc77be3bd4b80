"""The daily enqueue timer, its clock moved by time-machine, in non-UTC host zones (C1-C3)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from sqlalchemy import Engine

from db import insights, queue
from db.engine import make_engine
from db.errors import DatabaseUnavailable
from db.types import EnqueueResult
from runner.worker.scheduler import BatchScheduler, missed_days, utc_batch_key


@pytest.fixture(autouse=True)
def info_logs(caplog: pytest.LogCaptureFixture) -> None:
    """Log at INFO as the runner does: a bad log call only fails when its level is enabled."""
    caplog.set_level(logging.INFO)


@pytest.fixture(params=["Asia/Tokyo", "America/Los_Angeles", "Europe/Berlin"])
def host_tz(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("TZ", request.param)
    time.tzset()
    yield request.param
    monkeypatch.undo()
    time.tzset()


class Recorder:
    """An enqueue that records (batch_key, UTC time) and can fail its first `failures` calls."""

    def __init__(self, failures: int = 0) -> None:
        self.calls: list[tuple[str, datetime]] = []
        self.failures = failures

    def __call__(self, batch_key: str) -> EnqueueResult:
        if self.failures:
            self.failures -= 1
            raise DatabaseUnavailable("database restarting (simulated)")
        self.calls.append((batch_key, datetime.now(UTC)))
        return EnqueueResult(batch_key, 1, 0)


def run_minutes(traveller: time_machine.Traveller, scheduler: BatchScheduler, minutes: int) -> None:
    for _ in range(minutes):
        traveller.shift(timedelta(minutes=1))
        scheduler.tick()


@pytest.mark.parametrize("start_hour", [0, 15])
def test_one_enqueue_per_utc_day_across_dst(host_tz, start_hour):
    """C1: host TZ not UTC, started at 00:30 or 15:00 UTC, 3 days across a DST change -> one enqueue
    per UTC date, shortly after 00:00 UTC; batch_key = UTC date; no extra enqueue at start."""
    # 2026-03-07..10 spans the US change (03-08); 03-28..31 the EU one (03-29).
    day = "2026-03-07" if host_tz == "America/Los_Angeles" else "2026-03-28"
    start = datetime.fromisoformat(f"{day}T{start_hour:02d}:30:00+00:00")
    with time_machine.travel(start, tick=False) as traveller:
        enqueue = Recorder()
        scheduler = BatchScheduler(enqueue, "00:00")
        scheduler.catch_up(latest_batch=None)
        run_minutes(traveller, scheduler, 3 * 24 * 60)
    keys = [k for k, _ in enqueue.calls]
    first = start.date()
    assert keys == [(first + timedelta(days=n)).isoformat() for n in range(4)]
    for key, at in enqueue.calls[1:]:
        assert at.date().isoformat() == key
        assert at - datetime.fromisoformat(f"{key}T00:00:00+00:00") <= timedelta(minutes=2)


def test_batch_time_not_yet_due_waits_for_the_timer(host_tz):
    start = datetime(2026, 6, 1, 3, 0, tzinfo=UTC)
    with time_machine.travel(start, tick=False) as traveller:
        enqueue = Recorder()
        scheduler = BatchScheduler(enqueue, "06:00")
        scheduler.catch_up(latest_batch="2026-05-31")
        assert enqueue.calls == []
        run_minutes(traveller, scheduler, 4 * 60)
    assert [(k, at.hour) for k, at in enqueue.calls] == [("2026-06-01", 6)]


def test_restart_after_midnight_enqueues_the_new_day():
    """C2: stopped 23:50 UTC on D, started 00:10 on D+1 -> D+1 enqueued at start-up."""
    with time_machine.travel(datetime(2026, 11, 2, 0, 10, tzinfo=UTC), tick=False):
        enqueue = Recorder()
        missed = BatchScheduler(enqueue, "00:00").catch_up(latest_batch="2026-11-01")
    assert missed == []
    assert [k for k, _ in enqueue.calls] == ["2026-11-02"]


def test_days_down_are_reported_and_visible_in_status(engine):
    """C2: down D+1..D+3, restarted D+3 10:00 -> D+3 enqueued, D+1 and D+2 reported as missed
    (log + audit, shown by `status`), never silently nothing."""
    with time_machine.travel(datetime(2026, 11, 4, 10, 0, tzinfo=UTC), tick=False):
        enqueue = Recorder()
        missed = BatchScheduler(enqueue, "00:00").catch_up(latest_batch="2026-11-01")
        queue.record_missed_batches(engine, missed)
        assert insights.missed_batches(engine) == ["2026-11-02", "2026-11-03"]
    assert [k for k, _ in enqueue.calls] == ["2026-11-04"]


def test_failed_enqueue_is_retried_and_next_day_still_runs(caplog):
    """C3: the enqueue raises at 00:00 (database restarting) -> logged, retried until it succeeds,
    and the next day's enqueue still runs."""
    with time_machine.travel(datetime(2026, 11, 1, 23, 59, tzinfo=UTC), tick=False) as traveller:
        enqueue = Recorder(failures=3)
        scheduler = BatchScheduler(enqueue, "00:00")
        run_minutes(traveller, scheduler, 24 * 60 + 5)
    assert [k for k, _ in enqueue.calls] == ["2026-11-02", "2026-11-03"]
    assert enqueue.calls[0][1] - datetime(2026, 11, 2, tzinfo=UTC) <= timedelta(minutes=3)
    assert sum(getattr(r, "action", "") == "enqueue_failed" for r in caplog.records) == 3


def test_enqueue_against_a_database_that_comes_back(db_url, engine):
    """C3 with a real database error: an unreachable database first, then the real one."""
    down = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/test?connect_timeout=1")
    targets = [down, down, engine]

    def enqueue(key: str) -> EnqueueResult:
        return queue.enqueue_batch(targets.pop(0), key, max_attempts=3)

    with time_machine.travel(datetime(2026, 11, 1, 23, 59, tzinfo=UTC), tick=False) as traveller:
        scheduler = BatchScheduler(enqueue, "00:00")
        run_minutes(traveller, scheduler, 10)
    assert scheduler.enqueued == ["2026-11-02"]
    down.dispose()


def test_batch_key_is_the_utc_date_in_any_host_zone(host_tz):
    with time_machine.travel(datetime(2026, 11, 30, 23, 30, tzinfo=UTC), tick=False):
        assert utc_batch_key() == "2026-11-30"  # Tokyo/Berlin are already on 12-01 locally
    with time_machine.travel(datetime(2026, 12, 1, 0, 30, tzinfo=UTC), tick=False):
        assert utc_batch_key() == "2026-12-01"  # Los Angeles is still on 11-30 locally


def test_missed_days():
    assert missed_days("2026-11-01", "2026-11-04") == ["2026-11-02", "2026-11-03"]
    assert missed_days("2026-11-03", "2026-11-04") == []
    assert missed_days(None, "2026-11-04") == []


def test_a_drain_exit_code_covers_every_batch_it_drained(engine: Engine) -> None:
    """Issue 12: `run --drain` looked at today's batch only: a drain that worked on an earlier
    batch (or crossed midnight) exited 0 over that batch's failures. Its code now follows every
    batch with work at its start, and today's."""
    from db import insights
    from runner.worker.supervisor import EXIT_FAILED_JOBS, EXIT_OK, Supervisor
    from tests import factories as f
    from tests.helpers import fast_settings

    f.make_batch(engine, prompts=2, models=1, batch_key="2026-01-01")
    assert insights.batches_with_work(engine) == ["2026-01-01"]
    supervisor = Supervisor(fast_settings(str(engine.url)), engine, drain=True, progress=False)
    supervisor._drained_batches.update(insights.batches_with_work(engine))
    first, second = f.job_ids(engine)
    f.set_jobs(engine, [first], status="succeeded")
    f.set_jobs(engine, [second], status="failed")
    assert insights.batches_with_work(engine) == []
    assert supervisor._drain_exit_code() == EXIT_FAILED_JOBS  # today's batch is empty
    f.set_jobs(engine, [second], status="succeeded")
    assert supervisor._drain_exit_code() == EXIT_OK


def test_a_runner_frozen_across_two_midnights_reports_and_catches_up_the_middle_day(engine):
    """Issue 12: frozen from D 23:00 to D+2 00:30, the timer fires once when the runner wakes:
    D+1 was never enqueued nor reported. Now it is reported (log + audit) whenever the timer
    fires, and enqueued late within catch_up_days (here 2: D+1 is; 0 would only report it)."""
    start = datetime(2026, 11, 1, 23, 0, tzinfo=UTC)
    with time_machine.travel(start, tick=False) as traveller:
        enqueue = Recorder()
        scheduler = BatchScheduler(
            enqueue,
            "00:00",
            catch_up_days=2,
            on_missed=lambda keys: queue.record_missed_batches(engine, keys),
        )
        scheduler.catch_up(latest_batch="2026-11-01")
        traveller.move_to(datetime(2026, 11, 3, 0, 30, tzinfo=UTC))
        scheduler.tick()
        assert insights.missed_batches(engine) == ["2026-11-02"]
    assert [k for k, _ in enqueue.calls] == ["2026-11-02", "2026-11-03"]


def test_missed_days_outside_the_catch_up_window_are_only_reported():
    with time_machine.travel(datetime(2026, 11, 5, 10, 0, tzinfo=UTC), tick=False):
        enqueue = Recorder()
        missed = BatchScheduler(enqueue, "00:00", catch_up_days=1).catch_up("2026-11-01")
    assert missed == ["2026-11-02", "2026-11-03", "2026-11-04"]
    assert [k for k, _ in enqueue.calls] == ["2026-11-04", "2026-11-05"]


def test_a_missed_days_failed_late_enqueue_is_retried_beside_todays():
    """Issue 12: the timer fires after a missed day with the database away: the missed day's
    late enqueue and today's both fail. Both stay pending and are enqueued, oldest first, once it
    is back (today's retry no longer replaces the missed day's)."""
    start = datetime(2026, 11, 1, 23, 0, tzinfo=UTC)
    with time_machine.travel(start, tick=False) as traveller:
        enqueue = Recorder()
        scheduler = BatchScheduler(enqueue, "00:00", catch_up_days=2)
        scheduler.catch_up(latest_batch="2026-11-01")
        traveller.move_to(datetime(2026, 11, 3, 0, 0, 30, tzinfo=UTC))
        enqueue.failures = 3  # both at the fire, then the first retry
        scheduler.tick()
        run_minutes(traveller, scheduler, 10)
    assert [k for k, _ in enqueue.calls] == ["2026-11-02", "2026-11-03"]
