"""Claim: atomic, exactly-once, in order, due only, per-model caps, inactive skipped (C7, C13)."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import Engine

from db import catalog, queue
from db.engine import make_engine
from db.models import PromptJob, utcnow
from db.types import JobStatus
from tests import factories as f
from tests.factories import BATCH


def test_claim_stamps_lease_and_attempt(engine: Engine) -> None:
    """A claim moves the job to processing with locked_by, lease, started_at and attempt 1."""
    f.make_batch(engine, prompts=1, models=1)
    before = utcnow()
    [claimed] = queue.claim_jobs(engine, "w1", 5, lease_seconds=30)
    row = f.job(engine, claimed.id)
    assert (row.status, row.locked_by, row.attempt_count) == ("processing", "w1", 1)
    assert (claimed.attempt, claimed.worker_id, claimed.max_attempts) == (1, "w1", 3)
    assert row.started_at >= before - timedelta(seconds=1)
    assert timedelta(seconds=29) <= row.lease_expires_at - row.started_at <= timedelta(seconds=31)
    assert claimed.prompt_text.startswith("prompt 0")
    assert queue.claim_jobs(engine, "w2", 5, lease_seconds=30) == []


def test_claim_returns_at_most_limit(engine: Engine) -> None:
    """Case C7: each claim returns at most its limit, even with many due jobs."""
    f.make_batch(engine, prompts=10, models=2)
    sizes = [len(queue.claim_jobs(engine, "w", n, lease_seconds=30)) for n in (1, 3, 7, 0, 100)]
    assert sizes == [1, 3, 7, 0, 9]


def test_claim_order_priority_then_scheduled_then_id(engine: Engine) -> None:
    """Claims follow (priority, scheduled_for, id)."""
    f.make_batch(engine, prompts=6, models=1)
    a, b, c, d, e, g = f.job_ids(engine)
    now = utcnow()
    f.set_jobs(engine, [a, b, c, d, e, g], scheduled_for=now - timedelta(minutes=5))
    f.set_jobs(engine, [g], priority=-1)
    f.set_jobs(engine, [e], scheduled_for=now - timedelta(minutes=10))
    f.set_jobs(engine, [a], priority=1)
    order = [queue.claim_jobs(engine, "w", 1, lease_seconds=30)[0].id for _ in range(6)]
    assert order == [g, e, b, c, d, a]


def test_claim_order_holds_across_capped_and_uncapped_models(engine: Engine) -> None:
    """A capped model's urgent job is claimed before an uncapped model's later ones: claim order
    is global, caps only limit how many run at once."""
    f.make_prompts(engine, 3)
    [free] = f.make_models(engine, 1, prefix="free")
    [capped] = f.make_models(engine, 1, prefix="capped", max_concurrency=2)
    queue.enqueue_batch(engine, BATCH, max_attempts=3)
    urgent = f.job_ids(engine, model_id=capped)
    f.set_jobs(engine, urgent, priority=-1)
    first = queue.claim_jobs(engine, "w", 3, lease_seconds=30)
    assert [j.model_id for j in first] == [capped, capped, free]
    assert [j.id for j in first[:2]] == urgent[:2]


def test_future_jobs_not_claimed(engine: Engine) -> None:
    """A job scheduled in the future (a retry's backoff) is not claimed until it is due."""
    f.make_batch(engine, prompts=2, models=1)
    later, due = f.job_ids(engine)
    f.set_jobs(engine, [later], scheduled_for=utcnow() + timedelta(minutes=5))
    assert [j.id for j in f.claim_all(engine, "w")] == [due]
    assert f.claim_all(engine, "w") == []
    soon = utcnow() + timedelta(minutes=6)
    assert [j.id for j in f.claim_all(engine, "w", now=soon)] == [later]


def test_only_queued_jobs_claimed(engine: Engine) -> None:
    """Ended and processing jobs are never claimed."""
    f.make_batch(engine, prompts=5, models=1)
    ids = f.job_ids(engine)
    for job_id, status in zip(
        ids, ["succeeded", "failed", "skipped", "cancelled", "queued"], strict=True
    ):
        f.set_jobs(engine, [job_id], status=status)
    assert [j.id for j in f.claim_all(engine, "w")] == [ids[4]]


def test_inactive_prompt_or_model_not_claimed_then_skipped(engine: Engine) -> None:
    """Jobs of a deactivated prompt or model are not claimed; skip_inactive marks them skipped."""
    p_on, p_off = f.make_prompts(engine, 2)
    m_on, m_off = f.make_models(engine, 2)
    queue.enqueue_batch(engine, BATCH, max_attempts=3)
    catalog.update_prompt(engine, p_off, is_active=False)
    catalog.update_model(engine, m_off, is_active=False)
    [claimed] = f.claim_all(engine, "w")
    assert (claimed.prompt_id, claimed.model_id) == (p_on, m_on)
    assert queue.skip_inactive(engine) == 3
    assert queue.skip_inactive(engine) == 0
    assert f.count(engine, PromptJob, status="skipped") == 3
    assert f.count(engine, PromptJob, status="processing") == 1  # running jobs are left alone


def test_max_concurrency_caps_claims(engine: Engine) -> None:
    """A model's max_concurrency bounds its processing jobs; finishing one frees a slot."""
    f.make_prompts(engine, 5)
    [model_id] = f.make_models(engine, 1, max_concurrency=2)
    queue.enqueue_batch(engine, BATCH, max_attempts=3)
    first = queue.claim_jobs(engine, "w1", 10, lease_seconds=30)
    assert len(first) == 2
    assert queue.claim_jobs(engine, "w2", 10, lease_seconds=30) == []
    assert f.complete(engine, first[0], f.answer(), None)
    assert len(queue.claim_jobs(engine, "w2", 10, lease_seconds=30)) == 1
    assert f.count(engine, PromptJob, model_id=model_id, status="processing") == 2


def test_max_concurrency_across_concurrent_claimers(engine: Engine, db_url: str) -> None:
    """max_concurrency holds across 6 concurrent claimers with their own engines: never more
    processing than the cap at any time, and every job still runs exactly once."""
    f.make_prompts(engine, 30)
    f.make_models(engine, 1, max_concurrency=3)
    queue.enqueue_batch(engine, BATCH, max_attempts=3)
    lock = threading.Lock()
    held = Counter[str]()
    peak = [0]
    claimed: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def claimer(name: str) -> None:
        own = make_engine(db_url)
        try:
            barrier.wait(timeout=30)
            idle = 0
            while idle < 50 and len(claimed) < 30:
                jobs = queue.claim_jobs(own, name, 2, lease_seconds=30)
                idle = 0 if jobs else idle + 1
                with lock:  # counted after the claim commits, uncounted before completing
                    held[name] += len(jobs)
                    peak[0] = max(peak[0], sum(held.values()))
                    claimed.extend(j.id for j in jobs)
                for j in jobs:
                    with lock:
                        held[name] -= 1
                    assert f.complete(own, j, f.answer(), None)
        except BaseException as exc:
            errors.append(exc)
        finally:
            own.dispose()

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert 1 <= peak[0] <= 3
    assert sorted(claimed) == f.job_ids(engine)
    assert f.count(engine, PromptJob, status="succeeded") == 30


def test_concurrent_claimers_exactly_once(engine: Engine, db_url: str) -> None:
    """Case C7: 1,000 queued jobs (no ANALYZE), 8 concurrent claimers (threads, each with its own
    engine), limit 1 until empty -> every claim <= its limit, 1,000 distinct ids, none twice, none
    left processing. (Separate processes: case C13 below.)"""
    f.make_batch(engine, prompts=500, models=2)
    outcomes = f.run_threads(f.claim_main, [(db_url, f"w{i}", 1) for i in range(8)])
    claimed = [job_id for ids, _ in outcomes for job_id in ids]
    assert max(largest for _, largest in outcomes) == 1
    assert len(claimed) == 1000
    assert sorted(claimed) == f.job_ids(engine)
    assert f.count(engine, PromptJob, status=JobStatus.SUCCEEDED.value, attempt_count=1) == 1000
    assert f.count(engine, PromptJob, status=JobStatus.PROCESSING.value) == 0


@pytest.mark.subprocess
def test_four_processes_claim_each_job_once(engine: Engine, db_url: str) -> None:
    """Case C13: 4 processes x 200 jobs, claimed 7 at a time with one conditional UPDATE ...
    RETURNING (BEGIN IMMEDIATE on SQLite, SKIP LOCKED on PostgreSQL) -> each job claimed once."""
    f.make_batch(engine, prompts=200, models=4)
    outcomes = f.run_processes(f.claim_main, [(db_url, f"p{i}", 7) for i in range(4)])
    claimed = [job_id for ids, _ in outcomes for job_id in ids]
    assert max(largest for _, largest in outcomes) <= 7
    assert Counter(claimed).most_common(1)[0][1] == 1
    assert sorted(claimed) == f.job_ids(engine)
    assert f.count(engine, PromptJob, status=JobStatus.SUCCEEDED.value, attempt_count=1) == 800
