"""Leases: heartbeat, release on shutdown, and the reaper for workers that died (C8)."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta

from sqlalchemy import Engine

from db import operations, queue
from db.engine import make_engine
from db.models import JobAttempt, PromptJob, utcnow
from tests import factories as f


def test_heartbeat_extends_only_own_processing_jobs(engine: Engine) -> None:
    """Heartbeat extends the worker's leases in one statement and reports the (job id, attempt)
    pairs it still holds."""
    f.make_batch(engine, prompts=3, models=1)
    a, b, c = f.job_ids(engine)
    queue.claim_jobs(engine, "w1", 2, lease_seconds=5)
    queue.claim_jobs(engine, "w2", 1, lease_seconds=5)
    held = queue.heartbeat(engine, "w1", [(a, 1), (b, 1), (c, 1)], lease_seconds=120)
    assert held == {(a, 1), (b, 1)}
    assert f.job(engine, a).lease_expires_at - utcnow() > timedelta(seconds=100)
    assert f.job(engine, c).lease_expires_at - utcnow() < timedelta(seconds=10)
    assert queue.heartbeat(engine, "w1", [], lease_seconds=120) == set()


def test_heartbeat_renews_only_the_attempt_the_worker_holds_now(engine: Engine) -> None:
    """A worker frozen past its lease, then claiming the job again (the reaper re-queued it),
    holds two attempts of it: the heartbeat renews the later and reports the earlier lost, so
    that one is not called."""
    f.make_batch(engine, prompts=1, models=1)
    [first] = f.claim_all(engine, "w")
    f.expire_lease(engine, [first.id])
    assert queue.reap_expired(engine) == [(first.id, "queued")]
    [again] = f.claim_all(engine, "w")
    held = queue.heartbeat(engine, "w", [first.key, again.key], lease_seconds=60)
    assert held == {(first.id, 2)} == {again.key}


def test_release_by_an_earlier_attempt_leaves_the_later_claim(engine: Engine) -> None:
    """A worker frozen past its lease that claimed the job again holds two attempts of it: a
    release of the earlier one (its pacing hand-back, say) must not release the later claim."""
    f.make_batch(engine, prompts=1, models=1)
    [first] = f.claim_all(engine, "w")
    f.expire_lease(engine, [first.id])
    queue.reap_expired(engine)
    [again] = f.claim_all(engine, "w")
    assert queue.release_jobs(engine, "w", [first.key]) == 0
    assert f.job(engine, first.id).status == "processing"
    assert queue.release_jobs(engine, "w", [again.key]) == 1
    assert (f.job(engine, first.id).status, f.job(engine, first.id).attempt_count) == ("queued", 1)


def test_heartbeat_keeps_job_from_reaper(engine: Engine) -> None:
    """A job whose lease was renewed is not reaped; one whose lease lapsed is."""
    f.make_batch(engine, prompts=2, models=1)
    alive, dead = f.job_ids(engine)
    f.claim_all(engine, "w")
    f.expire_lease(engine, [alive, dead])
    assert queue.heartbeat(engine, "w", [(alive, 1)], lease_seconds=60) == {(alive, 1)}
    assert queue.reap_expired(engine) == [(dead, "queued")]
    assert f.job(engine, alive).status == "processing"


def test_release_returns_jobs_without_spending_attempt(engine: Engine) -> None:
    """Graceful shutdown: release_jobs hands in-flight jobs back to queued, claimable now, attempt
    not spent, no job_attempts row; other workers' jobs are untouched."""
    f.make_batch(engine, prompts=3, models=1)
    mine = queue.claim_jobs(engine, "w1", 2, lease_seconds=60)
    [theirs] = queue.claim_jobs(engine, "w2", 1, lease_seconds=60)
    ids = [j.id for j in mine]
    assert queue.release_jobs(engine, "w1", [*(j.key for j in mine), theirs.key]) == 2
    assert queue.release_jobs(engine, "w1", [j.key for j in mine]) == 0
    for job_id in ids:
        row = f.job(engine, job_id)
        assert (row.status, row.attempt_count, row.locked_by, row.lease_expires_at) == (
            "queued",
            0,
            None,
            None,
        )
    assert f.job(engine, theirs.id).status == "processing"
    assert f.count(engine, JobAttempt) == 0
    again = queue.claim_jobs(engine, "w3", 5, lease_seconds=60)
    assert sorted(j.id for j in again) == ids
    assert [j.attempt for j in again] == [1, 1]
    assert not f.complete(engine, mine[0], f.answer(), None)  # w1 no longer holds it


