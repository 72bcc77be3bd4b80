"""Item 6: start-up costs a runner pays (issue 8): CPU of the supervisor's and a worker process's
imports, each in a fresh interpreter, and the wall time of `promptbatch run --drain` on an empty
SQLite database (supervisor, P=2 spawned workers, stop). Medians of REPEATS runs."""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPEATS = 5
ROOT = Path(__file__).resolve().parents[1]


def _import_cpu_s(module: str) -> float:
    """CPU seconds (user + sys) of a fresh interpreter that imports `module` and exits."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _empty_drain_s(url: str) -> float:
    env = {**os.environ, "DATABASE_URL": url, "PROMPTBATCH_LOG_LEVEL": "WARNING"}
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "runner", "run", "--drain"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/startup.db"
        env = {**os.environ, "DATABASE_URL": url}
        subprocess.run(
            [sys.executable, "-m", "runner", "db", "upgrade"],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
        )
        return {
            "supervisor_import_cpu_s": statistics.median(
                _import_cpu_s("runner.worker.supervisor") for _ in range(REPEATS)
            ),
            "worker_import_cpu_s": statistics.median(
                _import_cpu_s("runner.worker.process") for _ in range(REPEATS)
            ),
            "empty_drain_wall_s": statistics.median(_empty_drain_s(url) for _ in range(REPEATS)),
        }


if __name__ == "__main__":
    print(run())
