"""The runner as real processes: `promptbatch run` subprocesses, signals, SIGKILL (C4-C6)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from sqlalchemy import Engine, func, select

from bench.cluster import Cluster, own_cluster
from db import catalog, operations, queue
from db.catalog import NewPrompt
from db.engine import make_engine, read_tx
from db.filters import JobQuery
from db.migrate import upgrade
from db.models import JobAttempt, Prompt, PromptJob, Response, Worker
from db.types import JobStatus
from runner.simulator.server import SimulatorServer, running_simulator
from runner.worker.process import prefetch
from runner.worker.scheduler import utc_batch_key
from tests.helpers import wait_for

pytestmark = pytest.mark.subprocess

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    with running_simulator() as server:
        yield server


def runner_env(db_url: str, **settings: object) -> dict[str, str]:
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "PROMPTBATCH_LOG_LEVEL": "INFO",
        "PROMPTBATCH_BACKOFF_BASE": "0.05",
        "PROMPTBATCH_BACKOFF_CAP": "0.2",
        "PROMPTBATCH_POLL_INTERVAL": "0.1",
        "PROMPTBATCH_REAP_INTERVAL": "0.5",
    }
    env.update({f"PROMPTBATCH_{k.upper()}": str(v) for k, v in settings.items()})
    return env


_STARTED: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _no_runner_outlives_its_test() -> Iterator[None]:
    """Kill the process group of every runner a test started (supervisor and workers), also
    when the test failed before its runner exited."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def start_runner(db_url: str, *args: str, **settings: object) -> subprocess.Popen[str]:
    """`promptbatch run ARGS` as a subprocess in a session (process group) of its own."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", "run", *args],
        env=runner_env(db_url, **settings),
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    _STARTED.append(proc)
    return proc


def seed(
    engine: Engine,
    model: str,
    base_url: str,
    *,
    prompts: int = 3,
    runs: int = 2,
    extra_models: tuple[str, ...] = (),
) -> int:
    """Today's batch of `prompts` x models x `runs` jobs; returns the job count."""
    catalog.import_prompts(
        engine, [NewPrompt(f"Which CRM should team {i} pick?", "crm", runs) for i in range(prompts)]
    )
    for name in (model, *extra_models):
        catalog.add_model(engine, provider="compatible", name=name, base_url=base_url)
    return queue.enqueue_batch(engine, utc_batch_key(), max_attempts=3).created


def count(engine: Engine, *where: object, table: type = PromptJob) -> int:
    with read_tx(engine) as conn:
        return int(conn.scalar(select(func.count()).select_from(table).where(*where)) or 0)


def processing_pids(engine: Engine) -> set[int]:
    """Pids of worker processes holding a job (locked_by is host:pid:nonce)."""
    with read_tx(engine) as conn:
        owners = conn.scalars(
            select(PromptJob.locked_by).where(PromptJob.status == JobStatus.PROCESSING.value)
        )
        return {int(o.split(":")[1]) for o in owners if o}


def finish(proc: subprocess.Popen[str], timeout: float = 240) -> tuple[int, str]:
    """Wait for the runner; the generous bound only guards against a hang on a loaded machine."""
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"runner did not exit in {timeout}s:\n{err[-3000:]}") from None
    return proc.returncode, err


def test_drain_processes_batch_and_exits_zero(engine, db_url, sim):
    """C4: workers build their own engines after start while the parent keeps querying; every
    response belongs to its own job."""
    total = seed(
        engine,
        "sim-gpt-4o-mini",
        sim.base_url,
        prompts=20,
        runs=5,
        extra_models=("sim-claude-3.5-sonnet",),
    )
    assert total == 200
    code, err = finish(start_runner(db_url, "--drain", processes=2, concurrency=4))
    assert code == 0, err[-3000:]
    assert count(engine, PromptJob.status == "succeeded") == 200
    assert "connection" not in err.lower() or "error" not in err.lower()
    with read_tx(engine) as conn:
        mismatched = conn.scalar(
            select(func.count())
            .select_from(Response)
            .join(PromptJob, PromptJob.id == Response.job_id)
            .where(
                (Response.prompt_id != PromptJob.prompt_id)
                | (Response.model_id != PromptJob.model_id)
                | (Response.run_index != PromptJob.run_index)
            )
        )
        assert mismatched == 0
        assert conn.scalar(select(func.count(func.distinct(Response.job_id)))) == 200


