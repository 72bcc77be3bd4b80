"""Group commit: many outcomes recorded in one transaction, and the claim that rides along.

Real SQLite and PostgreSQL; the job threads are real threads blocked on their own result.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import Engine, event, select
from sqlalchemy.exc import IntegrityError

from db import operations, queue, results
from db.engine import make_engine, read_tx
from db.errors import DatabaseUnavailable
from db.models import Entity, JobAttempt, Mention, PromptJob, Response
from db.types import ErrorKind, Failure, FailureRecord, Recorded
from runner.simulator.server import SimulatorServer
from runner.worker.group_commit import GroupCommit
from runner.worker.process import Worker
from runner.worker.spawn import StopFlag, WorkerSpec
from tests import factories as f
from tests.factories import BATCH
from tests.helpers import fast_settings, one_job, wait_for


def test_complete_jobs_writes_each_held_job_and_skips_the_rest(engine: Engine) -> None:
    """One call, four jobs: the cancelled one gets nothing written and False, in its place; the
    others get their response, attempt row and mentions (one shared new brand, one entity)."""
    f.make_batch(engine, prompts=4, models=1)
    jobs = f.claim_all(engine, "w1")
    operations.cancel_jobs(engine, job_ids=[jobs[1].id], actor="op")
    done = [
        f.completion(job, f.answer(["Attio", f"Brand{n}"]), 0.001 * n) for n, job in enumerate(jobs)
    ]
    assert f.complete_all(engine, done) == [True, False, True, True]
    assert [f.job(engine, j.id).status for j in jobs] == [
        "succeeded",
        "cancelled",
        "succeeded",
        "succeeded",
    ]
    with read_tx(engine) as conn:
        saved = conn.execute(select(Response.job_id, Response.cost).order_by(Response.job_id))
        named = conn.execute(select(Entity.name, Mention.response_id).join(Entity)).all()
        brand_of_job = conn.execute(
            select(Response.job_id, Entity.name)
            .join(Mention, Mention.response_id == Response.id)
            .join(Entity)
            .where(Entity.name.like("Brand%"))
        ).all()
    # each answer's mentions hang on its own job's response (one statement for the batch)
    assert sorted(map(tuple, brand_of_job)) == [(jobs[n].id, f"Brand{n}") for n in (0, 2, 3)]
    assert [tuple(r) for r in saved] == [
        (jobs[0].id, 0.0),
        (jobs[2].id, 0.002),
        (jobs[3].id, 0.003),
    ]
    assert f.count(engine, JobAttempt) == 4  # three answers and the cancel
    assert [a.outcome for a in f.attempts(engine, jobs[1].id)] == ["cancelled"]
    assert sum(name == "Attio" for name, _ in named) == 3
    assert f.count(engine, Entity, name="Attio") == 1


def test_complete_jobs_is_all_or_nothing(engine: Engine) -> None:
    """A bad answer in the call (the same brand twice breaks a unique key) rolls back all of it."""
    f.make_batch(engine, prompts=2, models=1)
    first, second = f.claim_all(engine, "w1")
    bad = f.answer(["HubSpot"])
    broken = type(bad)(**{**bad.__dict__, "mentions": bad.mentions * 2})
    with pytest.raises(IntegrityError):
        f.complete_all(
            engine, [f.completion(first, f.answer(), None), f.completion(second, broken, None)]
        )
    assert (f.count(engine, Response), f.count(engine, JobAttempt)) == (0, 0)
    assert {f.job(engine, j.id).status for j in (first, second)} == {"processing"}


def test_complete_and_claim_frees_a_capped_slot_in_the_same_transaction(engine: Engine) -> None:
    """A model capped at 2 with both slots busy: recording one success and claiming in one
    transaction takes exactly one replacement, and the claimed job is the next in order."""
    f.make_prompts(engine, 4)
    f.make_models(engine, 1, max_concurrency=2)
    queue.enqueue_batch(engine, BATCH, max_attempts=3)
    first, second = f.claim_all(engine, "w1")
    recorded, claimed = results.write_outcomes_and_claim(
        engine, [f.completion(first, f.answer(), None)], "w1", 5, lease_seconds=30
    )
    assert recorded == [Recorded.SUCCEEDED]
    assert [j.id for j in claimed] == [second.id + 1]
    assert f.job(engine, claimed[0].id).locked_by == "w1"


def test_complete_and_claim_claims_nothing_when_the_write_fails(engine: Engine) -> None:
    f.make_batch(engine, prompts=3, models=1)
    [first] = queue.claim_jobs(engine, "w1", 1, lease_seconds=30)
    bad = f.answer(["HubSpot"])
    broken = type(bad)(**{**bad.__dict__, "mentions": bad.mentions * 2})
    with pytest.raises(IntegrityError):
        results.write_outcomes_and_claim(
            engine, [f.completion(first, broken, None)], "w1", 2, lease_seconds=30
        )
    assert f.job_ids(engine, status="queued") == [first.id + 1, first.id + 2]


def test_successes_and_failures_share_one_transaction(engine: Engine) -> None:
    """The group commit owns every outcome: a success, a retry and a permanent failure are
    written in one call, each with its attempt row, and each thread is told what happened."""
    f.make_batch(engine, prompts=3, models=1)
    ok, flaky, broken = f.claim_all(engine, "w1")
    recorded = results.write_outcomes(
        engine,
        [
            f.completion(ok, f.answer(["HubSpot"]), None),
            Failure(flaky, FailureRecord(ErrorKind.SERVER_ERROR, "500"), 30),
            Failure(broken, FailureRecord(ErrorKind.BAD_REQUEST, "400"), 30),
        ],
    )
    assert recorded == [Recorded.SUCCEEDED, Recorded.RETRY, Recorded.FAILED]
    assert [f.job(engine, j.id).status for j in (ok, flaky, broken)] == [
        "succeeded",
        "queued",
        "failed",
    ]
    assert [a.outcome for j in (ok, flaky, broken) for a in f.attempts(engine, j.id)] == [
        "succeeded",
        "retry",
        "failed",
    ]


def _wait_len(group: GroupCommit, n: int) -> None:
    while len(group) < n:
        threading.Event().wait(0.01)


def test_job_threads_block_until_their_batch_is_committed(engine: Engine) -> None:
    """Three threads hand over their success; none returns before the claim loop's commit, and
    each then gets its own result (the cancelled job: dropped)."""
    f.make_batch(engine, prompts=3, models=1)
    jobs = f.claim_all(engine, "w1")
    operations.cancel_jobs(engine, job_ids=[jobs[2].id], actor="op")
    group = GroupCommit(engine, threading.Event())
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(group.record, f.completion(j, f.answer(), None)) for j in jobs]
        _wait_len(group, 3)
        assert not any(fut.done() for fut in futures)
        group.commit()
        outcome = {j.id: fut.result(timeout=10) for j, fut in zip(jobs, futures, strict=True)}
    assert outcome == {
        jobs[0].id: Recorded.SUCCEEDED,
        jobs[1].id: Recorded.SUCCEEDED,
        jobs[2].id: Recorded.DROPPED,
    }


def test_one_bad_answer_fails_only_its_own_job(engine: Engine, caplog: Any) -> None:
    """The batch raises (one bad answer): the failure is logged and each outcome is rewritten
    alone, so the good neighbour is saved and only the bad one's thread gets the error."""
    f.make_batch(engine, prompts=2, models=1)
    good, bad_job = f.claim_all(engine, "w1")
    bad = f.answer(["HubSpot"])
    broken = type(bad)(**{**bad.__dict__, "mentions": bad.mentions * 2})
    group = GroupCommit(engine, threading.Event())
    with ThreadPoolExecutor(2) as pool:
        ok = pool.submit(group.record, f.completion(good, f.answer(), None))
        failing = pool.submit(group.record, f.completion(bad_job, broken, None))
        _wait_len(group, 2)
        assert group.commit_and_claim("w1", 0, lease_seconds=30) == []
        assert ok.result(timeout=10) is Recorded.SUCCEEDED
        with pytest.raises(IntegrityError):
            failing.result(timeout=10)
    assert f.job(engine, good.id).status == "succeeded"
    assert f.job(engine, bad_job.id).status == "processing"
    logged = [r for r in caplog.records if getattr(r, "action", None) == "group_commit_failed"]
    assert logged and logged[0].exc_info is not None


