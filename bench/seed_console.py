"""Seed 1,000,000 jobs into PostgreSQL and time the console's Overview and Jobs queries.

    .venv/bin/python bench/seed_console.py [--url postgresql+psycopg://postgres@127.0.0.1/test]
        [--jobs 1000000] [--days 40] [--keep]

Works in its own schema (dropped afterwards unless --keep). 40 daily batches of 25,000 jobs
(5,000 prompts x 5 models): older batches 97% succeeded with a response each, 3% failed; today's
batch mid-run. Each query of db/insights is timed warm, median of 5 runs (issue 3: each page's
queries must stay under 1 s). Not a test: run it by hand and report the figures.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import create_engine, text

from db import catalog, insights
from db.engine import make_engine
from db.filters import JobQuery
from db.migrate import upgrade

SCHEMA = "bench_console"
MODELS = 5


def seed(admin_url: str, url: str, jobs: int, days: int) -> str:
    """Create the schema and fill it; returns today's batch key."""
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE'))
        conn.execute(text(f'CREATE SCHEMA "{SCHEMA}"'))
    admin.dispose()
    engine = make_engine(url)
    upgrade(engine)
    per_day = jobs // days
    prompts = per_day // MODELS
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    started = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(
            text("""
            INSERT INTO prompts (text, category, runs, is_active, created_at, updated_at)
            SELECT 'Which CRM would you recommend for a team of ' || g || ' people?',
                   'crm', 1, true, now(), now()
            FROM generate_series(1, :n) g"""),
            {"n": prompts},
        )
        conn.execute(
            text("""
            INSERT INTO models (provider, name, label, base_url, is_active, input_usd_per_mtok,
                                output_usd_per_mtok, created_at, updated_at)
            SELECT 'compatible', 'sim-' || g, 'Sim model ' || g, 'http://127.0.0.1:9/v1', true,
                   0.15, 0.6, now(), now()
            FROM generate_series(1, :n) g"""),
            {"n": MODELS},
        )
        # Day d (0 = today) has every prompt x model; job n of a day finishes n/per_day of the
        # way through its first 3 hours. Today: the first 60% ended, the rest queued/processing.
        conn.execute(
            text("""
            INSERT INTO prompt_jobs (prompt_id, model_id, run_index, batch_key, status, priority,
                error_kind, error_message, attempt_count, max_attempts, scheduled_for,
                started_at, finished_at, created_at, updated_at)
            SELECT p.id, m.id, 0, to_char(:today - d * interval '1 day', 'YYYY-MM-DD'),
                   s.status, 0,
                   CASE WHEN s.status = 'failed' THEN 'rate_limited' END,
                   CASE WHEN s.status = 'failed'
                        THEN 'HTTP 429 from provider ' || (p.id % 7) END,
                   CASE WHEN s.status = 'queued' THEN 0 ELSE 1 END, 3,
                   :today - d * interval '1 day', s.done_at, s.done_at,
                   :today - d * interval '1 day', coalesce(s.done_at, :today)
            FROM generate_series(0, :days - 1) d
            CROSS JOIN prompts p CROSS JOIN models m
            CROSS JOIN LATERAL (SELECT ((p.id * :models + m.id) % 1000) AS r) k
            CROSS JOIN LATERAL (SELECT
                CASE WHEN d = 0 AND k.r >= 600 THEN (CASE WHEN k.r < 620 THEN 'processing'
                                                          ELSE 'queued' END)
                     WHEN k.r % 33 = 0 THEN 'failed' ELSE 'succeeded' END AS status,
                CASE WHEN d = 0 AND k.r >= 600 THEN NULL
                     ELSE :today - d * interval '1 day'
                          + (p.id * :models + m.id) * interval '3 hours' / :per_day END
                     AS done_at) s"""),
            {"today": today, "days": days, "models": MODELS, "per_day": per_day},
        )
        conn.execute(
            text("""
            INSERT INTO responses (job_id, prompt_id, model_id, batch_key, run_index, answer,
                raw_body, output_mode, finish_reason, prompt_tokens, completion_tokens, cost,
                latency_ms, created_at)
            SELECT id, prompt_id, model_id, batch_key, 0, 'HubSpot, then Pipedrive.', '{}',
                   'structured', 'stop', 120, 300, 0.0002, 900, finished_at
            FROM prompt_jobs WHERE status = 'succeeded'""")
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE"))
    total = catalog_count(engine)
    print(
        f"seeded {total:,} jobs ({days} batches, {prompts:,} prompts x {MODELS} models) "
        f"in {time.perf_counter() - started:.1f} s"
    )
    engine.dispose()
    return today.date().isoformat()


def catalog_count(engine: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM prompt_jobs")).scalar_one())


def timed(label: str, run: Callable[[], object]) -> float:
    run()  # warm: plans and pages cached, as on a console that is open
    times = []
    for _ in range(5):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    median = statistics.median(times)
    print(f"  {label:<52} {median * 1000:8.1f} ms")
    return median


def measure(url: str, today: str) -> dict[str, float]:
    """Each page's summed query time in seconds (warm, median of 5 per query)."""
    engine = make_engine(url)
    some_job = insights.list_jobs_page(engine, JobQuery(batch_key=today), limit=1).rows[0]
    q_today = JobQuery(batch_key=today)
    pages: dict[str, list[tuple[str, Callable[[], object]]]] = {
        "Overview": [
            ("batch_keys", lambda: insights.batch_keys(engine)),
            ("batch_overview (today)", lambda: insights.batch_overview(engine, today)),
            ("progress_by_model (today)", lambda: insights.progress_by_model(engine, today)),
            (
                "completions_per_minute (today)",
                lambda: insights.completions_per_minute(engine, today),
            ),
            ("batch_history (14 batches, tokens, cost)", lambda: insights.batch_history(engine)),
        ],
        "Jobs": [
            ("batch_keys", lambda: insights.batch_keys(engine)),
            ("list_models", lambda: catalog.list_models(engine)),
            ("error_kinds (today)", lambda: insights.error_kinds(engine, today)),
            ("list_jobs_page today, id desc, 50", lambda: insights.list_jobs_page(engine, q_today)),
            ("job_detail", lambda: insights.job_detail(engine, some_job.id)),
        ],
        "Jobs (other filters, one at a time)": [
            (
                "all batches, id desc, 50 (count capped at 100k)",
                lambda: insights.list_jobs_page(engine, JobQuery()),
            ),
            (
                "today, failed, finished desc",
                lambda: insights.list_jobs_page(
                    engine,
                    JobQuery(batch_key=today, statuses=("failed",)),
                    sort="finished_at",
                ),
            ),
            (
                "today, page 200 of 50",
                lambda: insights.list_jobs_page(engine, q_today, offset=199 * 50),
            ),
            (
                "today, prompt contains 'team of 42'",
                lambda: insights.list_jobs_page(
                    engine, JobQuery(batch_key=today, prompt_text="team of 42 ")
                ),
            ),
            (
                "today, error contains 'provider 3'",
                lambda: insights.list_jobs_page(
                    engine, JobQuery(batch_key=today, error_text="provider 3")
                ),
            ),
            (
                "all batches, status failed, sorted by attempts",
                lambda: insights.list_jobs_page(
                    engine, JobQuery(statuses=("failed",)), sort="attempt_count"
                ),
            ),
            ("failure_groups (today)", lambda: insights.failure_groups(engine, today)),
        ],
    }
    totals = {}
    for page, queries in pages.items():
        print(page)
        totals[page] = sum(timed(label, run) for label, run in queries)
        print(f"  {'= page total':<52} {totals[page] * 1000:8.1f} ms")
    engine.dispose()
    return totals


def schema_url(url: str) -> str:
    """`url` with the bench schema as search_path."""
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options={quote(f'-csearch_path={SCHEMA}')}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=40)
    parser.add_argument("--keep", action="store_true", help="keep the bench schema")
    args = parser.parse_args()
    url = schema_url(args.url)
    today = seed(args.url, url, args.jobs, args.days)
    try:
        ok = all(total < 1.0 for total in measure(url, today).values())
    finally:
        if not args.keep:
            admin = create_engine(args.url, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE'))
            admin.dispose()
    print("every page under 1 s" if ok else "SOME PAGE TOOK 1 s OR MORE")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
