"""Item 3: calls in flight at real latencies (issue 11), through the real `promptbatch run
--drain` against the simulator: 2,000 jobs at 500 ms with 64 in flight, 4,000 at 2 s with 256,
8,000 at 4 s with 1,024, and those at lognormal latencies (median 4 s, sigma 0.5) as real
answers spread (2 worker processes each). Per scenario: jobs/s over the busy span (first claim to
last completion), between the 10th and 90th percentile completion, and over the whole command,
against the ideal (in flight / the mean latency); the runner's CPU per job (every runner
process: the rusage of the waited command; "steady" less the CPU of the same command run again
with nothing due, its start-up and exit); the simulator's CPU; peak RSS summed over the runner's
processes; on PostgreSQL the peak number of database connections. The simulator runs as its own
`promptbatch simulator --processes N` (SO_REUSEPORT), as a remote API would: not in this
process, whose RSS sampling would hold its GIL, and not as the bottleneck."""

from __future__ import annotations

import bisect
import math
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psutil
from sqlalchemy import create_engine, text

from bench.databases import OUT, Target, command_env, fresh_target, seed_catalog, sql_scalar
from db import queue
from runner.worker.scheduler import utc_batch_key

PROCESSES = 2
SIMULATOR_PROCESSES = 2
TIMEOUT_S = 300.0
SAMPLE_S = 0.1


@dataclass(frozen=True)
class Scenario:
    """`jobs` jobs at `latency_s` seconds per call with `in_flight` calls at once; with `jitter`,
    each call's latency lognormal (median latency_s, sigma jitter) as real answers spread."""

    name: str
    jobs: int
    latency_s: float
    in_flight: int
    jitter: float = 0.0

    @property
    def mean_latency_s(self) -> float:
        return self.latency_s * math.exp(self.jitter**2 / 2)  # the lognormal's mean

    @property
    def ideal_jobs_per_s(self) -> float:
        return self.in_flight / self.mean_latency_s

    @property
    def model(self) -> str:
        spread = f",jitter={self.jitter:g}" if self.jitter else ""
        return f"sim-gpt-4o-mini@latency={int(self.latency_s * 1000)}{spread}"


SCENARIOS = (
    Scenario("64x500ms", 2_000, 0.5, 64),
    Scenario("256x2s", 4_000, 2.0, 256),
    Scenario("1024x4s", 8_000, 4.0, 1_024),
    # The same with latencies spread as real ones: constant ones return in bursts of 1,024
    Scenario("1024x4s-lognormal", 8_000, 4.0, 1_024, jitter=0.5),
)
RUNS = 5  # runs per prompt: jobs / RUNS prompts


def run(backend: str) -> dict[str, Any]:
    """Every scenario on `backend`: {scenario name: figures}."""
    return {scenario.name: run_scenario(backend, scenario) for scenario in SCENARIOS}


def run_scenario(backend: str, scenario: Scenario) -> dict[str, Any]:
    """One scenario's figures (see the module docstring)."""
    with simulator_process() as sim, fresh_target(backend, "concurrency") as target:
        seed_catalog(
            target,
            prompts=scenario.jobs // RUNS,
            runs=RUNS,
            models=[scenario.model],
            base_url=sim.base_url,
        )
        engine = target.engine()
        jobs = queue.enqueue_batch(engine, utc_batch_key(), max_attempts=3).created
        engine.dispose()
        sim_cpu_before = sim.cpu_seconds()
        drained = _drain(target, scenario)
        sim_cpu = sim.cpu_seconds() - sim_cpu_before
        fixed = _drain(target, scenario, "again")  # nothing due: start-up and exit alone
        span = _span_seconds(target)
        succeeded = sql_scalar(
            target, "SELECT count(*) FROM prompt_jobs WHERE status = 'succeeded'"
        )
        latency = _float(target, "SELECT avg(latency_ms) / 1000.0 FROM responses")
        middle = _middle_rate(target, scenario.mean_latency_s)
    ideal = scenario.ideal_jobs_per_s
    return {
        "jobs": jobs,
        "succeeded": succeeded,
        "in_flight": scenario.in_flight,
        "processes": PROCESSES,
        "concurrency": scenario.in_flight // PROCESSES,
        "latency_s": scenario.latency_s,
        "jitter": scenario.jitter,
        "mean_latency_s": scenario.mean_latency_s,
        "mean_call_s": latency,  # as the runner timed its calls: the simulator's + transport
        "ideal_jobs_per_s": ideal,
        "wall_s": drained.wall_s,
        "jobs_per_s_wall": jobs / drained.wall_s,
        "span_s": span,
        "jobs_per_s_span": jobs / span,
        "fraction_of_ideal_span": jobs / span / ideal,
        "fraction_of_ideal_wall": jobs / drained.wall_s / ideal,
        "jobs_per_s_middle": middle,
        "fraction_of_ideal_middle": middle / ideal,
        "runner_cpu_ms_per_job": drained.cpu_s * 1000 / jobs,
        "runner_startup_cpu_s": fixed.cpu_s,
        "runner_cpu_ms_per_job_steady": (drained.cpu_s - fixed.cpu_s) * 1000 / jobs,
        "simulator_cpu_ms_per_job": sim_cpu * 1000 / jobs,
        "simulator_processes": SIMULATOR_PROCESSES,
        "peak_rss_mib": drained.peak_rss / 2**20,
        "peak_db_connections": drained.peak_connections,
    }