def test_after_close_an_outcome_is_written_by_its_own_thread(engine: Engine) -> None:
    """Once the claim loop has ended (shutdown), a late outcome is still saved, not stranded."""
    f.make_batch(engine, prompts=2, models=1)
    done, failed = f.claim_all(engine, "w1")
    group = GroupCommit(engine, threading.Event())
    group.close()
    assert group.record(f.completion(done, f.answer(), None)) is Recorded.SUCCEEDED
    assert (
        group.record(Failure(failed, FailureRecord(ErrorKind.BAD_REQUEST, "400")))
        is Recorded.FAILED
    )
    assert [f.job(engine, j.id).status for j in (done, failed)] == ["succeeded", "failed"]


def test_a_batch_kept_while_the_database_is_away_is_written_first_next_turn(
    engine: Engine, db_url: str
) -> None:
    """The database refuses connections: the turn raises DatabaseUnavailable and keeps the batch;
    the next turn writes it ahead of later outcomes, in the same order, and until then every
    thread is still waiting (no paid answer is dropped)."""
    f.make_batch(engine, prompts=3, models=1)
    jobs = f.claim_all(engine, "w1")
    own = make_engine(db_url)
    group = GroupCommit(own, threading.Event())

    def refuse(*_: Any) -> None:
        raise own.dialect.loaded_dbapi.OperationalError("connection refused (test)")

    event.listen(own, "do_connect", refuse)
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(group.record, f.completion(j, f.answer(), None)) for j in jobs[:2]]
        _wait_len(group, 2)
        with pytest.raises(DatabaseUnavailable):
            group.commit()
        late = pool.submit(group.record, f.completion(jobs[2], f.answer(), None))
        _wait_len(group, 3)
        assert [o.job.id for o, _ in group._waiting] == [j.id for j in jobs]
        assert not any(fut.done() for fut in [*futures, late])
        event.remove(own, "do_connect", refuse)
        group.commit()
        assert [fut.result(timeout=10) for fut in [*futures, late]] == [Recorded.SUCCEEDED] * 3
    own.dispose()