def _runner_tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _database_connections(processes: list[psutil.Process], port: int) -> int:
    """TCP connections these processes hold to the database server's port."""
    held = 0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            held += sum(
                1
                for c in process.net_connections(kind="tcp")
                if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
            )
    return held


def test_hundreds_of_calls_in_flight_on_a_few_threads_and_two_connections(engine, db_url, sim):
    """Issue 11: a worker process holds its calls in flight as tasks on one event loop: 128 are
    answered at once by the simulator while the worker runs a fixed handful of OS threads (it
    ran one per call before), and the runner holds at most 2 database connections per worker
    process + 2 for the supervisor, whatever the concurrency."""
    total = seed(engine, "sim-gpt-4o-mini@latency=1500", sim.base_url, prompts=60, runs=5)
    sim.reset_counters()
    # WARNING: 300 INFO lines would fill the pipe no one reads until the runner exits
    proc = start_runner(db_url, "--drain", processes=1, concurrency=128, log_level="WARNING")
    port = engine.url.port if engine.dialect.name == "postgresql" else None
    peak_threads = peak_connections = 0
    while proc.poll() is None:
        with contextlib.suppress(psutil.NoSuchProcess):
            tree = _runner_tree(proc.pid)
            workers = [p for p in tree[1:] if "multiprocessing-fork" in " ".join(p.cmdline())]
            peak_threads = max([peak_threads, *(w.num_threads() for w in workers)])
            if port is not None:
                peak_connections = max(peak_connections, _database_connections(tree, port))
        time.sleep(0.05)
    code, err = finish(proc)
    assert code == 0, err[-3000:]
    assert count(engine, PromptJob.status == "succeeded") == total == 300
    assert sim.peak_answering >= 100, "the worker did not hold its calls in flight at once"
    assert 0 < peak_threads <= 16, peak_threads
    if port is not None:
        assert 0 < peak_connections <= 2 * 1 + 2, peak_connections


def test_json_logs_are_json_lines_only_progress_included(engine, db_url, sim):
    """Issue 12: with PROMPTBATCH_LOG_JSON the drain's progress, and the warning about a
    deprecated setting (PROMPTBATCH_THREADS), are log records, not text lines between the JSON
    ones: every stderr line parses."""
    seed(engine, "sim-gpt-4o-mini", sim.base_url, prompts=2, runs=1)
    code, err = finish(start_runner(db_url, "--drain", processes=1, threads=2, log_json=1))
    assert code == 0, err[-3000:]
    records = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert any(r.get("action") == "batch_progress" for r in records), records
    assert any(r.get("action") == "setting_deprecated" for r in records), records
    assert any(r.get("action") == "job_succeeded" for r in records)
    stopped = [r for r in records if r.get("action") == "worker_stopped"]
    assert stopped and stopped[0]["gc_frozen"] > 0, stopped  # issue 11: collector.tune() ran


def test_drain_enqueues_todays_missing_batch_itself(engine, db_url, sim):
    """The cron path: `run --drain` with no batch enqueued yet creates today's (catch-up), runs it
    and exits 0 (C2's start-up catch-up through the real command, logging at INFO)."""
    catalog.import_prompts(engine, [NewPrompt("Which CRM should we pick?", "crm", 2)])
    catalog.add_model(engine, provider="compatible", name="sim-gpt-4o-mini", base_url=sim.base_url)
    code, err = finish(start_runner(db_url, "--drain", processes=1, concurrency=2))
    assert code == 0, err[-3000:]
    assert "batch_enqueued" in err
    today = PromptJob.batch_key == utc_batch_key()
    assert count(engine, PromptJob.status == "succeeded", today) == 2


def test_drain_exits_one_when_a_model_is_paused(engine, db_url, sim):
    """C5 and issue 10: a 401 model is paused after K=3 failures, its jobs kept queued (no
    attempt spent, nothing failed); the other jobs succeed; the drain ends (exit 1) instead of
    waiting for the paused model."""
    seed(
        engine,
        "sim-gpt-4o-mini",
        sim.base_url,
        prompts=2,
        runs=2,
        extra_models=("sim-gpt-4o-mini@status=401",),
    )
    code, err = finish(start_runner(db_url, "--drain", processes=1, concurrency=4))
    assert code == 1, err[-3000:]
    # every claim of the 401 model's jobs was deferred (the K-th paused it): none spent
    queued = (PromptJob.status == "queued", PromptJob.attempt_count == PromptJob.deferrals)
    assert count(engine, *queued) == 4
    assert count(engine, *queued, PromptJob.error_kind == "auth") >= 3
    assert count(engine, PromptJob.status == "succeeded") == 4
    assert count(engine, PromptJob.status == "failed") == 0
    assert "model paused after 3 model-level failures" in err


