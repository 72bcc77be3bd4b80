"""Item 3: 2,000 jobs against the simulator at 500 ms latency with 64 in flight (2 processes x 32
threads on this 2-core machine) through the real `promptbatch run --drain`: jobs/s against the
ideal 128/s, and the peak memory of the whole runner (RSS summed over the supervisor and its worker
processes). The simulator runs as its own `promptbatch simulator` process, as a remote API would:
not in this process, whose RSS sampling would hold its GIL."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psutil
from sqlalchemy import create_engine, text

from bench.databases import OUT, Target, command_env, fresh_target, seed_catalog, sql_scalar
from db import queue
from runner.worker.scheduler import utc_batch_key

PROMPTS, RUNS = 400, 5  # x 1 model = 2,000 jobs
MODEL = "sim-gpt-4o-mini@latency=500"
PROCESSES, THREADS = 2, 32
LATENCY_S = 0.5
IDEAL_JOBS_PER_S = PROCESSES * THREADS / LATENCY_S
TIMEOUT_S = 180.0
SAMPLE_S = 0.1


def run(backend: str) -> dict[str, Any]:
    """Jobs/s (wall clock of the drain, and first claim to last completion) and peak RSS."""
    with simulator_process() as base_url, fresh_target(backend, "concurrency") as target:
        seed_catalog(target, prompts=PROMPTS, runs=RUNS, models=[MODEL], base_url=base_url)
        engine = target.engine()
        jobs = queue.enqueue_batch(engine, utc_batch_key(), max_attempts=3).created
        engine.dispose()
        wall, peak_rss = _drain(target)
        span = _span_seconds(target)
        succeeded = sql_scalar(
            target, "SELECT count(*) FROM prompt_jobs WHERE status = 'succeeded'"
        )
    return {
        "jobs": jobs,
        "succeeded": succeeded,
        "in_flight": PROCESSES * THREADS,
        "ideal_jobs_per_s": IDEAL_JOBS_PER_S,
        "wall_s": wall,
        "jobs_per_s_wall": jobs / wall,
        "span_s": span,
        "jobs_per_s_span": jobs / span,
        "fraction_of_ideal_span": jobs / span / IDEAL_JOBS_PER_S,
        "fraction_of_ideal_wall": jobs / wall / IDEAL_JOBS_PER_S,
        "peak_rss_mib": peak_rss / 2**20,
    }


@contextmanager
def simulator_process() -> Iterator[str]:
    """`promptbatch simulator` on a free loopback port until the block ends; yields its base URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", "simulator", "--port", str(port)],
        env=command_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        _wait_until_serving(base_url, proc)
        yield base_url
    finally:
        proc.terminate()
        proc.wait(10)


def _wait_until_serving(base_url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{base_url}/models", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the simulator did not start at {base_url}")


def _drain(target: Target) -> tuple[float, int]:
    """Run `promptbatch run --drain`; returns (wall seconds, peak summed RSS in bytes)."""
    env = command_env(
        DATABASE_URL=target.url,
        PROMPTBATCH_PROCESSES=str(PROCESSES),
        PROMPTBATCH_THREADS=str(THREADS),
        PROMPTBATCH_POLL_INTERVAL="0.1",
    )
    OUT.mkdir(exist_ok=True)
    started = time.perf_counter()
    with open(OUT / f"concurrency-{target.backend}.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runner", "run", "--drain"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        peak = _watch_rss(proc)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"promptbatch run --drain exited {proc.returncode}; see {log.name}")
    return wall, peak


def _watch_rss(proc: subprocess.Popen[bytes]) -> int:
    """Poll the runner's process tree until it exits; the largest summed RSS seen (bytes)."""
    root = psutil.Process(proc.pid)
    deadline = time.monotonic() + TIMEOUT_S
    peak = 0
    while proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            raise TimeoutError(f"the drain took over {TIMEOUT_S:.0f} s")
        peak = max(peak, _tree_rss(root))
        time.sleep(SAMPLE_S)
    return peak


def _tree_rss(root: psutil.Process) -> int:
    total = 0
    try:
        for process in [root, *root.children(recursive=True)]:
            total += process.memory_info().rss
    except psutil.NoSuchProcess:  # a process ended between listing and reading: skip this sample
        return 0
    return total


def _span_seconds(target: Target) -> float:
    """Seconds from the first claim to the last completion (the runner's steady work)."""
    if target.backend == "sqlite":
        sql = (
            "SELECT (julianday(max(finished_at)) - julianday(min(started_at))) * 86400 "
            "FROM prompt_jobs"
        )
    else:
        sql = "SELECT extract(epoch FROM max(finished_at) - min(started_at)) FROM prompt_jobs"
    return _float(target, sql)


def _float(target: Target, sql: str) -> float:
    engine = create_engine(target.url)
    with engine.connect() as conn:
        value = float(conn.execute(text(sql)).scalar_one())
    engine.dispose()
    return value
