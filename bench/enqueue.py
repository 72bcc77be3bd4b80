"""Item 1: enqueue 10,000 prompts x 5 models x 3 runs = 150,000 jobs through `promptbatch enqueue`,
cold and again (idempotent), against the same rows written by a bare INSERT ... SELECT ... ON
CONFLICT in the database's own client (psql, sqlite3) as the floor."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from bench.databases import Target, command_env, fresh_target, psql, seed_catalog, sql_scalar
from db import queue

PROMPTS, MODELS, RUNS = 10_000, 5, 3
JOBS = PROMPTS * MODELS * RUNS
BATCH_KEY = "2030-01-01"
ROUNDS = 2  # each side runs cold + re-run this often; the best round is reported

_FLOOR_PG = f"""
INSERT INTO prompt_jobs (prompt_id, model_id, run_index, batch_key, status, priority,
    attempt_count, max_attempts, scheduled_for, created_at, updated_at)
SELECT p.id, m.id, r.n, '{BATCH_KEY}', 'queued', 0, 0, 3, now(), now(), now()
FROM prompts p CROSS JOIN models m CROSS JOIN LATERAL generate_series(0, p.runs - 1) AS r(n)
WHERE p.is_active AND m.is_active
ON CONFLICT (prompt_id, model_id, run_index, batch_key) DO NOTHING"""

_FLOOR_SQLITE = f"""
WITH RECURSIVE r(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM r WHERE n + 1 < {RUNS})
INSERT INTO prompt_jobs (prompt_id, model_id, run_index, batch_key, status, priority,
    attempt_count, max_attempts, scheduled_for, created_at, updated_at)
SELECT p.id, m.id, r.n, '{BATCH_KEY}', 'queued', 0, 0, 3, datetime('now'), datetime('now'),
       datetime('now')
FROM prompts p CROSS JOIN models m JOIN r ON r.n < p.runs
WHERE p.is_active AND m.is_active
ON CONFLICT (prompt_id, model_id, run_index, batch_key) DO NOTHING;"""


def run(backend: str) -> dict[str, Any]:
    """Seconds for ours and the floor, cold and re-run, and our/floor ratios."""
    with fresh_target(backend, "enqueue") as target:
        seed_catalog(
            target, prompts=PROMPTS, runs=RUNS, models=[f"sim-model-{i}" for i in range(MODELS)]
        )
        ours = _best(target, _cli_enqueue)
        in_process = _best(target, _call_enqueue)
        floor = _best(target, _floor_enqueue)
    return {
        "jobs": JOBS,
        "ours_cli_s": ours,
        "ours_in_process_s": in_process,
        "floor_s": floor,
        "ratio_cold": ours["cold"] / floor["cold"],
        "ratio_rerun": ours["rerun"] / floor["rerun"],
        "ratio_in_process_cold": in_process["cold"] / floor["cold"],
        "ratio_in_process_rerun": in_process["rerun"] / floor["rerun"],
    }


def _best(target: Target, enqueue: Callable[[Target], None]) -> dict[str, float]:
    rounds = [_cold_and_rerun(target, enqueue) for _ in range(ROUNDS)]
    return {k: min(r[k] for r in rounds) for k in ("cold", "rerun")}


def _cold_and_rerun(target: Target, enqueue: Callable[[Target], None]) -> dict[str, float]:
    _reset(target)
    cold = _timed(enqueue, target)
    assert sql_scalar(target, "SELECT count(*) FROM prompt_jobs") == JOBS
    rerun = _timed(enqueue, target)
    assert sql_scalar(target, "SELECT count(*) FROM prompt_jobs") == JOBS
    return {"cold": cold, "rerun": rerun}


def _timed(enqueue: Callable[[Target], None], target: Target) -> float:
    started = time.perf_counter()
    enqueue(target)
    return time.perf_counter() - started


def _cli_enqueue(target: Target) -> None:
    env = command_env(DATABASE_URL=target.url, PROMPTBATCH_LOG_LEVEL="WARNING")
    subprocess.run(
        [sys.executable, "-m", "runner", "enqueue", "--batch-key", BATCH_KEY],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )


def _call_enqueue(target: Target) -> None:
    """queue.enqueue_batch in this process: the CLI's work without interpreter start-up."""
    engine = target.engine()
    queue.enqueue_batch(engine, BATCH_KEY, max_attempts=3, actor="bench")
    engine.dispose()


def _floor_enqueue(target: Target) -> None:
    if target.backend == "sqlite":
        subprocess.run(
            ["sqlite3", target.sqlite_path],
            input=_FLOOR_SQLITE,
            check=True,
            capture_output=True,
            text=True,
        )
    else:
        psql(target, _FLOOR_PG)


def _reset(target: Target) -> None:
    """Empty the jobs table and settle the database so every cold run starts alike."""
    if target.backend == "sqlite":
        subprocess.run(
            ["sqlite3", target.sqlite_path],
            input="DELETE FROM prompt_jobs; VACUUM; PRAGMA wal_checkpoint(TRUNCATE);",
            check=True,
            capture_output=True,
            text=True,
        )
    else:
        psql(target, "TRUNCATE prompt_jobs CASCADE")
        psql(target, "VACUUM ANALYZE")
        psql(target, "CHECKPOINT")