def test_worker_sigkilled_mid_job_is_replaced_and_job_reclaimed(engine, db_url, sim):
    """C6: a worker process SIGKILLed mid-job -> replaced; its jobs come back after the lease and
    finish once; nothing is left in processing."""
    total = seed(engine, "sim-gpt-4o-mini@latency=1500", sim.base_url, prompts=4, runs=2)
    proc = start_runner(db_url, "--drain", processes=2, concurrency=2, lease_seconds=3)
    wait_for(lambda: len(processing_pids(engine)) > 0, 120, "a job in flight")
    victim = sorted(processing_pids(engine))[0]
    os.kill(victim, signal.SIGKILL)
    code, err = finish(proc, timeout=240)
    assert code == 0, err[-3000:]
    assert "worker_died" in err
    assert count(engine, PromptJob.status == "succeeded") == total
    assert count(engine, table=Response) == total  # finished once each: one response per job
    assert count(engine, JobAttempt.outcome == "lost", table=JobAttempt) >= 1
    assert count(engine, PromptJob.status == "processing") == 0


def test_a_killed_workers_jobs_are_taken_back_at_once_not_at_lease_expiry(engine, db_url, sim):
    """Issue 12: the supervisor sees its worker die and takes that worker's jobs back by its id
    at once: with a 60 s lease they are claimable again (and claimed by the replacement) long
    before the lease could have expired; each lost claim is a 'lost' attempt naming the death."""
    seed(engine, "sim-gpt-4o-mini@latency=30000", sim.base_url, prompts=4, runs=2)
    proc = start_runner(
        db_url, processes=1, concurrency=8, lease_seconds=60, grace_seconds=1, log_level="WARNING"
    )
    wait_for(lambda: count(engine, PromptJob.status == "processing") == 8, 120, "8 jobs held")
    (victim,) = processing_pids(engine)
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    wait_for(
        lambda: (
            victim not in processing_pids(engine)
            and count(engine, PromptJob.status == "processing") == 8
        ),
        50,
        "the jobs back and claimed by the replacement worker",
    )
    assert time.monotonic() - killed < 50  # the lease (60 s) has not expired: taken back
    with read_tx(engine) as conn:
        lost = conn.scalars(
            select(JobAttempt.error_message).where(JobAttempt.outcome == "lost")
        ).all()
    assert len(lost) == 8
    assert all(f":{victim}:" in m and "died (exit code -9)" in m for m in lost), lost
    os.killpg(proc.pid, signal.SIGTERM)
    proc.communicate(timeout=60)


def test_an_orphaned_worker_stops_and_hands_its_jobs_back(engine, db_url, sim):
    """Issue 12: a worker knows its supervisor from its spawn arguments, not from a getppid()
    read after start: one started for a supervisor already gone (here a pid that exited) claims
    nothing and exits, its registry row marked stopped."""
    import multiprocessing as mp

    from runner.worker.spawn import StopFlag, WorkerSpec, worker_entry
    from tests.helpers import fast_settings

    seed(engine, "sim-gpt-4o-mini", sim.base_url, prompts=2, runs=1)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    ctx = mp.get_context("spawn")
    spec = WorkerSpec(
        fast_settings(db_url).model_dump(), "test", 0, supervisor_pid=gone.pid, nonce="orphan"
    )
    worker = ctx.Process(target=worker_entry, args=(spec, StopFlag(ctx)))
    worker.start()
    worker.join(60)
    assert worker.exitcode == 0
    assert count(engine, PromptJob.status == "queued") == 2  # nothing claimed, nothing called
    with read_tx(engine) as conn:
        stopped = conn.scalars(select(Worker.stopped_at).where(Worker.id.like("%:orphan"))).all()
    assert len(stopped) == 1 and stopped[0] is not None


