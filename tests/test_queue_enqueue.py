"""Enqueue: one set-based, idempotent statement per batch, safe to run concurrently (C9-C11)."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError

from db import catalog, queue
from db.engine import make_engine, write_tx
from db.models import AuditLog, Prompt, PromptJob, utcnow
from db.types import JobStatus
from tests import factories as f
from tests.factories import BATCH


def _job_row(prompt: int, model: int, **override: object) -> dict[str, object]:
    now = utcnow()
    row: dict[str, object] = {
        "prompt_id": prompt,
        "model_id": model,
        "run_index": 0,
        "batch_key": BATCH,
        "status": "queued",
        "priority": 0,
        "attempt_count": 0,
        "max_attempts": 3,
        "scheduled_for": now,
        "created_at": now,
        "updated_at": now,
    }
    row.update(override)
    return row


def test_enqueue_counts_created_then_existing(engine: Engine) -> None:
    """Case C10: the first enqueue creates prompts x models x runs; the second creates none."""
    f.make_prompts(engine, 4, runs=2)
    f.make_models(engine, 3)
    first = queue.enqueue_batch(engine, BATCH, max_attempts=3)
    second = queue.enqueue_batch(engine, BATCH, max_attempts=3)
    assert (first.batch_key, first.created, first.existing) == (BATCH, 24, 0)
    assert (second.created, second.existing) == (0, 24)
    assert f.count(engine, PromptJob) == 24
    assert f.count(engine, PromptJob, status="queued", attempt_count=0, max_attempts=3) == 24


def test_enqueue_other_batch_key_is_a_new_batch(engine: Engine) -> None:
    """Each UTC day is its own batch: a second key creates a full new set."""
    f.make_batch(engine, prompts=2, models=2)
    other = queue.enqueue_batch(engine, "2026-12-01", max_attempts=3)
    assert (other.created, other.existing) == (4, 0)
    assert f.count(engine, PromptJob, batch_key="2026-12-01") == 4


@pytest.mark.parametrize("column", ["prompt_id", "model_id", "run_index", "batch_key"])
def test_null_in_unique_key_rejected(engine: Engine, column: str) -> None:
    """Case C9: a NULL in any unique-key column is refused by NOT NULL; the batch stays exact."""
    [prompt_id] = f.make_prompts(engine, 1)
    [model_id] = f.make_models(engine, 1)
    with pytest.raises(IntegrityError), write_tx(engine) as conn:
        conn.execute(
            PromptJob.__table__.insert().values(**_job_row(prompt_id, model_id, **{column: None}))
        )
    queue.enqueue_batch(engine, BATCH, max_attempts=3)
    queue.enqueue_batch(engine, BATCH, max_attempts=3)
    assert f.count(engine, PromptJob) == 1


def test_duplicate_key_rejected_by_unique_constraint(engine: Engine) -> None:
    """Case C9: the unique key holds for direct inserts too (NULLs can't slip past it)."""
    [prompt_id] = f.make_prompts(engine, 1)
    [model_id] = f.make_models(engine, 1)
    queue.enqueue_batch(engine, BATCH, max_attempts=3)
    with pytest.raises(IntegrityError), write_tx(engine) as conn:
        conn.execute(PromptJob.__table__.insert().values(**_job_row(prompt_id, model_id)))
    assert f.count(engine, PromptJob) == 1


def test_enqueue_after_partial_run_creates_the_missing_half(engine: Engine) -> None:
    """Case C10: an earlier enqueue that left half the rows -> created = N/2, existing = N/2."""
    f.make_batch(engine, prompts=5, models=2, runs=2)  # N = 20
    ids = f.job_ids(engine)
    f.delete_jobs(engine, ids[::2])
    again = queue.enqueue_batch(engine, BATCH, max_attempts=3)
    assert (again.created, again.existing) == (10, 10)
    assert f.count(engine, PromptJob) == 20
    assert set(ids[1::2]) <= set(f.job_ids(engine))  # the surviving rows were left alone


def test_rerun_of_a_complete_batch_writes_nothing(engine: Engine) -> None:
    """A complete batch is recognised by count and left alone: created 0, last_run_at kept."""
    f.make_batch(engine, prompts=3, models=2, runs=2)
    stamped = {p.id: p.last_run_at for p in catalog.list_prompts(engine)}
    again = queue.enqueue_batch(engine, BATCH, max_attempts=3)
    assert (again.created, again.existing) == (0, 12)
    assert {p.id: p.last_run_at for p in catalog.list_prompts(engine)} == stamped


def test_rerun_is_not_fooled_by_jobs_of_a_deactivated_prompt(engine: Engine) -> None:
    """As many jobs in the batch as expected, but one prompt was swapped for another: the count
    covers active prompts only, so the new prompt still gets its jobs."""
    old, _ = f.make_prompts(engine, 2)
    f.make_models(engine, 2)
    queue.enqueue_batch(engine, BATCH, max_attempts=3)
    catalog.update_prompt(engine, old, is_active=False)
    [new] = f.make_prompts(engine, 1, prefix="new")
    again = queue.enqueue_batch(engine, BATCH, max_attempts=3)
    assert (again.created, again.existing) == (2, 2)
    assert f.count(engine, PromptJob, prompt_id=new) == 2


def test_enqueue_leaves_existing_jobs_untouched(engine: Engine) -> None:
    """Case C10: re-enqueueing never resets a job that already ran or failed."""
    f.make_batch(engine, prompts=1, models=2)
    done, failed = f.job_ids(engine)
    f.set_jobs(engine, [done], status="succeeded", attempt_count=1)
    f.set_jobs(engine, [failed], status="failed", attempt_count=3, error_kind="auth")
    queue.enqueue_batch(engine, BATCH, max_attempts=3)
    assert (f.job(engine, done).status, f.job(engine, done).attempt_count) == ("succeeded", 1)
    assert (f.job(engine, failed).status, f.job(engine, failed).error_kind) == ("failed", "auth")


def test_enqueue_excludes_inactive_prompts_and_models(engine: Engine) -> None:
    """Only active prompts x active models get jobs."""
    p_on, p_off = f.make_prompts(engine, 2)
    m_on, m_off = f.make_models(engine, 2)
    catalog.update_prompt(engine, p_off, is_active=False)
    catalog.update_model(engine, m_off, is_active=False)
    result = queue.enqueue_batch(engine, BATCH, max_attempts=3)
    assert (result.created, result.existing) == (1, 0)
    assert f.count(engine, PromptJob, prompt_id=p_on, model_id=m_on) == 1


def test_enqueue_respects_runs_per_prompt(engine: Engine) -> None:
    """Each prompt gets exactly `runs` jobs per model, run_index 0..runs-1."""
    [one] = f.make_prompts(engine, 1, runs=1, prefix="one")
    [four] = f.make_prompts(engine, 1, runs=4, prefix="four")
    [model_id] = f.make_models(engine, 1)
    assert queue.enqueue_batch(engine, BATCH, max_attempts=3).created == 5
    assert f.count(engine, PromptJob, prompt_id=one, model_id=model_id, run_index=0) == 1
    assert f.count(engine, PromptJob, prompt_id=one) == 1
    assert [f.count(engine, PromptJob, prompt_id=four, run_index=i) for i in range(5)] == [
        1,
        1,
        1,
        1,
        0,
    ]


def test_enqueue_stamps_last_run_at_and_audits(engine: Engine) -> None:
    """last_run_at is set on active prompts in the same transaction; one audit row per enqueue."""
    before = utcnow() - timedelta(seconds=1)
    active, inactive = f.make_prompts(engine, 2)
    catalog.update_prompt(engine, inactive, is_active=False)
    f.make_models(engine, 1)
    queue.enqueue_batch(engine, BATCH, max_attempts=3, actor="scheduler")
    queue.enqueue_batch(engine, BATCH, max_attempts=3, actor="console")
    rows = {p.id: p.last_run_at for p in catalog.list_prompts(engine)}
    assert rows[active] is not None
    assert rows[active] >= before
    assert rows[inactive] is None
    with write_tx(engine) as conn:
        audits = conn.execute(
            select(AuditLog.actor, AuditLog.target, AuditLog.count)
            .where(AuditLog.action == "enqueue")
            .order_by(AuditLog.id)
        ).all()
    assert [(a.actor, json.loads(a.target), a.count) for a in audits] == [
        ("scheduler", {"batch_key": BATCH}, 1),
        ("console", {"batch_key": BATCH}, 0),
    ]


def test_enqueue_with_nothing_active_creates_nothing(engine: Engine) -> None:
    """No prompts or no models: created 0, existing 0, no error."""
    assert (queue.enqueue_batch(engine, BATCH, max_attempts=3).created) == 0
    f.make_prompts(engine, 2)
    result = queue.enqueue_batch(engine, BATCH, max_attempts=3)
    assert (result.created, result.existing) == (0, 0)


def test_concurrent_enqueue_threads(engine: Engine, db_url: str) -> None:
    """Case C11: 6 threads, each with its own engine, enqueue the same batch at once -> no error,
    exactly prompts x models x runs rows, and the created counts add up to that."""
    _shuffled_catalog(engine)
    barrier = threading.Barrier(6)
    created: list[int] = []
    errors: list[BaseException] = []

    def enqueue() -> None:
        own = make_engine(db_url)
        try:
            barrier.wait(timeout=30)
            created.append(queue.enqueue_batch(own, BATCH, max_attempts=3).created)
        except BaseException as exc:
            errors.append(exc)
        finally:
            own.dispose()

    threads = [threading.Thread(target=enqueue) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert sum(created) == 60
    assert f.count(engine, PromptJob) == 60


@pytest.mark.subprocess
def test_concurrent_enqueue_processes(engine: Engine, db_url: str) -> None:
    """Case C11: 3 spawn processes enqueue the same batch at once -> no deadlock error reaches
    anyone, exactly prompts x models x runs rows."""
    _shuffled_catalog(engine)
    outcomes = f.run_processes(f.enqueue_main, [(db_url, BATCH)] * 3)
    assert sum(created for created, _ in outcomes) == 60
    assert all(created + existing == 60 for created, existing in outcomes)
    assert f.count(engine, PromptJob) == 60
    assert f.count(engine, PromptJob, status=JobStatus.QUEUED.value) == 60


def _shuffled_catalog(engine: Engine) -> None:
    """10 prompts (runs 1-3) x 3 models = 60 jobs, with prompt ids out of text order and a
    deactivated-then-reactivated prompt, so id order, text order and insertion order differ."""
    ids = f.make_prompts(engine, 5, runs=2, prefix="b") + f.make_prompts(
        engine, 5, runs=2, prefix="a"
    )
    catalog.update_prompt(engine, ids[0], runs=3)
    catalog.update_prompt(engine, ids[1], runs=1)
    catalog.update_prompt(engine, ids[3], is_active=False)
    catalog.update_prompt(engine, ids[3], is_active=True)
    f.make_models(engine, 3)
    with write_tx(engine) as conn:
        assert conn.scalar(select(func.sum(Prompt.runs)).where(Prompt.is_active)) == 20
