"""A worker process's bookkeeping of the jobs it holds (runner.worker.process), in process."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
from functools import partial
from typing import Any

import pytest
from sqlalchemy import Engine

from db import queue
from db.models import JobAttempt
from db.types import ClaimedJob
from runner.worker import process
from runner.worker.jobs import JobContext, JobOutcome
from runner.worker.process import Worker, cancel_tasks
from runner.worker.spawn import StopFlag, WorkerSpec
from tests import factories as f
from tests.helpers import fast_settings, one_job, wait_for


def _worker(db_url: str, **overrides: object) -> Worker:
    settings = fast_settings(db_url, **overrides)
    return Worker(
        settings, WorkerSpec(settings.model_dump(), "test", 0), StopFlag(mp.get_context("spawn"))
    )


def _close(worker: Worker) -> None:
    worker.ctx.client.call_soon(partial(cancel_tasks, list(worker.in_flight.values())))
    worker.ctx.client.close()
    worker.control.dispose()
    worker.engine.dispose()


async def _answer_by_attempt(_ctx: JobContext, job: ClaimedJob) -> JobOutcome:
    """A job whose first attempt ends after a second and whose later ones run for a while."""
    await asyncio.sleep(1 if job.attempt == 1 else 30)
    return JobOutcome.SUCCEEDED


def test_two_attempts_of_one_job_are_held_until_each_ends(
    engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker woken from a freeze still runs a job's first attempt when it claims the job
    again (the reaper took it back meanwhile). The heartbeat renews the second attempt's lease
    and marks the first's lost (it must not call its model); the first attempt's end must not
    drop the second from what the worker holds, or its lease would no longer be renewed."""
    monkeypatch.setattr(process, "run_job", _answer_by_attempt)
    worker = _worker(db_url)
    f.make_batch(engine, prompts=1, models=1)
    [first] = f.claim_all(engine, worker.id)
    f.expire_lease(engine, [first.id])
    queue.reap_expired(engine)
    [again] = f.claim_all(engine, worker.id)
    try:
        worker._start([first, again], time.monotonic() + 1)  # about to run out, locally
        worker._heartbeat()
        assert worker.ctx.leases[first.key] == 0.0
        assert worker.ctx.leases[again.key] > time.monotonic() + worker.settings.lease_seconds - 5
        wait_for(lambda: len(worker._ended) == 1, 10, "the first attempt's end")
        worker._reap_done()
        assert worker._running() == [again.key] == [(first.id, 2)]
        assert list(worker.ctx.leases) == [again.key]
        assert len(worker.in_flight) == 1
    finally:
        _close(worker)


def test_jobs_waiting_for_a_call_slot_are_handed_back_uncalled(
    engine: Engine, db_url: str, sim
) -> None:
    """At a batch's tail (a claim found the queue dry) a process hands back the jobs it holds
    that wait for one of its call slots, so a process with a free slot runs them instead of
    them waiting a round of answers here: back to 'queued' with their attempt unspent, no call
    made, no attempt row; the job that holds the slot keeps calling."""
    worker = _worker(db_url, concurrency=1)
    one_job(engine, "sim-gpt-4o-mini@latency=20000", sim.base_url, runs=3)
    claimed = f.claim_all(engine, worker.id)
    before = sim.request_count
    try:
        worker._start(claimed, time.monotonic() + 60)
        wait_for(lambda: len(worker.ctx.awaiting_slot) == 2, 10, "two jobs waiting for the slot")
        worker.ctx.client.call_soon(worker._hand_back_waiting)
        wait_for(lambda: len(worker._ended) == 2, 10, "the waiting jobs' ends")
        worker._reap_done()
        worker._release_handed_back()
        [calling] = worker._running()
        jobs = {job.id: f.job(engine, job.id) for job in claimed}
        back = [job for job_id, job in jobs.items() if job_id != calling[0]]
        assert [(j.status, j.attempt_count, j.locked_by) for j in back] == [("queued", 0, None)] * 2
        assert jobs[calling[0]].status == "processing"
        assert f.count(engine, JobAttempt) == 0
        wait_for(lambda: sim.request_count == before + 1, 10, "the slot holder's call")
        assert worker._to_release == []
    finally:
        _close(worker)


