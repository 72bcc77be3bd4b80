"""A worker process's bookkeeping of the jobs it holds (runner.worker.process), in process."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
from functools import partial

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
    settings = fast_settings(db_url)
    worker = Worker(
        settings, WorkerSpec(settings.model_dump(), "test", 0), StopFlag(mp.get_context("spawn"))
    )
    f.make_batch(engine, prompts=1, models=1)
    [first] = f.claim_all(engine, worker.id)
    f.expire_lease(engine, [first.id])
    queue.reap_expired(engine)
    [again] = f.claim_all(engine, worker.id)
    try:
        worker._start([first, again], time.monotonic() + 1)  # about to run out, locally
        worker._heartbeat()
        assert worker.ctx.leases[first.key] == 0.0
        assert worker.ctx.leases[again.key] > time.monotonic() + settings.lease_seconds - 5
        wait_for(lambda: len(worker._ended) == 1, 10, "the first attempt's end")
        worker._reap_done()
        assert worker._running() == [again.key] == [(first.id, 2)]
        assert list(worker.ctx.leases) == [again.key]
        assert len(worker.in_flight) == 1
    finally:
        worker.ctx.client.call_soon(partial(cancel_tasks, list(worker.in_flight.values())))
        worker.ctx.client.close()
        worker.control.dispose()
        worker.engine.dispose()


def test_jobs_waiting_for_a_call_slot_are_handed_back_uncalled(
    engine: Engine, db_url: str, sim
) -> None:
    """At a batch's tail (a claim found the queue dry) a process hands back the jobs it holds
    that wait for one of its call slots, so a process with a free slot runs them instead of
    them waiting a round of answers here: back to 'queued' with their attempt unspent, no call
    made, no attempt row; the job that holds the slot keeps calling."""
    settings = fast_settings(db_url, concurrency=1)
    worker = Worker(
        settings, WorkerSpec(settings.model_dump(), "test", 0), StopFlag(mp.get_context("spawn"))
    )
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
        worker.ctx.client.call_soon(partial(cancel_tasks, list(worker.in_flight.values())))
        worker.ctx.client.close()
        worker.control.dispose()
        worker.engine.dispose()