def test_after_a_freeze_past_the_lease_prefetched_jobs_are_not_called(engine, db_url):
    """Issue 12: a worker frozen (SIGSTOP) past its lease wakes with two prefetched jobs whose
    leases the reaper has taken: it drops them uncalled and they run once under a new claim.
    The prefetched prompts are called once each, never under their lost lease. The job in flight
    during the freeze is called once when its late answer lands before the woken worker claims
    it again (the answer is kept: db.results._adopt_late), twice when the claim comes first."""
    # A simulator of its own: the shared one may still answer earlier tests' 30 s calls, whose
    # prompts and model name are this test's too
    with running_simulator() as own_sim:
        total = seed(engine, "sim-gpt-4o-mini@latency=1500", own_sim.base_url, prompts=3, runs=1)
        proc = start_runner(db_url, "--drain", processes=1, concurrency=1, lease_seconds=3)
        wait_for(lambda: len(own_sim.captured) == 1, 60, "the first call in flight")
        (worker,) = processing_pids(engine)
        os.kill(worker, signal.SIGSTOP)
        try:
            wait_for(lambda: count(engine, PromptJob.status == "processing") == 0, 30, "the reap")
        finally:
            os.kill(worker, signal.SIGCONT)
        code, err = finish(proc)
        calls = sorted(own_sim.call_counts.values())
    assert code == 0, err[-3000:]
    assert count(engine, PromptJob.status == "succeeded") == total == 3
    assert count(engine, table=Response) == total
    assert calls[:2] == [1, 1] and calls[2] in (1, 2), calls
    assert calls[2] == 2 or "late_answer_kept" in err, err[-3000:]
    assert "job_lost_before_call" in err


def test_runner_sigkilled_jobs_reclaimed_by_next_runner(engine, db_url, sim):
    """A whole runner SIGKILLed mid-job: the next runner reaps the expired leases (no command)
    and finishes every job once."""
    total = seed(engine, "sim-gpt-4o-mini@latency=2000", sim.base_url, prompts=2, runs=2)
    proc = start_runner(db_url, "--drain", processes=1, concurrency=4, lease_seconds=2)
    wait_for(lambda: count(engine, PromptJob.status == "processing") > 0, 120, "jobs in flight")
    os.killpg(proc.pid, signal.SIGKILL)  # supervisor and workers at once
    proc.communicate()
    assert count(engine, PromptJob.status == "processing") > 0
    code, err = finish(
        start_runner(db_url, "--drain", processes=1, concurrency=4, lease_seconds=2), timeout=240
    )
    assert code == 0, err[-3000:]
    assert count(engine, PromptJob.status == "succeeded") == total
    assert count(engine, table=Response) == total


def test_sigterm_finishes_in_flight_jobs_and_exits_zero(engine, db_url, sim):
    """SIGTERM: stop claiming, finish in-flight jobs within the grace period, exit 0."""
    seed(engine, "sim-gpt-4o-mini@latency=1000", sim.base_url, prompts=10, runs=2)
    proc = start_runner(db_url, processes=1, concurrency=2, grace_seconds=20)
    wait_for(lambda: count(engine, PromptJob.status == "processing") > 0, 120, "jobs in flight")
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    assert code == 0, err[-3000:]
    assert count(engine, PromptJob.status == "processing") == 0
    assert count(engine, PromptJob.status == "succeeded") >= 1
    assert count(engine, PromptJob.status == "queued", PromptJob.attempt_count > 0) == 0
    assert count(engine, Worker.stopped_at.is_(None), table=Worker) == 0


def test_sigterm_hands_back_prefetched_jobs_without_calling_the_model(engine, db_url, sim):
    """A process holds T running calls plus prefetched jobs (runner.worker.process.prefetch): on
    SIGTERM the running ones finish, the prefetched ones go back to the queue unstarted (no call, no
    attempt spent)."""
    # A model no other test here uses: the shared simulator may still be answering their calls.
    seed(engine, "sim-llama-3.1-70b@latency=3000", sim.base_url, prompts=10, runs=2)
    proc = start_runner(db_url, processes=1, concurrency=2, grace_seconds=20)
    wait_for(
        lambda: count(engine, PromptJob.status == "processing") == 2 + prefetch(2),
        120,
        "running and prefetched jobs",
    )
    time.sleep(0.5)  # the two running calls are under way; the prefetched two wait for a slot
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    assert code == 0, err[-3000:]
    assert count(engine, PromptJob.status == "succeeded") == 2
    assert count(engine, PromptJob.status == "processing") == 0
    assert count(engine, PromptJob.attempt_count > 0) == 2
    assert count(engine, table=JobAttempt) == 2
    with read_tx(engine) as conn:
        answered = set(
            conn.scalars(select(Prompt.text).join(PromptJob).where(PromptJob.status == "succeeded"))
        )
    asked = {prompt for model, prompt, _ in sim.call_counts if model == "sim-llama-3.1-70b"}
    assert asked == answered  # no other prompt was asked


