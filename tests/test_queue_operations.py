"""Operator actions: re-queue and cancel by ids or filter, conditional and audited (C20, C21)."""

from __future__ import annotations

import json
import threading
import time

import pytest
from sqlalchemy import Engine, select, update

from db import operations, queue
from db.engine import make_engine, read_tx, write_tx
from db.errors import InvalidInput
from db.filters import JobQuery
from db.models import AuditLog, PromptJob
from db.types import ErrorKind, FailureRecord
from tests import factories as f
from tests.factories import BATCH


def _fail(engine: Engine, worker: str = "w", kind: ErrorKind = ErrorKind.BAD_REQUEST) -> int:
    """Claim the next job and fail it permanently; returns its id."""
    [job] = queue.claim_jobs(engine, worker, 1, lease_seconds=60)
    f.fail(engine, job, FailureRecord(kind, f"{kind} failure"), 0)
    return job.id


def _audits(engine: Engine) -> list[tuple[str, dict[str, object], int]]:
    with read_tx(engine) as conn:
        rows = conn.execute(
            select(AuditLog.action, AuditLog.target, AuditLog.count)
            .where(AuditLog.action.in_(["requeue", "cancel"]))
            .order_by(AuditLog.id)
        ).all()
    return [(r.action, json.loads(r.target), r.count) for r in rows]


def test_stale_selection_acts_only_on_selected_ids(engine: Engine) -> None:
    """Case C20: the operator selected failure A; failure B arrives before the click; re-queue by
    the selected ids changes A only."""
    f.make_batch(engine, prompts=3, models=1)
    a = _fail(engine)
    selection = [a]  # resolved when the page rendered
    b = _fail(engine)
    assert operations.requeue_jobs(engine, job_ids=selection, fresh_attempts=3, actor="op") == [a]
    assert (f.job(engine, a).status, f.job(engine, b).status) == ("queued", "failed")
    assert _audits(engine) == [("requeue", {"job_ids": [a]}, 1)]


def test_stale_selection_of_a_job_that_moved_on_is_refused(engine: Engine) -> None:
    """Case C20: a selected job that is no longer failed (re-queued elsewhere, now running) is
    left alone: the action is conditional on the status, not just the id."""
    f.make_batch(engine, prompts=1, models=1)
    a = _fail(engine)
    operations.requeue_jobs(engine, job_ids=[a], fresh_attempts=3, actor="other tab")
    [running] = queue.claim_jobs(engine, "w2", 1, lease_seconds=60)
    assert operations.requeue_jobs(engine, job_ids=[a], fresh_attempts=3, actor="op") == []
    row = f.job(engine, a)
    assert (row.status, row.locked_by, row.attempt_count) == ("processing", "w2", 2)
    assert f.complete(engine, running, f.answer(), None)


def test_double_requeue_changes_once(engine: Engine) -> None:
    """Case C21: re-queue clicked twice -> the second changes 0 rows; one audit row; attempts are
    raised once; one runnable copy."""
    f.make_batch(engine, prompts=1, models=1)
    a = _fail(engine)
    first = operations.requeue_jobs(engine, job_ids=[a], fresh_attempts=3, actor="op")
    second = operations.requeue_jobs(engine, job_ids=[a], fresh_attempts=3, actor="op")
    assert (first, second) == ([a], [])
    assert f.job(engine, a).max_attempts == 4
    assert _audits(engine) == [("requeue", {"job_ids": [a]}, 1)]
    assert f.count(engine, PromptJob, status="queued") == 1


