"""Read-only queue views: counts per status, pending work for --drain, listings, top brands."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from sqlalchemy import Engine

from db import queue, results, stats
from db.models import utcnow
from db.operations import JobFilter
from db.types import ErrorKind, FailureRecord, JobStatus, OutputMode
from tests import factories as f
from tests.factories import BATCH


def test_batch_counts_has_every_status(engine: Engine) -> None:
    """Counts per status for one batch; statuses with no jobs show 0; other batches excluded."""
    f.make_batch(engine, prompts=4, models=1)
    queue.enqueue_batch(engine, "2026-12-01", max_attempts=3)
    first, second = queue.claim_jobs(engine, "w", 2, lease_seconds=60)
    results.complete_job(engine, first, f.answer(), None)
    results.record_failure(engine, second, FailureRecord(ErrorKind.AUTH, "401"), 0)
    counts = stats.batch_counts(engine, BATCH)
    assert counts.counts == {
        "queued": 2,
        "processing": 0,
        "succeeded": 1,
        "failed": 1,
        "skipped": 0,
        "cancelled": 0,
    }
    assert counts.total == 4


def test_pending_count_sees_processing_and_due_queued(engine: Engine) -> None:
    """--drain waits for processing jobs and queued jobs due within the horizon only."""
    f.make_batch(engine, prompts=3, models=1)
    _, _, later = f.job_ids(engine)
    f.set_jobs(engine, [later], scheduled_for=utcnow() + timedelta(minutes=10))
    queue.claim_jobs(engine, "w", 1, lease_seconds=60)
    assert stats.pending_count(engine, due_within_seconds=0) == 2
    assert stats.pending_count(engine, due_within_seconds=3600) == 3


def test_list_jobs_filters_newest_first(engine: Engine) -> None:
    """Listings follow the filter, newest first, with paging."""
    f.make_batch(engine, prompts=3, models=2)
    [job] = queue.claim_jobs(engine, "w", 1, lease_seconds=60)
    rows = stats.list_jobs(engine, JobFilter(status=JobStatus.QUEUED.value), limit=3)
    assert [r.id for r in rows] == sorted(set(f.job_ids(engine)) - {job.id}, reverse=True)[:3]
    assert [r.id for r in stats.list_jobs(engine, JobFilter(status="processing"))] == [job.id]
    assert stats.latest_batch_key(engine) == BATCH


def test_top_brands_exclude_refusals_from_answers(engine: Engine) -> None:
    """Case C17: a refusal is not an answer with '0 brands'; rates are over real answers only."""
    f.make_batch(engine, prompts=3, models=1)
    a, b, c = queue.claim_jobs(engine, "w", 3, lease_seconds=60)
    results.complete_job(engine, a, f.answer(["HubSpot", "Pipedrive"]), None)
    results.complete_job(engine, b, f.answer(["Pipedrive"]), None)
    refusal = replace(f.answer(), output_mode=OutputMode.REFUSAL, answer=None)
    results.complete_job(engine, c, refusal, None)
    top = {t.name: t for t in stats.top_brands(engine, BATCH)}
    assert (top["Pipedrive"].answers, top["Pipedrive"].mention_rate) == (2, 1.0)
    assert (top["HubSpot"].answers, top["HubSpot"].mention_rate) == (1, 0.5)
    assert abs(top["Pipedrive"].share_of_voice - 2 / 3) < 1e-9
    assert top["Pipedrive"].avg_position == 1.5
