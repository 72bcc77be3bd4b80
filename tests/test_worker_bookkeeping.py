"""A worker process's bookkeeping of the jobs it holds (runner.worker.process), in process."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
from functools import partial

import pytest
from sqlalchemy import Engine

from db import queue
from db.types import ClaimedJob
from runner.worker import process
from runner.worker.jobs import JobContext, JobOutcome
from runner.worker.process import Worker, cancel_tasks
from runner.worker.spawn import StopFlag, WorkerSpec
from tests import factories as f
from tests.helpers import fast_settings, wait_for


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