def test_concurrent_double_requeue_changes_once(engine: Engine, db_url: str) -> None:
    """Case C21: two re-queue clicks at the same moment from two sessions -> exactly one wins."""
    f.make_batch(engine, prompts=1, models=1)
    a = _fail(engine)
    barrier = threading.Barrier(2)
    changed: list[list[int]] = []

    def click() -> None:
        own = make_engine(db_url)
        try:
            barrier.wait(timeout=30)
            changed.append(operations.requeue_jobs(own, job_ids=[a], fresh_attempts=3, actor="op"))
        finally:
            own.dispose()

    threads = [threading.Thread(target=click) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(changed) == [[], [a]]
    assert f.job(engine, a).max_attempts == 4
    assert len(_audits(engine)) == 1


def test_requeue_then_cancel_is_consistent(engine: Engine) -> None:
    """Case C21: re-queue then cancel -> cancelled, one audit row per effective action; a second
    cancel does nothing."""
    f.make_batch(engine, prompts=1, models=1)
    a = _fail(engine)
    assert operations.requeue_jobs(engine, job_ids=[a], fresh_attempts=3, actor="op") == [a]
    assert operations.cancel_jobs(engine, job_ids=[a], actor="op") == [a]
    assert operations.cancel_jobs(engine, job_ids=[a], actor="op") == []
    row = f.job(engine, a)
    assert (row.status, row.locked_by) == ("cancelled", None)
    assert row.finished_at is not None
    assert f.claim_all(engine, "w") == []
    assert [action for action, _, _ in _audits(engine)] == ["requeue", "cancel"]


def test_requeue_by_filter(engine: Engine) -> None:
    """Re-queue by filter takes every failed job of the filter and nothing else."""
    f.make_batch(engine, prompts=3, models=2)
    m1, _m2 = sorted({f.job(engine, i).model_id for i in f.job_ids(engine)})
    failed = [_fail(engine) for _ in range(4)]
    changed = operations.requeue_jobs(
        engine,
        where=JobQuery(statuses=("failed",), batch_key=BATCH, model_ids=(m1,)),
        fresh_attempts=3,
        actor="op",
    )
    in_m1 = [i for i in failed if f.job(engine, i).model_id == m1]
    assert changed == sorted(in_m1)
    assert 0 < len(changed) < 4
    assert f.count(engine, PromptJob, status="failed") == 4 - len(changed)
    assert _audits(engine) == [
        ("requeue", {"batch_key": BATCH, "model_ids": [m1], "statuses": ["failed"]}, len(changed))
    ]


def test_cancel_by_filter_leaves_other_statuses(engine: Engine) -> None:
    """Cancel by batch filter takes queued and processing jobs; ended ones are untouched."""
    f.make_batch(engine, prompts=4, models=1)
    a = _fail(engine)
    [running] = queue.claim_jobs(engine, "w", 1, lease_seconds=60)
    [done] = queue.claim_jobs(engine, "w", 1, lease_seconds=60)
    f.complete(engine, done, f.answer(), None)
    changed = operations.cancel_jobs(engine, where=JobQuery(batch_key=BATCH), actor="op")
    assert len(changed) == 2
    assert running.id in changed
    assert [f.job(engine, i).status for i in (a, done.id)] == ["failed", "succeeded"]
    assert not f.complete(engine, running, f.answer(), None)
    # Issue 12: the cancelled claim has its attempt row; the queued job (never claimed) none
    cancelled = [
        (x.attempt, x.outcome, x.worker_id, x.error_message) for x in f.attempts(engine, running.id)
    ]
    assert cancelled == [(running.attempt, "cancelled", "w", "cancelled by op")]
    assert [x.outcome for j in changed if j != running.id for x in f.attempts(engine, j)] == []


def test_wrong_statuses_untouched(engine: Engine) -> None:
    """Re-queue ignores queued, processing and succeeded jobs; cancel ignores ended ones."""
    f.make_batch(engine, prompts=3, models=1)
    queued, running, done = f.job_ids(engine)
    f.set_jobs(engine, [running], status="processing", locked_by="w", attempt_count=1)
    f.set_jobs(engine, [done], status="succeeded", attempt_count=1)
    ids = [queued, running, done]
    assert operations.requeue_jobs(engine, job_ids=ids, fresh_attempts=3, actor="op") == []
    f.set_jobs(engine, [queued, running], status="skipped")
    assert operations.cancel_jobs(engine, job_ids=ids, actor="op") == []
    assert _audits(engine) == []


def test_requeue_skipped_and_cancelled(engine: Engine) -> None:
    """Skipped and cancelled jobs can be re-queued with a fresh budget."""
    f.make_batch(engine, prompts=2, models=1)
    skipped, cancelled = f.job_ids(engine)
    f.set_jobs(engine, [skipped], status="skipped")
    operations.cancel_jobs(engine, job_ids=[cancelled], actor="op")
    assert operations.requeue_jobs(
        engine, job_ids=[skipped, cancelled], fresh_attempts=2, actor="op"
    ) == [skipped, cancelled]
    assert [j.max_attempts for j in f.claim_all(engine, "w")] == [2, 2]


def test_ids_or_filter_required(engine: Engine) -> None:
    """Giving both ids and a filter, or neither, is refused."""
    with pytest.raises(InvalidInput):
        operations.cancel_jobs(engine, actor="op")
    with pytest.raises(InvalidInput):
        operations.cancel_jobs(engine, job_ids=[1], where=JobQuery(), actor="op")


def test_cancel_survives_a_lock_conflict(engine: Engine) -> None:
    """Case C21: a cancel that meets another transaction's locks on its rows (a deadlock on
    PostgreSQL, a held write lock on SQLite) is retried, not reported as 'database unavailable'."""
    f.make_batch(engine, prompts=2, models=1)
    a, b = f.job_ids(engine)
    changed: list[list[int]] = []
    errors: list[BaseException] = []

    def cancel() -> None:
        try:
            changed.append(operations.cancel_jobs(engine, job_ids=[a, b], actor="op"))
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=cancel)
    with write_tx(engine) as conn:  # another session: holds b, then wants a (reverse order)
        conn.execute(update(PromptJob).where(PromptJob.id == b).values(priority=1))
        worker.start()
        time.sleep(0.3)  # the cancel now holds a (PostgreSQL) and waits for b
        conn.execute(update(PromptJob).where(PromptJob.id == a).values(priority=1))
    worker.join(timeout=60)
    assert errors == []
    assert changed == [[a, b]]
    assert [f.job(engine, i).status for i in (a, b)] == ["cancelled", "cancelled"]
    assert [action for action, _, _ in _audits(engine)] == ["cancel"]
