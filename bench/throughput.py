"""Item 2: claim-and-complete throughput of no-op jobs through the real worker processes.

Each worker process is runner.worker.process's own `worker_main` with one change: `run_job` is
replaced by a no-op that makes no model call but records the success through
the worker's group commit, so a job costs every production queue write: the claim, the fenced
completion, the response row and the attempt row. The floor is pgbench running that SQL alone at
the same concurrency.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import re
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.databases import OUT, Target, fresh_target, psql, seed_catalog, sql_scalar
from bench.drain_clock import time_drain
from db import queue, results
from db.types import AnswerRecord, ClaimedJob, Completion, OutputMode
from runner.settings import Settings
from runner.worker import process as worker
from runner.worker import spawn
from runner.worker.jobs import JobContext, JobOutcome

JOBS = 20_000
PROMPTS, MODELS = 4_000, 5
PROCESSES, CONCURRENCY = 2, 8  # 16 jobs in flight; the peers get the same
TIMEOUT_S = 240.0
NOOP_ANSWER = AnswerRecord(
    answer="ok",
    raw_body="{}",
    output_mode=OutputMode.STRUCTURED,
    finish_reason="stop",
    prompt_tokens=1,
    completion_tokens=1,
    latency_ms=0,
    request_id=None,
)

_PGBENCH_SCRIPT = """
BEGIN;
UPDATE prompt_jobs SET status = 'processing', locked_by = 'pgbench', started_at = now(),
    lease_expires_at = now() + interval '60 seconds', updated_at = now(),
    attempt_count = attempt_count + 1
