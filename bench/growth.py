"""Item 4: claim latency (median, p99) and the console's Overview and Jobs query times with 10k,
100k and 1M jobs already in prompt_jobs, most of them finished; and the claim's query plan
(EXPLAIN ANALYZE), which must walk the partial index ix_prompt_jobs_claim.

The history is bench/seed_console.py's (40 daily batches, 97% succeeded, today's mid-run); on top
of it every size gets the same backlog of BACKLOG queued jobs, so only the table's size changes.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from sqlalchemy import text

from bench import seed_console
from bench.databases import Target, fresh_target
from db import queue
from db.engine import make_engine

SIZES = (10_000, 100_000, 1_000_000)
DAYS = 40
BACKLOG = 5_000
CLAIMS, CLAIM_LIMIT = 400, 8  # claims timed per size, jobs per claim (a worker's free slots)
CONSOLE_PAGES = ("Overview", "Jobs")


def run() -> dict[str, Any]:
    """Per size: claim median/p99 in ms and each console page's query time in ms."""
    with fresh_target("postgresql", "growth") as target:
        sizes = {str(size): _measure_size(target, size) for size in SIZES}
    first, last = sizes[str(SIZES[0])], sizes[str(SIZES[-1])]
    return {
        "sizes": sizes,
        "claim_median_growth": last["claim_median_ms"] / first["claim_median_ms"],
        "claim_p99_growth": last["claim_p99_ms"] / first["claim_p99_ms"],
    }


def _measure_size(target: Target, size: int) -> dict[str, float]:
    url = seed_console.schema_url(target.url)
    today = seed_console.seed(target.url, url, size, DAYS)
    pages = seed_console.measure(url, today)
    engine = make_engine(url)
    _add_backlog(engine)
    latencies = _claim_latencies(engine)
    plan = queue.claim_plan(engine, CLAIM_LIMIT)
    engine.dispose()
    assert any("ix_prompt_jobs_claim" in line for line in plan), plan
    return {
        "jobs": size + BACKLOG,
        "claim_median_ms": statistics.median(latencies),
        "claim_p99_ms": statistics.quantiles(latencies, n=100)[98],
        "claim_plan": plan,
        **{f"{page.lower()}_ms": pages[page] * 1000 for page in CONSOLE_PAGES},
    }


def _add_backlog(engine: Any) -> None:
    """BACKLOG queued jobs due now in a batch of their own, then ANALYZE as enqueue_batch does."""
    with engine.begin() as conn:
        conn.execute(
            text("""
            INSERT INTO prompt_jobs (prompt_id, model_id, run_index, batch_key, status, priority,
                attempt_count, max_attempts, scheduled_for, created_at, updated_at)
            SELECT p.id, m.id, r, '2099-01-01', 'queued', 0, 0, 3, now(), now(), now()
            FROM prompts p CROSS JOIN models m CROSS JOIN generate_series(0, 99) r
            ORDER BY r, p.id, m.id LIMIT :n"""),
            {"n": BACKLOG},
        )
        conn.execute(text("ANALYZE prompt_jobs"))


def _claim_latencies(engine: Any) -> list[float]:
    """Milliseconds per claim_jobs call of CLAIM_LIMIT jobs, CLAIMS times in a row."""
    latencies = []
    for _ in range(CLAIMS):
        started = time.perf_counter()
        claimed = queue.claim_jobs(engine, "bench:growth", CLAIM_LIMIT, lease_seconds=600)
        latencies.append((time.perf_counter() - started) * 1000)
        assert len(claimed) == CLAIM_LIMIT
    return latencies
