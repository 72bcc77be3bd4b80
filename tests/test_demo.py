"""`promptbatch demo` end to end, as `make demo` runs it (without the console), on both backends."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from db.engine import make_engine
from db.insights import batch_overview, brand_visibility
from db.types import JobStatus
from runner.worker.scheduler import utc_batch_key

pytestmark = pytest.mark.subprocess

ROOT = Path(__file__).resolve().parents[1]


def run_demo(db_url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTBATCH_")}
    env["DATABASE_URL"] = db_url
    return subprocess.run(
        [sys.executable, "-m", "runner", "demo", "--no-console"],
        env=env,
        cwd=ROOT,
        text=True,
        capture_output=True,
        timeout=600,
        check=False,
    )


def test_demo_runs_the_whole_batch_and_is_idempotent(db_url):
    first = run_demo(db_url)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "142 jobs created, 0 existing" in first.stdout
    assert "simulated" in first.stdout  # the simulator is labelled as such
    assert first.stdout.count(": ok: structured answers") == 2  # models check, one per model
    engine = make_engine(db_url)
    counts = batch_overview(engine, utc_batch_key())
    assert (counts.get(JobStatus.SUCCEEDED), counts.total) == (142, 142)
    key = utc_batch_key()
    brands = [b for b in brand_visibility(engine, key, key, limit=5) if b.model_id is None]
    assert len(brands) == 5 and all(b.answers_mentioning > 0 for b in brands)
    again = run_demo(db_url)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 jobs created, 142 existing" in again.stdout
    assert batch_overview(engine, utc_batch_key()).total == 142
    engine.dispose()