WHERE id = (SELECT id FROM prompt_jobs WHERE status = 'queued' AND scheduled_for <= now()
            ORDER BY priority, scheduled_for, id LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING id AS job_id, attempt_count AS attempt \\gset
COMMIT;
BEGIN;
UPDATE prompt_jobs SET status = 'succeeded', finished_at = now(), updated_at = now(),
    locked_by = NULL, lease_expires_at = NULL
WHERE id = :job_id AND status = 'processing' AND locked_by = 'pgbench' AND attempt_count = :attempt;
INSERT INTO responses (job_id, prompt_id, model_id, batch_key, run_index, answer, raw_body,
    output_mode, latency_ms, created_at)
SELECT id, prompt_id, model_id, batch_key, run_index, 'ok', '{}', 'structured', 0, now()
FROM prompt_jobs WHERE id = :job_id;
INSERT INTO job_attempts (job_id, attempt, worker_id, started_at, finished_at, outcome)
VALUES (:job_id, :attempt, 'pgbench', now(), now(), 'succeeded');
COMMIT;
"""


async def complete_noop(ctx: JobContext, job: ClaimedJob) -> JobOutcome:
    """run_job without the model call: the same fenced completion (through the worker's group
    commit) that a real answer gets."""
    return JobOutcome((await ctx.outcomes.submit(Completion(job, NOOP_ANSWER))).value)


def noop_worker_main(spec: spawn.WorkerSpec, stop: spawn.StopFlag) -> None:
    """runner.worker.process.worker_main with run_job swapped for complete_noop (spawned)."""
    worker.run_job = complete_noop
    worker.worker_main(spec, stop)


def run(backend: str) -> dict[str, Any]:
    """Jobs/s of our workers and, on PostgreSQL, of pgbench running the same SQL alone."""
    with fresh_target(backend, "throughput") as target:
        ours = run_workers(target)
        if backend == "sqlite":
            return {"jobs": JOBS, "in_flight": PROCESSES * CONCURRENCY, "ours_jobs_per_s": ours}
        floor = run_pgbench(target)
    return {
        "jobs": JOBS,
        "in_flight": PROCESSES * CONCURRENCY,
        "ours_jobs_per_s": ours,
        "pgbench_floor_jobs_per_s": floor,
        "ours_over_floor": ours / floor,
        "commit_cpu_ms_per_job": commit_cpu_ms_per_job(),
    }


COMMIT_ROUNDS, COMMIT_BATCH = 300, 32
# An answer of a real answer's size: ~1.5 KB of text in a ~2.5 KB body, with quotes and a
# backslash (what psycopg's text arrays must escape)
REAL_SIZE_ANSWER = replace(
    NOOP_ANSWER,
    answer="HubSpot, Pipedrive and Zoho are good picks. " * 34 + '"quoted" \\ back',
    raw_body=json.dumps({"choices": [{"message": {"content": 'a "CRM" answer ' * 160}}]}),
)


def commit_cpu_ms_per_job() -> float:
    """CPU ms per job of the group commit's transaction alone (write COMMIT_BATCH real-size
    answers and claim as many, in this process, after a warm-up): the database path of a job
    without the model call (issue 11)."""
    with fresh_target("postgresql", "commit") as target:
        enqueue_jobs(target)
        engine = target.engine()
        jobs: list[ClaimedJob] = []

        def turn() -> None:
            nonlocal jobs
            done = [Completion(job, REAL_SIZE_ANSWER) for job in jobs]
            _, jobs = results.write_outcomes_and_claim(
                engine, done, "bench:commit", COMMIT_BATCH, lease_seconds=60
            )

        for _ in range(20):
            turn()
        started = time.process_time()
        for _ in range(COMMIT_ROUNDS):
            turn()
        cpu = time.process_time() - started
        engine.dispose()
    return cpu * 1000 / (COMMIT_ROUNDS * COMMIT_BATCH)


def enqueue_jobs(target: Target) -> None:
    """A fresh batch of JOBS queued jobs (the catalog is seeded on the first call)."""
    if sql_scalar(target, "SELECT count(*) FROM prompts") == 0:
        seed_catalog(
            target, prompts=PROMPTS, runs=1, models=[f"sim-model-{i}" for i in range(MODELS)]
        )
    engine = target.engine()
    created = queue.enqueue_batch(engine, "2030-01-01", max_attempts=3).created
    engine.dispose()
    assert created == JOBS, created


def run_workers(
    target: Target, processes: int = PROCESSES, concurrency: int = CONCURRENCY
) -> float:
    """Drain a fresh batch with `processes` x `concurrency` no-op workers; returns jobs/s."""
    enqueue_jobs(target)
    settings = Settings(
        database_url=target.url,
        processes=processes,
        concurrency=concurrency,
        poll_interval=0.05,
        log_level="WARNING",
    )
    ctx = mp.get_context("spawn")
    stop = spawn.StopFlag(ctx)
    children = [
        ctx.Process(
            target=noop_worker_main,
            args=(spawn.WorkerSpec(settings.model_dump(), "bench", i), stop),
        )
        for i in range(processes)
    ]
    for child in children:
        child.start()
    try:
        return time_drain(
            lambda: _left(target),
            JOBS,
            timeout=TIMEOUT_S,
            alive=lambda: any(c.is_alive() for c in children),
        )
    finally:
        stop.set()
        for child in children:
            child.join(30)


def _left(target: Target) -> int:
    return sql_scalar(
        target, "SELECT count(*) FROM prompt_jobs WHERE status IN ('queued', 'processing')"
    )


def run_pgbench(target: Target) -> float:
    """pgbench: one claim transaction + one completion transaction per job, same concurrency."""
    psql(target, "TRUNCATE prompt_jobs CASCADE")
    enqueue_jobs(target)
    psql(target, "VACUUM ANALYZE")
    OUT.mkdir(exist_ok=True)
    script = Path(OUT / "claim_complete.sql")
    script.write_text(_PGBENCH_SCRIPT)
    clients = PROCESSES * CONCURRENCY
    out = subprocess.run(
        [
            "pgbench",
            "-n",
            "-M",
            "prepared",
            "-c",
            str(clients),
            "-j",
            str(PROCESSES),
            "-t",
            str(JOBS // clients),
            "-f",
            str(script),
            target.libpq_url,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert sql_scalar(target, "SELECT count(*) FROM job_attempts") == JOBS
    match = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
    assert match, out
    return float(match.group(1))
