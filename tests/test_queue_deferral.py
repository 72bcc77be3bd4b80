"""Issue 10, "attempts mean model failures": a call the provider did not serve is deferred without
spending an attempt, a model-level failure streak pauses the model, and the batch deadline bounds
both. Both backends, through the named operations (no runner)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine

from db import catalog, insights, queue
from db.models import AuditLog, utcnow
from db.types import ErrorKind, FailureRecord, Recorded
from tests import factories as f

RATE_LIMITED = FailureRecord(ErrorKind.RATE_LIMITED, "HTTP 429: Rate limit reached")
BAD_KEY = FailureRecord(ErrorKind.AUTH, "HTTP 401: Incorrect API key provided")
LATER = timedelta(hours=1)


def fail_with(engine: Engine, failure: FailureRecord, *, limit: int = 100) -> list[Recorded]:
    """Claim up to `limit` due jobs (an hour ahead, past any backoff) and record `failure` for
    each."""
    jobs = queue.claim_jobs(engine, "w", limit, lease_seconds=60, now=utcnow() + LATER)
    return [f.fail(engine, job, failure, 0) for job in jobs]


def test_deferrals_spend_no_attempt(engine: Engine) -> None:
    """Five 429s on a ONE-attempt job: five deferrals, then it still succeeds; max_attempts rises
    with each deferral so attempt_count (the fence token) never goes back."""
    f.make_batch(engine, prompts=1, models=1, max_attempts=1)
    for _ in range(5):
        assert fail_with(engine, RATE_LIMITED) == [Recorded.DEFERRED]
    [job] = f.claim_all(engine, "w", now=utcnow() + LATER)
    assert (job.attempt, job.max_attempts, job.deferrals) == (6, 6, 5)
    assert f.complete(engine, job, f.answer(), None)
    row = f.job(engine, job.id)
    assert (row.status, row.deferrals, row.error_kind) == ("succeeded", 5, None)
    outcomes = [a.outcome for a in f.attempts(engine, job.id)]
    assert outcomes == ["deferred"] * 5 + ["succeeded"]


def test_a_deferral_waits_for_the_limit_to_reset(engine: Engine) -> None:
    """The job is not claimable before the wait (Retry-After, or the backoff) has passed."""
    f.make_batch(engine, prompts=1, models=1)
    [job] = f.claim_all(engine, "w")
    assert f.fail(engine, job, RATE_LIMITED, 30) is Recorded.DEFERRED
    assert f.claim_all(engine, "w", now=utcnow() + timedelta(seconds=25)) == []
    assert len(f.claim_all(engine, "w", now=utcnow() + timedelta(seconds=31))) == 1


def test_a_deferral_past_the_deadline_fails_the_job(engine: Engine) -> None:
    """A deferral (or retry) due after the batch deadline fails the job with kind 'deadline'; the
    attempt row keeps what the provider said."""
    f.make_prompts(engine, 1)
    f.make_models(engine, 1)
    deadline = utcnow() + timedelta(minutes=10)
    queue.enqueue_batch(engine, f.BATCH, max_attempts=3, deadline_at=deadline)
    [job] = f.claim_all(engine, "w")
    assert job.deadline_at == deadline
    assert f.fail(engine, job, RATE_LIMITED, 3600) is Recorded.FAILED
    row = f.job(engine, job.id)
    assert (row.status, row.error_kind) == ("failed", "deadline")
    assert row.error_message == "batch deadline reached: HTTP 429: Rate limit reached"
    [attempt] = f.attempts(engine, job.id)
    assert (attempt.outcome, attempt.error_kind) == ("failed", "rate_limited")


def test_queued_jobs_past_their_deadline_fail_and_are_never_claimed(engine: Engine) -> None:
    f.make_prompts(engine, 2)
    f.make_models(engine, 1)
    queue.enqueue_batch(
        engine, f.BATCH, max_attempts=3, deadline_at=utcnow() + timedelta(seconds=1)
    )
    assert f.claim_all(engine, "w", now=utcnow() + timedelta(seconds=2)) == []
    f.set_jobs(engine, f.job_ids(engine), deadline_at=utcnow() - timedelta(seconds=1))
    assert queue.fail_past_deadline(engine) == 2
    rows = [f.job(engine, i) for i in f.job_ids(engine)]
    assert {(r.status, r.error_kind) for r in rows} == {("failed", "deadline")}
    assert queue.fail_past_deadline(engine) == 0


def test_k_model_level_failures_pause_the_model_and_keep_its_jobs(engine: Engine) -> None:
    """401 for four jobs in flight (K=3): each deferred, the third pauses the model with its
    reason; nothing of the model is claimed while paused; resume brings the jobs back."""
    f.make_batch(engine, prompts=4, models=1)
    (model_id,) = [m.id for m in catalog.list_models(engine)]
    recorded = fail_with(engine, BAD_KEY)
    assert recorded == [Recorded.DEFERRED, Recorded.DEFERRED, Recorded.PAUSED, Recorded.DEFERRED]
    [model] = catalog.list_models(engine)
    assert model.state == "paused" and model.failure_streak == 4
    assert model.paused_reason == "auth: HTTP 401: Incorrect API key provided"
    assert f.claim_all(engine, "w", now=utcnow() + LATER) == []
    assert insights.pending_jobs(engine, due_within_seconds=7200) == 0  # a drain may end
    [paused] = insights.paused_models(engine)
    assert (paused.name, paused.queued) == (model.name, 4)
    assert f.count(engine, AuditLog, action="model_resume") == 0
    assert catalog.resume_model(engine, model_id, actor="op") is True
    assert catalog.resume_model(engine, model_id, actor="op") is False  # once
    assert f.count(engine, AuditLog, action="model_resume", actor="op") == 1
    assert len(f.claim_all(engine, "w", now=utcnow() + LATER)) == 4
    assert {f.job(engine, i).status for i in f.job_ids(engine)} == {"processing"}


def test_after_one_model_level_failure_the_model_is_probed_one_call_at_a_time(
    engine: Engine,
) -> None:
    """The first 401 limits the model to one job in flight until an answer comes back, so a
    rejected key costs at most K calls made after it; the answer restarts the streak."""
    f.make_batch(engine, prompts=6, models=1)
    first, *rest = f.claim_all(engine, "w")
    for job in rest:  # hand the others back uncalled, as a stopping worker does
        queue.release_jobs(engine, "w", [job.key])
    assert f.fail(engine, first, BAD_KEY, 0) is Recorded.DEFERRED
    [probe] = f.claim_all(engine, "w", now=utcnow() + LATER)
    assert f.claim_all(engine, "w", now=utcnow() + LATER) == []  # one at a time
    assert f.complete(engine, probe, f.answer(), None)
    assert catalog.list_models(engine)[0].failure_streak == 0
    assert len(f.claim_all(engine, "w", now=utcnow() + LATER)) == 5


def test_an_answer_between_failures_restarts_the_streak(engine: Engine) -> None:
    f.make_batch(engine, prompts=5, models=1)
    assert (
        fail_with(engine, BAD_KEY, limit=1) + fail_with(engine, BAD_KEY, limit=1)
        == [Recorded.DEFERRED] * 2
    )
    [job] = f.claim_all(engine, "w", now=utcnow() + LATER)
    assert f.complete(engine, job, f.answer(), None)
    assert (
        fail_with(engine, BAD_KEY, limit=1) + fail_with(engine, BAD_KEY, limit=1)
        == [Recorded.DEFERRED] * 2
    )
    [model] = catalog.list_models(engine)
    assert (model.state, model.failure_streak) == ("active", 2)


def test_pausing_off_fails_a_model_level_error_at_once(engine: Engine) -> None:
    from db import results
    from db.types import Failure

    f.make_batch(engine, prompts=1, models=1)
    [job] = f.claim_all(engine, "w")
    [recorded] = results.write_outcomes(engine, [Failure(job, BAD_KEY, 0, pause_after=0)])
    assert recorded is Recorded.FAILED
    assert (f.job(engine, job.id).status, catalog.list_models(engine)[0].failure_streak) == (
        "failed",
        0,
    )


def test_operator_pause_is_audited_and_idempotent(engine: Engine) -> None:
    f.make_batch(engine, prompts=2, models=2)
    first, second = (m.id for m in catalog.list_models(engine))
    assert catalog.pause_model(engine, first, reason="maintenance", actor="op") is True
    assert catalog.pause_model(engine, first, reason="again", actor="op") is False
    assert f.count(engine, AuditLog, action="model_pause") == 1
    claimed = f.claim_all(engine, "w")
    assert {j.model_id for j in claimed} == {second}
    assert catalog.list_models(engine)[0].paused_reason == "maintenance"


def test_status_counts_deferred_jobs(engine: Engine) -> None:
    """The batch overview counts the queued jobs waiting after a deferral and all deferrals."""
    f.make_batch(engine, prompts=3, models=1)
    jobs = f.claim_all(engine, "w")
    f.fail(engine, jobs[0], RATE_LIMITED, 30)
    f.fail(engine, jobs[1], FailureRecord(ErrorKind.SERVER_ERROR, "HTTP 500"), 30)
    overview = insights.batch_overview(engine, f.BATCH)
    assert (overview.deferred, overview.deferrals, overview.interruptions) == (1, 1, 0)
    assert overview.get(insights.JobStatus.QUEUED) == 2


@pytest.mark.parametrize("missing", ["resume", "pause"])
def test_unknown_model_is_not_found(engine: Engine, missing: str) -> None:
    from db.errors import NotFound

    with pytest.raises(NotFound):
        if missing == "resume":
            catalog.resume_model(engine, 999, actor="op")
        else:
            catalog.pause_model(engine, 999, reason="x", actor="op")


def test_an_answer_to_a_call_made_before_the_failure_does_not_restart_the_streak(
    engine: Engine,
) -> None:
    """A key revoked mid-batch: calls admitted before it still answer, but only a probe claimed
    after the first 401 tells whether the key works again."""
    f.make_batch(engine, prompts=3, models=1)
    early, rejected, _ = f.claim_all(engine, "w")
    assert f.fail(engine, rejected, BAD_KEY, 0) is Recorded.DEFERRED
    assert f.complete(engine, early, f.answer(), None)  # admitted before the revocation
    assert catalog.list_models(engine)[0].failure_streak == 1