def test_expired_lease_requeued_with_attempt_spent(engine: Engine) -> None:
    """Case C8: a claimed job whose worker died is queued again once its lease expires, with the
    attempt spent and recorded as lost (error_kind lease_expired)."""
    f.make_batch(engine, prompts=2, models=1)
    dead, live = f.claim_all(engine, "dead-worker")
    f.expire_lease(engine, [dead.id])
    assert queue.reap_expired(engine) == [(dead.id, "queued")]
    assert queue.reap_expired(engine) == []
    row = f.job(engine, dead.id)
    assert (row.status, row.attempt_count, row.error_kind, row.locked_by) == (
        "queued",
        1,
        "lease_expired",
        None,
    )
    assert "dead-worker" in (row.error_message or "")
    assert f.job(engine, live.id).status == "processing"
    [lost] = f.attempts(engine, dead.id)
    assert (lost.attempt, lost.outcome, lost.error_kind) == (1, "lost", "lease_expired")
    [again] = f.claim_all(engine, "w2")
    assert (again.id, again.attempt) == (dead.id, 2)


def test_lost_leases_spend_the_interruption_budget_not_attempts(engine: Engine) -> None:
    """Case C8 and issue 10: a lease lost with its worker spends no attempt (max_attempts rises
    with each) but one of max_interruptions; at the budget the job fails (finished_at set), never
    left processing, though its attempts were never spent."""
    f.make_batch(engine, prompts=1, models=1, max_attempts=2)
    for expected in ("queued", "queued", "failed"):
        [job] = f.claim_all(engine, "w")
        f.expire_lease(engine, [job.id])
        assert queue.reap_expired(engine, max_interruptions=3) == [(job.id, expected)]
    row = f.job(engine, job.id)
    assert (row.status, row.attempt_count, row.error_kind) == ("failed", 3, "lease_expired")
    assert (row.interruptions, row.max_attempts) == (3, 5)  # 2 attempts, none of them spent
    assert row.finished_at is not None
    assert f.claim_all(engine, "w") == []
    assert [a.outcome for a in f.attempts(engine, job.id)] == ["lost", "lost", "lost"]


def test_failed_job_at_three_of_three_requeued_runs_again(engine: Engine) -> None:
    """Case C8: a job failed at attempts 3/3 that an operator re-queues is claimable again, with
    max_attempts raised, and completes; its history keeps all four attempts."""
    f.make_batch(engine, prompts=1, models=1, max_attempts=3)
    for _ in range(3):
        [job] = f.claim_all(engine, "w", now=utcnow() + timedelta(hours=1))
        f.expire_lease(engine, [job.id])
        queue.reap_expired(engine, max_interruptions=3)
    assert (f.job(engine, job.id).status, f.job(engine, job.id).attempt_count) == ("failed", 3)
    assert operations.requeue_jobs(engine, job_ids=[job.id], fresh_attempts=3, actor="op") == [
        job.id
    ]
    row = f.job(engine, job.id)
    assert (row.status, row.max_attempts, row.error_kind, row.finished_at) == (
        "queued",
        6,
        None,
        None,
    )
    [again] = f.claim_all(engine, "w")
    assert (again.attempt, again.max_attempts) == (4, 6)
    assert f.complete(engine, again, f.answer(), None)
    assert [a.outcome for a in f.attempts(engine, job.id)] == ["lost"] * 3 + ["succeeded"]


def test_reap_is_idempotent_under_concurrency(engine: Engine, db_url: str) -> None:
    """Case C8: 6 reapers at once over 60 expired leases: each job reaped exactly once, one lost
    attempt row each, no error."""
    f.make_batch(engine, prompts=30, models=2)
    jobs = f.claim_all(engine, "dead")
    f.expire_lease(engine, [j.id for j in jobs])
    barrier = threading.Barrier(6)
    reaped: list[tuple[int, str]] = []
    errors: list[BaseException] = []

    def reap() -> None:
        own = make_engine(db_url)
        try:
            barrier.wait(timeout=30)
            reaped.extend(queue.reap_expired(own))
        except BaseException as exc:
            errors.append(exc)
        finally:
            own.dispose()

    threads = [threading.Thread(target=reap) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert Counter(job_id for job_id, _ in reaped) == Counter(j.id for j in jobs)
    assert f.count(engine, PromptJob, status="queued", attempt_count=1) == 60
    assert f.count(engine, JobAttempt, outcome="lost") == 60


def test_reap_leaves_live_and_ended_jobs_alone(engine: Engine) -> None:
    """Only processing jobs past their lease are reaped."""
    f.make_batch(engine, prompts=3, models=1)
    done, live, queued = f.job_ids(engine)
    jobs = {j.id: j for j in queue.claim_jobs(engine, "w", 2, lease_seconds=60)}
    assert f.complete(engine, jobs[done], f.answer(), None)
    f.set_jobs(engine, [done, queued], lease_expires_at=utcnow() - timedelta(minutes=5))
    assert queue.reap_expired(engine) == []
    assert [f.job(engine, i).status for i in (done, live, queued)] == [
        "succeeded",
        "processing",
        "queued",
    ]