def test_a_later_attempt_handed_back_while_the_earlier_calls_is_released(
    engine: Engine, db_url: str, sim
) -> None:
    """Found in review: a worker woken from a freeze still calls a job's first attempt and has
    claimed it again; at the tail the second attempt, waiting for the slot, is handed back. It
    must be released (by attempt), not skipped because the job's id is still held: nobody would
    renew it, and it would stay 'processing' until its lease ran out."""
    worker = _worker(db_url, concurrency=1)
    one_job(engine, "sim-gpt-4o-mini@latency=20000", sim.base_url)
    [first] = f.claim_all(engine, worker.id)
    before = sim.request_count
    try:
        worker._start([first], time.monotonic() + 60)
        wait_for(lambda: sim.request_count == before + 1, 10, "the first attempt's call")
        f.expire_lease(engine, [first.id])
        queue.reap_expired(engine)
        [again] = f.claim_all(engine, worker.id)
        worker._start([again], time.monotonic() + 60)
        wait_for(lambda: again.key in worker.ctx.awaiting_slot, 10, "the second waiting")
        worker.ctx.client.call_soon(worker._hand_back_waiting)
        wait_for(lambda: len(worker._ended) == 1, 10, "the second's end")
        worker._reap_done()
        worker._release_handed_back()
        row = f.job(engine, first.id)
        assert (row.status, row.attempt_count, row.locked_by) == ("queued", 1, None)
        assert worker._running() == [first.key]  # the first attempt still calls
    finally:
        _close(worker)


def test_the_heartbeat_does_not_mark_a_new_claim_under_a_recycled_key_lost(
    engine: Engine, db_url: str, sim, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: a job handed back and claimed again by the same worker gets its
    (id, attempt) again. When that happens while a heartbeat's statement runs, the statement did
    not see the new claim; the heartbeat must not take it for the old one and mark it lost (it
    would be dropped uncalled and stay 'processing' until its lease ran out)."""
    worker = _worker(db_url, concurrency=1)
    one_job(engine, "sim-gpt-4o-mini@latency=20000", sim.base_url, runs=2)
    claimed = f.claim_all(engine, worker.id)
    extend = queue.heartbeat
    reclaimed: list[ClaimedJob] = []

    def heartbeat_racing_a_hand_back(*args: Any, **kwargs: Any) -> set[tuple[int, int]]:
        worker.ctx.client.call_soon(worker._hand_back_waiting)
        wait_for(lambda: len(worker._ended) == 1, 10, "the waiting job's end")
        worker._reap_done()
        worker._release_handed_back()
        held = extend(*args, **kwargs)  # the job is queued again by now
        reclaimed.extend(f.claim_all(engine, worker.id))
        worker._start(reclaimed, time.monotonic() + 60)
        return held

    try:
        worker._start(claimed, time.monotonic() + 60)
        wait_for(lambda: len(worker.ctx.awaiting_slot) == 1, 10, "one job waiting for the slot")
        [waiting] = worker.ctx.awaiting_slot
        monkeypatch.setattr(queue, "heartbeat", heartbeat_racing_a_hand_back)
        worker._heartbeat()
        assert [job.key for job in reclaimed] == [waiting]
        assert worker.ctx.leases[waiting] > time.monotonic() + 30  # the new claim's own lease
    finally:
        _close(worker)


def test_an_ended_claim_does_not_forget_a_new_claim_under_the_same_key(
    engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: a job handed back from its own coroutine (its model's gate or rate
    limit) can be claimed again by the same worker, under the same (id, attempt), before the
    old coroutine is reaped: reaping the old one must leave the new claim held and leased."""
    starts: list[float] = [0.2, 30]  # the old claim ends soon, the new one runs on

    async def run(_ctx: JobContext, _job: ClaimedJob) -> JobOutcome:
        await asyncio.sleep(starts.pop(0))
        return JobOutcome.POSTPONED

    monkeypatch.setattr(process, "run_job", run)
    worker = _worker(db_url)
    f.make_batch(engine, prompts=1, models=1)
    [job] = f.claim_all(engine, worker.id)
    try:
        worker._start([job], time.monotonic() + 60)
        wait_for(lambda: len(starts) == 1, 10, "the old claim's start")
        worker._start([job], time.monotonic() + 60)  # claimed again under the same key
        new = worker.in_flight[job.key]
        wait_for(lambda: len(worker._ended) == 1, 10, "the old claim's end")
        worker._reap_done()
        assert worker.in_flight.get(job.key) is new
        assert job.key in worker.ctx.leases
    finally:
        _close(worker)
