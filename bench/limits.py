"""Item 8 (issue 10): a provider's limits, measured where the requests arrive.

- paced / learned: BENCH_LIMIT_JOBS (10,000) jobs against a simulated 600 RPM and 1,000,000
  TPM (OpenAI's buckets, tokens counted at admission), lognormal latency around 2 s, three
  `run --drain` runners of 2 processes x 16 threads on one PostgreSQL. "paced" sets --rpm 600
  --tpm 1000000 on the model; "learned" sets nothing (the pace comes from x-ratelimit-*
  headers). Figures: elapsed vs the limit-bound time (jobs / rpm minutes), failed jobs, 429s per
  job, the most requests the simulator admitted in any 60 s window.
- revoked: the key is rejected after 100 calls of a 400-job batch (one runner): the calls that
  reached the simulator after the first rejection, jobs failed, the model paused.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.databases import Target, fresh_target, sql_scalar
from db import catalog, queue
from db.catalog import NewPrompt
from db.engine import Engine
from runner.simulator.server import SimulatorServer, running_simulator
from runner.worker.scheduler import utc_batch_key

ROOT = Path(__file__).resolve().parents[1]
JOBS = int(os.environ.get("BENCH_LIMIT_JOBS", "10000"))
RPM, TPM = 600, 1_000_000
RUNNERS, PROCESSES, CONCURRENCY = 3, 2, 16
MAX_TOKENS = 1000  # the model's output cap: 600 x (prompt + 1000) stays under the TPM
LATENCY = "latency=2000,jitter=0.35,style=openai"
TIMEOUT_S = 3 * 3600


def run() -> dict[str, Any]:
    with running_simulator() as sim:
        return {
            "paced": _limited(sim, configured=True),
            "learned": _limited(sim, configured=False),
            "revoked": revoked(sim),
        }


def _limited(sim: SimulatorServer, *, configured: bool) -> dict[str, Any]:
    sim.reset_counters()  # fresh buckets: each run meets a full, untouched limit
    model = f"sim-gpt-4o-mini@{LATENCY},rpm={RPM},tpm={TPM}"
    limits = {"rpm": RPM, "tpm": TPM} if configured else {}
    with fresh_target("postgresql", "limits") as target:
        engine = target.engine()
        try:
            _seed(engine, model, sim.base_url, JOBS, **limits)
        finally:
            engine.dispose()
        elapsed = _drain(target, RUNNERS)
        admitted, limited, _ = sim.limits.stats(model)
        bound = JOBS / RPM * 60
        return {
            "jobs": JOBS,
            "elapsed_s": round(elapsed, 1),
            "limit_bound_s": round(bound, 1),
            "ratio": round(elapsed / bound, 3),
            "failed": _count(target, "status = 'failed'"),
            "succeeded": _count(target, "status = 'succeeded'"),
            "rate_limited_per_job": round(limited / JOBS, 4),
            "requests_admitted": admitted,
            "max_admitted_in_60s": sim.limits.max_in_window(model),
        }


def revoked(sim: SimulatorServer) -> dict[str, Any]:
    jobs, revoke_after = 400, 100
    model = f"sim-gpt-4o-mini@latency=500,jitter=0.3,revoke_after={revoke_after},rpm=100000"
    with fresh_target("postgresql", "revoked") as target:
        engine = target.engine()
        try:
            _seed(engine, model, sim.base_url, jobs)
        finally:
            engine.dispose()
        _drain(target, 1)
        _, _, refused = sim.limits.stats(model)
        paused = sql_scalar(target, "SELECT count(*) FROM models WHERE paused_at IS NOT NULL")
        return {
            "jobs": jobs,
            "calls_after_first_rejection": refused - 1,
            "failed": _count(target, "status = 'failed'"),
            "queued": _count(target, "status = 'queued'"),
            "models_paused": int(paused),
        }


def _seed(engine: Engine, model: str, base_url: str, jobs: int, **limits: int) -> None:
    catalog.import_prompts(
        engine,
        [
            NewPrompt(f"Which CRM should team {i} pick for a 10-person startup?", "crm", 1)
            for i in range(jobs)
        ],
    )
    catalog.add_model(
        engine,
        provider="compatible",
        name=model,
        base_url=base_url,
        max_tokens=MAX_TOKENS,
        **limits,
    )
    queue.enqueue_batch(engine, utc_batch_key(), max_attempts=3)


def _drain(target: Target, runners: int) -> float:
    """Seconds for `runners` `run --drain` processes to finish the batch together."""
    env = {
        **os.environ,
        "DATABASE_URL": target.url,
        "PROMPTBATCH_PROCESSES": str(PROCESSES),
        "PROMPTBATCH_CONCURRENCY": str(CONCURRENCY),
        "PROMPTBATCH_LOG_LEVEL": "WARNING",
        "PROMPTBATCH_BACKOFF_CAP": "30",
    }
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "runner", "run", "--drain"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(runners)
    ]
    for proc in procs:
        proc.wait(TIMEOUT_S)
    return time.perf_counter() - started


def _count(target: Target, where: str) -> int:
    return int(sql_scalar(target, f"SELECT count(*) FROM prompt_jobs WHERE {where}"))