def test_a_worker_whose_database_turns_read_only_exits_instead_of_hanging(
    engine: Engine, db_url: str, sim: SimulatorServer
) -> None:
    """A failover to a read-only standby makes the claim loop fail with an error that is not
    'unavailable': the worker must end (so its supervisor replaces it) and stop renewing leases,
    not leave its job threads waiting for a commit that never comes."""
    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite reports a read-only database as unavailable: retried, not fatal")
    one_job(engine, "sim-gpt-4o-mini@latency=1500", sim.base_url)
    settings = fast_settings(db_url, concurrency=2)
    worker = Worker(
        settings, WorkerSpec(settings.model_dump(), "test", 0), StopFlag(mp.get_context("spawn"))
    )
    raised: list[BaseException] = []
    thread = threading.Thread(target=_run_worker, args=(worker, raised), daemon=True)
    thread.start()
    wait_for(lambda: f.count(engine, PromptJob, status="processing") == 1, 30, "the job in flight")
    # From now on every connection the worker checks out is read-only. (Disposing its pool to
    # get fresh read-only connections orphaned the one its claim loop held: a ResourceWarning.)
    event.listen(worker.engine, "checkout", _read_only)
    thread.join(30)
    assert not thread.is_alive()
    assert raised and "read-only" in str(raised[0])
    assert f.job(engine, f.job_ids(engine)[0]).status == "processing"  # the reaper's, later


def _run_worker(worker: Worker, raised: list[BaseException]) -> None:
    try:
        worker.run()
    except Exception as exc:  # the test asserts on it
        raised.append(exc)


def _read_only(dbapi_conn: Any, *_: Any) -> None:
    dbapi_conn.execute("SET default_transaction_read_only = on")
    dbapi_conn.commit()


def test_a_stale_attempt_beside_the_current_one_is_told_it_was_dropped(engine: Engine) -> None:
    """The reaper took a job back and the same worker claimed it again while its first thread
    still ran: both attempts' answers reach one batch. Only the current attempt is saved, and
    the stale one is told False (its thread must not log a success)."""
    f.make_batch(engine, prompts=1, models=1)
    [stale] = f.claim_all(engine, "w1", lease_seconds=0.01)
    f.expire_lease(engine, [stale.id])
    queue.reap_expired(engine)
    [current] = f.claim_all(engine, "w1")
    assert (current.id, current.attempt) == (stale.id, 2)
    done = [
        f.completion(stale, f.answer(["HubSpot"]), None),
        f.completion(current, f.answer(["Pipedrive"]), None),
    ]
    assert f.complete_all(engine, done) == [False, True]
    assert f.count(engine, Response) == 1
    with read_tx(engine) as conn:
        assert conn.scalars(select(Entity.name).join(Mention)).all() == ["Pipedrive"]


def test_a_stopping_worker_keeps_a_failure_through_a_database_blip(
    engine: Engine, db_url: str
) -> None:
    """Issue 12: after the claim loop ends (close with retry_seconds, as a stopping worker
    does), a lone write that finds the database away is retried until it comes back: the
    failure is recorded (its attempt kept), not raised and left to the lease."""
    f.make_batch(engine, prompts=1, models=1)
    [job] = f.claim_all(engine, "w1")
    own = make_engine(db_url)
    group = GroupCommit(own, threading.Event())

    def refuse(*_: Any) -> None:
        raise own.dialect.loaded_dbapi.OperationalError("connection refused (test)")

    event.listen(own, "do_connect", refuse)
    group.close(retry_seconds=30)
    failure = Failure(job, FailureRecord(ErrorKind.SERVER_ERROR, "HTTP 500"), 0.0)
    with ThreadPoolExecutor(1) as pool:
        written = pool.submit(group.record, failure)
        threading.Event().wait(1.2)  # two tries refused
        assert not written.done()
        event.remove(own, "do_connect", refuse)
        assert written.result(timeout=20) is Recorded.RETRY
    assert [a.outcome for a in f.attempts(engine, job.id)] == ["retry"]
    own.dispose()
