"""The read model's runner and CLI reads: counts per status, pending work for --drain, listings,
the newest batch, and a batch's brands (db.insights, shared with the console)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from sqlalchemy import Engine

from db import insights, queue
from db.filters import JobQuery
from db.models import utcnow
from db.types import ErrorKind, FailureRecord, JobStatus, OutputMode
from tests import factories as f
from tests.factories import BATCH


def test_batch_counts_has_every_status(engine: Engine) -> None:
    """Counts per status for one batch; statuses with no jobs show 0; other batches excluded."""
    f.make_batch(engine, prompts=4, models=1)
    queue.enqueue_batch(engine, "2026-12-01", max_attempts=3)
    first, second = queue.claim_jobs(engine, "w", 2, lease_seconds=60)
    f.complete(engine, first, f.answer(), None)
    f.fail(engine, second, FailureRecord(ErrorKind.BAD_REQUEST, "400"), 0)
    counts = insights.batch_overview(engine, BATCH)
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
    assert insights.pending_jobs(engine, due_within_seconds=0) == 2
    assert insights.pending_jobs(engine, due_within_seconds=3600) == 3


def test_list_jobs_filters_newest_first(engine: Engine) -> None:
    """Listings follow the filter, newest first, with paging."""
    f.make_batch(engine, prompts=3, models=2)
    [job] = queue.claim_jobs(engine, "w", 1, lease_seconds=60)
    queued = JobQuery(statuses=(JobStatus.QUEUED.value,))
    rows = insights.list_jobs_page(engine, queued, limit=3).rows
    assert [r.id for r in rows] == sorted(set(f.job_ids(engine)) - {job.id}, reverse=True)[:3]
    processing = JobQuery(statuses=("processing",))
    assert [r.id for r in insights.list_jobs_page(engine, processing).rows] == [job.id]
    assert insights.latest_batch_key(engine) == BATCH


def test_list_jobs_by_error_kind_model_and_since(engine: Engine) -> None:
    """The CLI's `jobs` filters (the console's): error kind, model, changed since."""
    f.make_batch(engine, prompts=2, models=2)
    a, b, c, _ = queue.claim_jobs(engine, "w", 4, lease_seconds=60)
    f.fail(engine, a, FailureRecord(ErrorKind.BAD_REQUEST, "400"), 0)
    f.fail(engine, b, FailureRecord(ErrorKind.SERVER_ERROR, "500"), 30)
    f.set_jobs(engine, [c.id], updated_at=utcnow() - timedelta(hours=3))

    def ids(query: JobQuery) -> set[int]:
        return {r.id for r in insights.list_jobs_page(engine, query).rows}

    assert ids(JobQuery(error_kind="bad_request")) == {a.id}
    assert ids(JobQuery(model_ids=(a.model_id,))) == {
        j for j in f.job_ids(engine, model_id=a.model_id)
    }
    recent = ids(JobQuery(updated_since=utcnow() - timedelta(hours=1)))
    assert c.id not in recent and {a.id, b.id} <= recent


def test_top_brands_exclude_refusals_from_answers(engine: Engine) -> None:
    """Case C17: a refusal is not an answer with '0 brands'; rates are over real answers only."""
    f.make_batch(engine, prompts=3, models=1)
    a, b, c = queue.claim_jobs(engine, "w", 3, lease_seconds=60)
    f.complete(engine, a, f.answer(["HubSpot", "Pipedrive"]), None)
    f.complete(engine, b, f.answer(["Pipedrive"]), None)
    refusal = replace(f.answer(), output_mode=OutputMode.REFUSAL, answer=None)
    f.complete(engine, c, refusal, None)
    brands = insights.brand_visibility(engine, BATCH, BATCH)
    top = {t.brand: t for t in brands if t.model_id is None}
    assert (top["Pipedrive"].answers_mentioning, top["Pipedrive"].mention_rate) == (2, 1.0)
    assert (top["HubSpot"].answers_mentioning, top["HubSpot"].mention_rate) == (1, 0.5)
    assert abs(top["Pipedrive"].share_of_voice - 2 / 3) < 1e-9
    assert top["Pipedrive"].avg_position == 1.5
