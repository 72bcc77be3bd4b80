"""Recording outcomes: complete in one transaction, fenced writes, retries with backoff (C14)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError

from db import operations, queue
from db.engine import make_engine, read_tx, write_tx
from db.insights import batch_overview
from db.models import Entity, JobAttempt, Mention, PromptJob, Response, utcnow
from db.types import ErrorKind, FailureRecord, JobStatus, Recorded
from tests import factories as f
from tests.factories import BATCH


def test_complete_saves_everything_in_one_go(engine: Engine) -> None:
    """A success writes the response, its mentions, the attempt row and 'succeeded' together."""
    f.make_batch(engine, prompts=1, models=1)
    [job] = f.claim_all(engine, "w1")
    assert f.complete(engine, job, f.answer(["HubSpot", "Pipedrive"]), 0.0021)
    row = f.job(engine, job.id)
    assert (row.status, row.locked_by, row.lease_expires_at) == ("succeeded", None, None)
    assert row.finished_at is not None
    with read_tx(engine) as conn:
        response = conn.execute(select(Response).where(Response.job_id == job.id)).one()
        mentions = conn.execute(
            select(Entity.name, Mention.position, Mention.char_offset)
            .join(Entity)
            .order_by(Mention.position)
        ).all()
    assert (response.batch_key, response.output_mode, response.cost) == (
        BATCH,
        "structured",
        0.0021,
    )
    body = f.answer(["HubSpot", "Pipedrive"]).answer or ""
    assert [tuple(m) for m in mentions] == [
        ("HubSpot", 1, body.index("HubSpot")),
        ("Pipedrive", 2, body.index("Pipedrive")),
    ]
    [attempt] = f.attempts(engine, job.id)
    assert (attempt.attempt, attempt.outcome, attempt.worker_id) == (1, "succeeded", "w1")


def test_complete_is_all_or_nothing(engine: Engine) -> None:
    """A failure halfway (a mention that breaks a constraint) leaves no response, no attempt row,
    and the job still processing for its worker: nothing is half-saved."""
    f.make_batch(engine, prompts=1, models=1)
    [job] = f.claim_all(engine, "w1")
    bad = f.answer(["HubSpot"])
    broken = type(bad)(**{**bad.__dict__, "mentions": bad.mentions * 2})  # same entity twice
    with pytest.raises(IntegrityError, match=r"(?i)unique"):
        f.complete(engine, job, broken, None)
    assert f.job(engine, job.id).status == "processing"
    assert (
        f.count(engine, Response),
        f.count(engine, Mention),
        f.count(engine, Entity),
        f.count(engine, JobAttempt),
    ) == (0, 0, 0, 0)
    assert f.complete(engine, job, bad, None)
    assert f.count(engine, Response) == 1


def test_complete_after_cancel_writes_nothing(engine: Engine) -> None:
    """Fencing: a job cancelled while processing drops the worker's late result, failure or
    heartbeat; it stays cancelled with no response (its one attempt row is the cancel's)."""
    f.make_batch(engine, prompts=1, models=1)
    [job] = f.claim_all(engine, "w1")
    assert operations.cancel_jobs(engine, job_ids=[job.id], actor="op") == [job.id]
    assert queue.heartbeat(engine, "w1", [job.key], lease_seconds=30) == set()
    assert not f.complete(engine, job, f.answer(["HubSpot"]), None)
    failure = FailureRecord(ErrorKind.SERVER_ERROR, "HTTP 500")
    assert f.fail(engine, job, failure, 1) is Recorded.DROPPED
    assert f.job(engine, job.id).status == "cancelled"
    assert (
        f.count(engine, Response),
        f.count(engine, Mention),
        f.count(engine, Entity),
        f.count(engine, JobAttempt),
    ) == (0, 0, 0, 1)
    assert [a.outcome for a in f.attempts(engine, job.id)] == ["cancelled"]


def test_late_complete_after_lease_takeover_dropped(engine: Engine) -> None:
    """Fencing: worker A's lease expires, the reaper re-queues, B claims; A's late complete and
    heartbeat are dropped, B's result is kept: one response per job."""
    f.make_batch(engine, prompts=1, models=1)
    [first] = f.claim_all(engine, "A")
    f.expire_lease(engine, [first.id])
    assert queue.reap_expired(engine) == [(first.id, "queued")]
    [second] = f.claim_all(engine, "B")
    assert (second.id, second.attempt) == (first.id, 2)
    assert queue.heartbeat(engine, "A", [first.key], lease_seconds=30) == set()
    assert not f.complete(engine, first, f.answer(["HubSpot"]), None)
    assert f.complete(engine, second, f.answer(["Salesforce"]), None)
    assert not f.complete(engine, second, f.answer(["Salesforce"]), None)
    assert f.count(engine, Response) == 1
    with read_tx(engine) as conn:
        assert conn.scalar(select(Entity.name)) == "Salesforce"
    assert [(a.attempt, a.outcome, a.worker_id) for a in f.attempts(engine, first.id)] == [
        (1, "lost", None),
        (2, "succeeded", "B"),
    ]


def test_a_late_answer_is_kept_when_nobody_claimed_the_job_since(engine: Engine) -> None:
    """Issue 12 (the soak): A is frozen past its lease, the reaper takes the job back, and A's
    answer lands before anyone claims it again: the paid answer is the job's, so it is saved and
    the lost attempt becomes its success (one response, one attempt row, no second call)."""
    f.make_batch(engine, prompts=1, models=1)
    [job] = f.claim_all(engine, "A")
    f.expire_lease(engine, [job.id])
    assert queue.reap_expired(engine) == [(job.id, "queued")]
    assert f.complete(engine, job, f.answer(["HubSpot"]), None)
    assert f.job(engine, job.id).status == "succeeded"
    assert f.count(engine, Response) == 1
    assert f.count(engine, Mention) == 1
    assert [(a.attempt, a.outcome, a.worker_id) for a in f.attempts(engine, job.id)] == [
        (1, "succeeded", "A"),
    ]
    assert f.claim_all(engine, "B") == []


def test_a_late_answer_of_a_cancelled_job_is_not_kept(engine: Engine) -> None:
    """Only a lease taken back is undone by a late answer: an operator's cancel (even re-queued
    since) is a decision, and its in-flight answer stays dropped."""
    f.make_batch(engine, prompts=1, models=1)
    [job] = f.claim_all(engine, "A")
    operations.cancel_jobs(engine, job_ids=[job.id], actor="test")
    operations.requeue_jobs(engine, job_ids=[job.id], fresh_attempts=1, actor="test")
    assert not f.complete(engine, job, f.answer(["HubSpot"]), None)
    assert f.job(engine, job.id).status == "queued"
    assert f.count(engine, Response) == 0


def test_same_worker_reclaim_fences_on_attempt(engine: Engine) -> None:
    """Fencing: the same worker id re-claiming the job (another thread) gets a new attempt; the
    stale holder of attempt 1 cannot write."""
    f.make_batch(engine, prompts=1, models=1)
    [stale] = f.claim_all(engine, "w")
    f.expire_lease(engine, [stale.id])
    queue.reap_expired(engine)
    [fresh] = f.claim_all(engine, "w")
    failure = FailureRecord(ErrorKind.BAD_REQUEST, "400")
    assert f.fail(engine, stale, failure, 0) is Recorded.DROPPED
    assert not f.complete(engine, stale, f.answer(), None)
    assert f.job(engine, fresh.id).status == "processing"
    assert f.complete(engine, fresh, f.answer(), None)


def test_transient_failure_retries_after_backoff(engine: Engine) -> None:
    """A transient error with attempts left goes back to queued at now + backoff and is not
    claimable before then; one job_attempts row per attempt."""
    f.make_batch(engine, prompts=1, models=1)
    [job] = f.claim_all(engine, "w")
    before = utcnow()
    failure = FailureRecord(ErrorKind.SERVER_ERROR, "HTTP 500", latency_ms=12, retry_after=30)
    assert f.fail(engine, job, failure, 30) is Recorded.RETRY
    row = f.job(engine, job.id)
    assert (row.status, row.error_kind, row.locked_by, row.finished_at) == (
        "queued",
        "server_error",
        None,
        None,
    )
    assert timedelta(seconds=29) <= row.scheduled_for - before <= timedelta(seconds=31)
    assert f.claim_all(engine, "w") == []
    [again] = f.claim_all(engine, "w", now=utcnow() + timedelta(seconds=31))
    assert again.attempt == 2
    [a1] = f.attempts(engine, job.id)
    assert (a1.attempt, a1.outcome, a1.error_kind, a1.latency_ms) == (
        1,
        "retry",
        "server_error",
        12,
    )


def test_permanent_failure_fails_at_once(engine: Engine) -> None:
    """A permanent error fails the job on its first attempt, with finished_at and the message."""
    f.make_batch(engine, prompts=1, models=1)
    [job] = f.claim_all(engine, "w")
    failure = FailureRecord(ErrorKind.BAD_REQUEST, "HTTP 400: invalid 'messages'")
    assert f.fail(engine, job, failure, 30) is Recorded.FAILED
    row = f.job(engine, job.id)
    assert (row.status, row.error_kind, row.error_message) == (
        "failed",
        "bad_request",
        "HTTP 400: invalid 'messages'",
    )
    assert row.finished_at is not None
    outcomes = [(a.outcome, a.error_kind) for a in f.attempts(engine, job.id)]
    assert outcomes == [("failed", "bad_request")]


def test_transient_failure_with_attempts_spent_fails(engine: Engine) -> None:
    """Three transient failures of a 3-attempt job: retry, retry, failed; three attempt rows."""
    f.make_batch(engine, prompts=1, models=1, max_attempts=3)
    outcomes = []
    for _ in range(3):
        [job] = f.claim_all(engine, "w", now=utcnow() + timedelta(hours=1))
        failure = FailureRecord(ErrorKind.SERVER_ERROR, "HTTP 500")
        outcomes.append(f.fail(engine, job, failure, 1))
    assert outcomes == [Recorded.RETRY, Recorded.RETRY, Recorded.FAILED]
    row = f.job(engine, job.id)
    assert (row.status, row.attempt_count) == ("failed", 3)
    assert [(a.attempt, a.outcome) for a in f.attempts(engine, job.id)] == [
        (1, "retry"),
        (2, "retry"),
        (3, "failed"),
    ]


def test_entities_created_once_under_concurrency(engine: Engine, db_url: str) -> None:
    """Two workers completing at once, both naming the same new brands (in opposite orders), make
    one entity per brand and no error."""
    f.make_batch(engine, prompts=8, models=1)
    jobs = f.claim_all(engine, "w")
    brands = [f"NewBrand {i}" for i in range(6)]
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def complete(part: list, names: list[str]) -> None:
        own = make_engine(db_url)
        try:
            barrier.wait(timeout=30)
            for j in part:
                assert f.complete(own, j, f.answer(names), None)
        except BaseException as exc:
            errors.append(exc)
        finally:
            own.dispose()

    threads = [
        threading.Thread(target=complete, args=(jobs[::2], brands)),
        threading.Thread(target=complete, args=(jobs[1::2], brands[::-1])),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert f.count(engine, Entity) == 6
    assert f.count(engine, Mention) == 8 * 6
    assert f.count(engine, PromptJob, status="succeeded") == 8


@pytest.mark.subprocess
def test_workers_and_reader_never_see_database_locked(engine: Engine, db_url: str) -> None:
    """Case C14: 4 worker processes x 100 jobs, each saving a response + 5 mentions, while a
    reader polls every 100 ms -> zero 'database is locked' failures, WAL on every connection,
    every job succeeded on its first attempt (lock waits are not attempts)."""
    f.make_batch(engine, prompts=100, models=4)
    reader_errors: list[BaseException] = []
    polls = [0]
    stop = threading.Event()

    def read() -> None:
        own = make_engine(db_url)
        try:
            while not stop.is_set():
                batch_overview(own, BATCH)
                polls[0] += 1
                stop.wait(0.1)
        except BaseException as exc:
            reader_errors.append(exc)
        finally:
            own.dispose()

    reader = threading.Thread(target=read)
    reader.start()
    try:
        outcomes = f.run_processes(f.work_main, [(db_url, f"p{i}") for i in range(4)])
    finally:
        stop.set()
        reader.join(timeout=30)
    assert reader_errors == []
    assert polls[0] >= 3
    assert [o["errors"] for o in outcomes] == [[], [], [], []]
    assert sum(len(o["done"]) for o in outcomes) == 400
    expected = {"wal"} if engine.dialect.name == "sqlite" else {"n/a"}
    assert all(o["journal"] == expected for o in outcomes)
    assert f.journal_modes(engine) == expected
    assert f.count(engine, PromptJob, status=JobStatus.SUCCEEDED.value, attempt_count=1) == 400
    assert (f.count(engine, Response), f.count(engine, Mention)) == (400, 2000)
    assert f.count(engine, JobAttempt, outcome="succeeded") == 400
    assert f.count(engine, Entity) == len(f.BRANDS)


def test_reader_sees_progress_while_workers_write(engine: Engine) -> None:
    """Case C14: a read during a write transaction does not wait for it (WAL / MVCC)."""
    f.make_batch(engine, prompts=2, models=1)
    [job, _] = f.claim_all(engine, "w")
    with write_tx(engine) as conn:
        conn.execute(PromptJob.__table__.update().where(PromptJob.id == job.id).values(priority=5))
        started = time.monotonic()
        assert batch_overview(engine, BATCH).get(JobStatus.PROCESSING) == 2
        assert time.monotonic() - started < 2
