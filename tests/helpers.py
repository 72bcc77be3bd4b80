"""Shared test helpers: a one-prompt batch on a model, claimed and run through the real stack."""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import Engine, select

from db import catalog, queue
from db.catalog import NewPrompt
from db.engine import read_tx
from db.models import JobAttempt, Mention, PromptJob, Response
from db.types import ClaimedJob
from runner.llm.client import ModelClient
from runner.settings import Settings
from runner.worker.catalog_cache import CatalogCache
from runner.worker.group_commit import GroupCommit
from runner.worker.jobs import JobContext, JobOutcome, run_job

CRM_PROMPT = "What is the best CRM for a 10-person B2B startup?"
BATCH = "2026-11-30"


def fast_settings(db_url: str, **overrides: object) -> Settings:
    """Settings for tests: fast backoff, short timeouts; `overrides` by field name."""
    values: dict[str, object] = {
        "database_url": db_url,
        "backoff_base": 0.01,
        "backoff_cap": 0.05,
        "request_timeout": 5.0,
        "poll_interval": 0.05,
        "lease_seconds": 30.0,
    }
    values.update(overrides)
    return Settings.model_validate(values)


def one_job(
    engine: Engine,
    model_name: str,
    base_url: str,
    *,
    prompt: str = CRM_PROMPT,
    max_attempts: int = 3,
    runs: int = 1,
) -> None:
    """One active prompt on one compatible model, enqueued for BATCH."""
    catalog.import_prompts(engine, [NewPrompt(prompt, "crm", runs)])
    catalog.add_model(engine, provider="compatible", name=model_name, base_url=base_url)
    queue.enqueue_batch(engine, BATCH, max_attempts=max_attempts)


def claim_one(engine: Engine, worker: str = "w1", lease: float = 30.0) -> ClaimedJob:
    jobs = queue.claim_jobs(engine, worker, 1, lease_seconds=lease)
    assert len(jobs) == 1, "expected a claimable job"
    return jobs[0]


def run_once(engine: Engine, settings: Settings, worker: str = "w1") -> JobOutcome:
    """Claim one due job and run it in this thread with a fresh client."""
    client = ModelClient(settings)
    try:
        ctx = JobContext(settings, engine, client, CatalogCache(engine), GroupCommit(engine))
        return client.run(run_job(ctx, claim_one(engine, worker)))
    finally:
        client.close()


def only_job(engine: Engine) -> dict[str, object]:
    """The single job's row as a dict."""
    with read_tx(engine) as conn:
        return dict(conn.execute(select(PromptJob.__table__)).mappings().one())


def responses(engine: Engine) -> list[dict[str, object]]:
    with read_tx(engine) as conn:
        return [dict(r) for r in conn.execute(select(Response.__table__)).mappings()]


def mentions(engine: Engine) -> list[dict[str, object]]:
    with read_tx(engine) as conn:
        return [
            dict(r)
            for r in conn.execute(select(Mention.__table__).order_by(Mention.position)).mappings()
        ]


def attempts(engine: Engine) -> list[dict[str, object]]:
    with read_tx(engine) as conn:
        return [
            dict(r)
            for r in conn.execute(
                select(JobAttempt.__table__).order_by(JobAttempt.attempt)
            ).mappings()
        ]


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` every 0.1 s; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