def test_sigterm_past_grace_hands_jobs_back_without_spending_attempts(engine, db_url, sim):
    seed(engine, "sim-gpt-4o-mini@latency=5000", sim.base_url, prompts=2, runs=1)
    proc = start_runner(db_url, processes=1, concurrency=2, grace_seconds=0.5)
    wait_for(lambda: count(engine, PromptJob.status == "processing") == 2, 120, "2 jobs in flight")
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    assert code == 0, err[-3000:]
    assert "jobs_released" in err
    assert count(engine, PromptJob.status == "queued", PromptJob.attempt_count == 0) == 2


def test_cancelled_processing_job_result_dropped(engine, db_url, sim):
    """A job cancelled while its model call is in flight: the late result writes nothing."""
    seed(engine, "sim-gpt-4o-mini@latency=1500", sim.base_url, prompts=1, runs=1)
    proc = start_runner(db_url, processes=1, concurrency=1)
    wait_for(lambda: count(engine, PromptJob.status == "processing") == 1, 120, "job in flight")
    operations.cancel_jobs(engine, where=JobQuery(statuses=("processing",)), actor="test")
    time.sleep(2.5)
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    assert code == 0, err[-3000:]
    assert "job_result_dropped" in err
    assert count(engine, PromptJob.status == "cancelled") == 1
    assert count(engine, table=Response) == 0


def test_runner_exits_non_zero_when_scheduler_thread_dies(engine, db_url, monkeypatch):
    """C3: if the scheduler thread dies anyway, the runner exits non-zero instead of idling."""
    from runner.worker.supervisor import EXIT_SCHEDULER_DIED, Supervisor
    from tests.helpers import fast_settings

    def broken_tick(self: object) -> None:
        raise RuntimeError("scheduler bug (simulated)")

    monkeypatch.setattr("runner.worker.scheduler.BatchScheduler.tick", broken_tick)
    supervisor = Supervisor(
        fast_settings(db_url, processes=1, concurrency=1), engine, progress=False
    )
    assert supervisor.run() == EXIT_SCHEDULER_DIED


def test_two_runners_share_one_rate_limit(engine, db_url, sim):
    """Issue 10: --rpm is one limit for every runner on the database. Two runners (2 processes
    x 4 threads each, 16 call slots for 16 jobs) at --rpm 120 start their calls 0.5 s apart, as
    the simulator counts the requests arriving; unpaced, all 16 would arrive within a moment."""
    model = "sim-gpt-4o-mini@latency=50,rpm=100000"  # the simulator counts, never refuses
    total = seed(engine, model, sim.base_url, prompts=8, runs=2)
    [row] = catalog.list_models(engine)
    catalog.update_model(engine, row.id, rpm=120)
    started = time.monotonic()
    runners = [start_runner(db_url, "--drain", processes=2, concurrency=4) for _ in range(2)]
    for proc in runners:
        code, err = finish(proc)
        assert code == 0, err[-3000:]
    assert count(engine, PromptJob.status == "succeeded") == total == 16
    assert time.monotonic() - started >= 15 * 0.5
    assert sim.limits.max_in_window(model, window=2.0) <= 5  # 4 places per 2 s, +1 for jitter
    with read_tx(engine) as conn:
        workers = set(conn.scalars(select(JobAttempt.worker_id)))
    assert len({w.split(":")[1] for w in workers if w}) >= 2  # calls from several processes


# --- PostgreSQL really stopped (a cluster of the test's own, bench/cluster.py) ------------------


@pytest.fixture
def own_pg() -> Iterator[tuple[Cluster, Engine]]:
    """A PostgreSQL cluster of this test's own, migrated, that the test may stop and start."""
    if shutil.which("pg_config") is None:
        pytest.skip("PostgreSQL's server programs (pg_config, initdb) are not installed")
    with own_cluster() as cluster:
        eng = make_engine(cluster.url)
        upgrade(eng)
        yield cluster, eng
        eng.dispose()