@dataclass
class Simulator:
    base_url: str
    proc: subprocess.Popen[bytes]

    def cpu_seconds(self) -> float:
        """User + system CPU of the simulator's processes so far."""
        root = psutil.Process(self.proc.pid)
        total = 0.0
        for process in [root, *root.children(recursive=True)]:
            times = process.cpu_times()
            total += times.user + times.system
        return total


@contextmanager
def simulator_process(processes: int = SIMULATOR_PROCESSES) -> Iterator[Simulator]:
    """`promptbatch simulator` on a free loopback port until the block ends; yields it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "runner", "simulator", "--port", str(port)]
    proc = subprocess.Popen(
        [*command, "--processes", str(processes)],
        env=command_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        _wait_until_serving(base_url, proc)
        yield Simulator(base_url, proc)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
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


@dataclass
class Drained:
    wall_s: float
    cpu_s: float  # user + system CPU of every runner process (rusage of the waited command)
    peak_rss: int  # bytes, summed over the runner's processes
    peak_connections: int | None  # PostgreSQL backends of the bench database (None: SQLite)


def _drain(target: Target, scenario: Scenario, run: str = "") -> Drained:
    """Run `promptbatch run --drain` and watch it until it exits."""
    env = command_env(
        DATABASE_URL=target.url,
        PROMPTBATCH_PROCESSES=str(PROCESSES),
        PROMPTBATCH_CONCURRENCY=str(scenario.in_flight // PROCESSES),
        PROMPTBATCH_POLL_INTERVAL="0.1",
    )
    OUT.mkdir(exist_ok=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    name = f"concurrency-{target.backend}-{scenario.name}{'-' + run if run else ''}.log"
    with open(OUT / name, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runner", "run", "--drain"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        peak_rss, peak_connections = _watch(proc, target)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"promptbatch run --drain exited {proc.returncode}; see {log.name}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Drained(wall, cpu, peak_rss, peak_connections)


def _watch(proc: subprocess.Popen[bytes], target: Target) -> tuple[int, int | None]:
    """Poll the runner's process tree until it exits: the largest summed RSS seen (bytes) and
    the most database connections seen (PostgreSQL)."""
    root = psutil.Process(proc.pid)
    counter = _ConnectionCounter(target) if target.backend == "postgresql" else None
    deadline = time.monotonic() + TIMEOUT_S
    peak_rss, peak_connections = 0, 0
    try:
        while proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()
                raise TimeoutError(f"the drain took over {TIMEOUT_S:.0f} s")
            peak_rss = max(peak_rss, _tree_rss(root))
            if counter is not None:
                peak_connections = max(peak_connections, counter.count())
            time.sleep(SAMPLE_S)
    finally:
        if counter is not None:
            counter.close()
    return peak_rss, peak_connections if counter is not None else None


class _ConnectionCounter:
    """Counts the backends connected to the bench database, other than its own."""

    def __init__(self, target: Target) -> None:
        self._engine = create_engine(target.url, pool_size=1)
        self._conn = self._engine.connect()

    def count(self) -> int:
        sql = (
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        value = self._conn.execute(text(sql)).scalar_one()
        self._conn.rollback()
        return int(value)

    def close(self) -> None:
        self._conn.close()
        self._engine.dispose()


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


def _middle_rate(target: Target, period_s: float) -> float:
    """Jobs/s while every slot is busy, without the ramp-up and the tail (the slowest answers of a
    spread latency): the completions in whole periods of `period_s` (the mean latency) from the
    10th percentile completion, as many periods as end before the 90th. Whole periods: at a
    constant latency the completions come as one burst per period, and a window cut mid-burst at
    one end read 92% of the ideal for a runner that was at 99% (its span read 93.8%, of which a
    ninth of a round is the last partial round and the first round's spaced starts)."""
    engine = create_engine(target.url)
    with engine.connect() as conn:
        values = conn.execute(text("SELECT finished_at FROM prompt_jobs")).scalars()
        ends = sorted(v if isinstance(v, datetime) else datetime.fromisoformat(v) for v in values)
    engine.dispose()
    seconds = [(end - ends[0]).total_seconds() for end in ends]
    start, stop = seconds[len(ends) // 10], seconds[len(ends) * 9 // 10]
    window = max(1, int((stop - start) / period_s)) * period_s
    done = bisect.bisect_left(seconds, start + window) - bisect.bisect_left(seconds, start)
    return done / window


def _float(target: Target, sql: str) -> float:
    engine = create_engine(target.url)
    with engine.connect() as conn:
        value = float(conn.execute(text(sql)).scalar_one())
    engine.dispose()
    return value
