"""Issue 10, per-model limits across all runners (db.pacing): reservations spaced 60/rpm seconds
and tokens x 60/tpm, a place too far away not reserved, unused tokens given back; and two
runners sharing one limit, counted where the requests arrive (the simulator). Both backends."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import Engine

from db import catalog, pacing
from db.engine import make_engine
from db.models import utcnow
from db.types import JobStatus
from tests import factories as f


def model(engine: Engine) -> int:
    return f.make_models(engine, 1)[0]


def test_requests_are_spaced_sixty_over_rpm(engine: Engine) -> None:
    model_id, now = model(engine), utcnow()
    waits = [
        pacing.reserve_call(
            engine, model_id, rpm=120, tpm=None, tokens=1, max_wait=60, now=now
        ).wait_seconds
        for _ in range(5)
    ]
    step = 0.5 / (1 - pacing.HEADROOM)  # 60/120 s, run 2% under the limit
    assert waits == pytest.approx([0, step, 2 * step, 3 * step, 4 * step])


def test_tokens_push_the_pace_by_their_share_of_a_minute(engine: Engine) -> None:
    model_id, now = model(engine), utcnow()
    first = pacing.reserve_call(
        engine, model_id, rpm=None, tpm=6000, tokens=1000, max_wait=60, now=now
    )
    second = pacing.reserve_call(
        engine, model_id, rpm=None, tpm=6000, tokens=1000, max_wait=60, now=now
    )
    ten = 10 / (1 - pacing.HEADROOM)  # 1,000 of 6,000 per minute, run 2% under the limit
    assert (first.wait_seconds, second.wait_seconds) == pytest.approx((0, ten))
    pacing.refund_tokens(engine, model_id, tpm=6000, tokens=1500)  # 15 s of the 20 s given back
    third = pacing.reserve_call(
        engine, model_id, rpm=None, tpm=6000, tokens=100, max_wait=60, now=now
    )
    assert third.wait_seconds == pytest.approx(ten / 2)


def test_a_place_beyond_max_wait_is_not_reserved(engine: Engine) -> None:
    model_id, now = model(engine), utcnow()
    for _ in range(3):
        pacing.reserve_call(engine, model_id, rpm=6, tpm=None, tokens=1, max_wait=60, now=now)
    thirty = 30 / (1 - pacing.HEADROOM)
    far = pacing.reserve_call(engine, model_id, rpm=6, tpm=None, tokens=1, max_wait=25, now=now)
    assert (far.granted, far.wait_seconds) == (False, pytest.approx(thirty))
    near = pacing.reserve_call(engine, model_id, rpm=6, tpm=None, tokens=1, max_wait=31, now=now)
    assert (near.granted, near.wait_seconds) == (True, pytest.approx(thirty))  # the same place


def test_concurrent_reservations_get_distinct_places(engine: Engine, db_url: str) -> None:
    """Eight threads with their own engines (as runners): 40 places, none shared, spaced 0.1 s."""
    model_id, now = model(engine), utcnow()
    waits: list[float] = []
    lock = threading.Lock()

    def reserve() -> None:
        own = make_engine(db_url)
        try:
            for _ in range(5):
                w = pacing.reserve_call(
                    own, model_id, rpm=600, tpm=None, tokens=1, max_wait=60, now=now
                )
                with lock:
                    waits.append(w.wait_seconds)
        finally:
            own.dispose()

    threads = [threading.Thread(target=reserve) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(waits) == pytest.approx(
        [n / 10 / (1 - pacing.HEADROOM) for n in range(40)], abs=1e-4
    )  # microsecond timestamps


def test_a_paced_job_too_far_out_is_postponed_without_an_attempt(
    engine: Engine, db_url: str, sim
) -> None:
    from runner.worker.jobs import JobOutcome
    from tests.helpers import fast_settings, one_job, run_once

    one_job(engine, "sim-gpt-4o-mini", sim.base_url)
    [m] = catalog.list_models(engine)
    catalog.update_model(engine, m.id, rpm=1)
    pacing.reserve_call(engine, m.id, rpm=1, tpm=None, tokens=1, max_wait=60)  # the next minute
    outcome = run_once(engine, fast_settings(db_url, pacing_max_wait=5))
    assert outcome is JobOutcome.POSTPONED
    [job_id] = f.job_ids(engine)
    row = f.job(engine, job_id)
    assert (row.status, row.attempt_count) == (JobStatus.QUEUED.value, 0)
    assert timedelta(seconds=50) < row.scheduled_for - utcnow() <= timedelta(seconds=60)
    assert f.attempts(engine, job_id) == []


# --- learned limits and AIMD ------------------------------------------------------------------


def test_limits_stated_in_headers_pace_a_model_without_rpm(
    engine: Engine, db_url: str, sim
) -> None:
    """Issue 10, item 3: OpenAI's x-ratelimit-limit-* on an answer become the model's pace in
    this process and are recorded for `models list` and the console."""
    from db.types import ClaimedJob
    from runner.llm.client import ModelClient
    from runner.worker.catalog_cache import CatalogCache
    from runner.worker.group_commit import GroupCommit
    from runner.worker.jobs import JobContext, JobOutcome, run_job
    from runner.worker.learned import LearnedLimits
    from tests.helpers import claim_one, fast_settings, one_job

    one_job(engine, "sim-gpt-4o-mini@style=openai,rpm=600,tpm=200000", sim.base_url, runs=2)
    settings = fast_settings(db_url)
    client = ModelClient(settings)
    learned = LearnedLimits(engine)
    ctx = JobContext(
        settings, engine, client, CatalogCache(engine), GroupCommit(engine), learned=learned
    )
    try:
        first: ClaimedJob = claim_one(engine, "w1")
        assert ctx.pace_of(first) == (None, None)
        assert client.run(run_job(ctx, first)) is JobOutcome.SUCCEEDED
        assert ctx.pace_of(first) == (600, 200000)
        assert (
            client.run(run_job(ctx, claim_one(engine, "w1"))) is JobOutcome.SUCCEEDED
        )  # paced now
    finally:
        client.close()
    [m] = catalog.list_models(engine)
    assert (m.learned_rpm, m.learned_tpm, m.rpm) == (600, 200000, None)
    from db import insights

    [metrics] = insights.metrics_snapshot(engine)
    assert metrics.limits["remaining_requests"] == 599  # what the first answer said was left


def test_a_429_halves_the_concurrency_once_a_second_and_answers_grow_it(engine: Engine) -> None:
    """AIMD across all runners: the first 429 halves the jobs in flight (4 -> 2), more 429s in
    the same second do not halve again, the claim holds the model to it, an answer adds 1/c."""
    from db import queue
    from db.types import ErrorKind, FailureRecord

    f.make_batch(engine, prompts=12, models=1)
    claimed = f.claim_all(engine, "w")
    held = claimed[:4]
    queue.release_jobs(engine, "w", [j.key for j in claimed[4:]])
    limited = FailureRecord(ErrorKind.RATE_LIMITED, "HTTP 429")
    f.fail(engine, held[0], limited, 0)  # 3 still in flight + this one: 4 -> 2
    f.fail(engine, held[1], limited, 0)  # within the second: not halved again
    assert catalog.list_models(engine)[0].concurrency == pytest.approx(2.0)
    later = utcnow() + timedelta(hours=1)
    assert f.claim_all(engine, "w", now=later) == []  # two in flight, at the cap
    assert f.complete(engine, held[2], f.answer(), None)  # 2 + 1/2
    assert catalog.list_models(engine)[0].concurrency == pytest.approx(2.5)
    assert len(f.claim_all(engine, "w", now=later)) == 1  # int(2.5) = 2, one in flight