def _stored_calls(engine: Engine) -> int:
    with read_tx(engine) as conn:
        return int(conn.scalar(select(func.coalesce(func.sum(JobAttempt.calls), 0))) or 0)


def test_drain_survives_postgresql_stopped_mid_batch_and_keeps_every_paid_answer(own_pg):
    """Issue 12: PostgreSQL stopped (a crash: `pg_ctl stop -m immediate`) while calls are in
    flight, started 4 s later: the drain ends 0, every job succeeded once, and every answer the
    simulator was paid for is stored (the outcomes waited in the group commit)."""
    cluster, engine = own_pg
    with running_simulator() as own_sim:
        total = seed(engine, "sim-gpt-4o-mini@latency=700", own_sim.base_url, prompts=12, runs=3)
        proc = start_runner(cluster.url, "--drain", processes=1, concurrency=6)
        wait_for(lambda: count(engine, PromptJob.status == "succeeded") >= 6, 120, "6 answers")
        cluster.stop("immediate")
        time.sleep(4)  # calls in flight answer into the outage
        cluster.start()
        code, err = finish(proc)
        paid, _ = own_sim.paid_calls
    assert code == 0, err[-3000:]
    assert count(engine, PromptJob.status == "succeeded") == total
    assert count(engine, table=Response) == total
    assert _stored_calls(engine) == paid  # no paid answer dropped


def test_shutdown_with_postgresql_away_finishes_its_bookkeeping_when_it_returns(own_pg):
    """Issue 12: SIGTERM while PostgreSQL is stopped, and the grace period over before it is
    back: the answered calls' outcomes are still written, the prefetched jobs handed back
    unstarted and the worker marked stopped once it returns (within BOOKKEEPING_SECONDS), not
    dropped and left to lease expiry."""
    cluster, engine = own_pg
    with running_simulator() as own_sim:
        seed(engine, "sim-gpt-4o-mini@latency=1500", own_sim.base_url, prompts=10, runs=1)
        proc = start_runner(cluster.url, processes=1, concurrency=2, grace_seconds=2)
        held = 2 + prefetch(2)
        wait_for(lambda: count(engine, PromptJob.status == "processing") == held, 120, "held jobs")
        time.sleep(0.3)  # the two running calls are under way
        cluster.stop("immediate")
        proc.send_signal(signal.SIGTERM)
        time.sleep(5)  # the calls answer, and the grace period ends, while it is away
        cluster.start()
        code, err = finish(proc)
        paid, _ = own_sim.paid_calls
    assert code == 0, err[-3000:]
    assert count(engine, PromptJob.status == "succeeded") == 2 == paid
    assert count(engine, PromptJob.status == "processing") == 0
    assert count(engine, PromptJob.status == "queued", PromptJob.attempt_count == 0) == 8
    assert count(engine, Worker.stopped_at.is_(None), table=Worker) == 0


def test_a_worker_killed_while_postgresql_is_away_is_rescued_when_it_returns(own_pg):
    """Issue 12 (found by the soak): a worker killed during a PostgreSQL crash-restart had its
    jobs back only at lease expiry, the supervisor's one rescue having failed. The rescue is
    retried each tick: with a 60 s lease its jobs are back seconds after the database is."""
    cluster, engine = own_pg
    with running_simulator() as own_sim:
        seed(engine, "sim-gpt-4o-mini@latency=30000", own_sim.base_url, prompts=4, runs=1)
        proc = start_runner(cluster.url, processes=1, concurrency=4, lease_seconds=60)
        wait_for(lambda: count(engine, PromptJob.status == "processing") == 4, 120, "4 jobs held")
        (victim,) = processing_pids(engine)
        cluster.stop("immediate")
        os.kill(victim, signal.SIGKILL)
        time.sleep(2)  # the supervisor sees the death and fails to rescue
        cluster.start()
        back = time.monotonic()
        wait_for(lambda: victim not in processing_pids(engine), 20, "the dead worker's jobs back")
        assert time.monotonic() - back < 20  # not the 60 s lease
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=60)
    with read_tx(engine) as conn:
        lost = conn.scalars(
            select(JobAttempt.error_message).where(JobAttempt.outcome == "lost")
        ).all()
    assert len(lost) == 4 and all("died (exit code -9)" in m for m in lost), lost
