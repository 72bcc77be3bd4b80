"""The soak (issue 12): `make soak` runs it in full, `make bench` a smaller one.

Real `promptbatch run --drain` runners against the simulator (in this process, counting the
calls it answered 200: what a provider bills) on PostgreSQL, a cluster of the soak's own
(bench/cluster.py, so it can crash and stop it), and on SQLite. Each plan runs twice: fault-free,
then with its faults spread over that run's duration:
- kill -9 rounds, alternately on a worker process and on a runner's supervisor (whose workers are
  then orphans and must stop on their own); a killed runner is started again after
  RESTART_DELAY_S, as a service manager would;
- a PostgreSQL crash and restart (`pg_ctl stop -m immediate`, then start: crash recovery);
- one runner frozen with SIGSTOP for the lease + 3 s, then SIGCONT;
- PostgreSQL stopped past the lease mid-batch (an outage), then started.
The lease is LEASE_S (10 s, not the default 60 s) so a freeze and an outage past it fit a run.
Then the invariants, by SQL: jobs not succeeded, jobs completed twice, responses per succeeded job,
attempt rows vs attempt_count, and paid calls never stored (the simulator's 200s less the calls
the attempt rows record; of them, those answered to a client still alive: a worker killed during
its call leaves an answer no client can keep). Also: how soon a killed worker's jobs were
claimable again, how long orphans took to stop, and the wall time against the fault-free run.

`python -m bench.soak [--small]` prints the table and writes it to bench/results.json ("soak")."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import psutil
from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from bench import report
from bench.cluster import Cluster, own_cluster
from bench.databases import OUT, Target, command_env, fresh_target, migrate, seed_catalog
from db import queue
from runner.simulator.server import SimulatorServer, running_simulator
from runner.worker.scheduler import utc_batch_key

log = logging.getLogger("bench.soak")

LEASE_S = 10.0
FREEZE_S = LEASE_S + 3
RESTART_DELAY_S = 1.0
TICK_S = 0.1
TIMEOUT_S = 900.0
MODEL = "sim-gpt-4o-mini@latency=800,jitter=0.5"
RUNS = 5  # runs per prompt


@dataclass(frozen=True)
class Plan:
    """One soak run: `runners` x `processes` x `concurrency` on `backend`, `jobs` jobs, and the
    faults to inject."""

    name: str
    backend: str
    jobs: int
    runners: int
    processes: int
    concurrency: int
    kill_rounds: int = 0
    restart: bool = False  # PostgreSQL crashed and restarted
    freeze: bool = False  # one runner SIGSTOPped for FREEZE_S
    outage_s: float = 0.0  # PostgreSQL stopped this long

    def events(self, duration: float) -> list[tuple[float, str]]:
        """(seconds from the start, fault) over a run expected to take `duration` seconds."""
        rounds = self.kill_rounds
        events = [
            (duration * (0.1 + 0.7 * i / rounds), "kill-supervisor" if i % 2 else "kill-worker")
            for i in range(rounds)
        ]
        if self.freeze:
            events.append((duration * 0.3, "freeze"))
        if self.restart:
            events.append((duration * 0.45, "restart"))
        if self.outage_s:
            events.append((duration * 0.3, "outage"))
        return sorted(events)


FULL = (
    Plan("postgresql", "postgresql", 3_000, 3, 2, 8, kill_rounds=20, restart=True, freeze=True),
    Plan("postgresql-outage", "postgresql", 1_000, 3, 2, 8, outage_s=LEASE_S + 2),
    Plan("sqlite", "sqlite", 1_000, 2, 2, 8, kill_rounds=10),
)
SMALL = (
    Plan("postgresql", "postgresql", 1_000, 2, 2, 8, kill_rounds=6, restart=True, freeze=True),
    Plan("postgresql-outage", "postgresql", 500, 2, 2, 8, outage_s=LEASE_S + 2),
    Plan("sqlite", "sqlite", 400, 2, 2, 8, kill_rounds=4),
)


def run(small: bool = False) -> dict[str, Any]:
    """Every plan of the full (or small) soak: {plan name: figures}."""
    return {plan.name: run_plan(plan) for plan in (SMALL if small else FULL)}


def run_plan(plan: Plan) -> dict[str, Any]:
    """The fault-free run, then the faulted one; the faulted run's figures."""
    clean = _one_run(plan, faults=False)
    faulted = _one_run(plan, faults=True, duration=clean["wall_s"])
    return {
        **faulted,
        "fault_free_wall_s": clean["wall_s"],
        "wall_vs_fault_free": faulted["wall_s"] / clean["wall_s"],
    }


def _one_run(plan: Plan, *, faults: bool, duration: float = 0.0) -> dict[str, Any]:
    with running_simulator() as sim, _database(plan.backend) as (target, cluster):
        seed_catalog(
            target, prompts=plan.jobs // RUNS, runs=RUNS, models=[MODEL], base_url=sim.base_url
        )
        engine = target.engine()
        queue.enqueue_batch(engine, utc_batch_key(), max_attempts=3)
        engine.dispose()
        chaos = Chaos(plan, target, cluster, faults)
        chaos.run(plan.events(duration) if faults else [])
        return {**chaos.figures(), **invariants(target, sim)}


@contextmanager
def _database(backend: str) -> Iterator[tuple[Target, Cluster | None]]:
    """A migrated empty database: a SQLite file, or PostgreSQL on a cluster of the soak's own."""
    if backend == "sqlite":
        with fresh_target("sqlite", "soak") as target:
            yield target, None
        return
    with own_cluster() as cluster:
        target = Target(cluster.url, "postgresql")
        migrate(target)
        yield target, cluster


@dataclass
class Slot:
    """One runner kept running by the soak (started again when killed)."""

    index: int
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    started_at: float = 0.0  # time.monotonic() of its latest start
    restart_at: float | None = None  # when a killed runner is started again
    done: bool = False
    exit_codes: list[int] = field(default_factory=list)


@dataclass
class Kill:
    pid: int
    at: float
    rescued_after: float | None = None  # seconds until no job is held by this worker


class Chaos:
    """Runs a plan's runners, injects its faults on schedule, and times what they cost."""

    def __init__(self, plan: Plan, target: Target, cluster: Cluster | None, faults: bool) -> None:
        self.plan, self.target, self.cluster = plan, target, cluster
        self.tag = f"{plan.name}-{'faults' if faults else 'clean'}"
        self.slots = [Slot(i) for i in range(plan.runners)]
        self.random = random.Random(12)
        self.watch = create_engine(target.url, pool_pre_ping=True)
        self.kills: list[Kill] = []
        self.orphans: dict[int, float] = {}  # pid -> when its supervisor was killed
        self.orphan_exit_s: list[float] = []
        self.frozen: tuple[Slot, float] | None = None  # the frozen runner, when to thaw it
        self.database_back_at: float | None = None
        self.started = 0.0
        self.wall_s = 0.0
        self.injected: list[tuple[float, str, str]] = []  # (seconds in, fault, its target)

    def run(self, events: list[tuple[float, str]]) -> None:
        self.started = time.monotonic()
        for slot in self.slots:
            self._start(slot)
        pending = list(events)
        while time.monotonic() - self.started < TIMEOUT_S:
            now = time.monotonic() - self.started
            while pending and pending[0][0] <= now:
                self._inject(pending.pop(0)[1])
            self._tend(now)
            if not self.wall_s and pending == [] and self._all_terminal():
                self.wall_s = now
            if self.wall_s and all(s.done for s in self.slots) and not self.orphans:
                break
            time.sleep(TICK_S)
        else:
            raise TimeoutError(f"soak {self.tag} did not finish in {TIMEOUT_S:.0f} s")
        self.watch.dispose()

    def _start(self, slot: Slot) -> None:
        env = command_env(
            DATABASE_URL=self.target.url,
            PROMPTBATCH_PROCESSES=str(self.plan.processes),
            PROMPTBATCH_CONCURRENCY=str(self.plan.concurrency),
            PROMPTBATCH_LEASE_SECONDS=str(LEASE_S),
            PROMPTBATCH_REAP_INTERVAL="1",
            PROMPTBATCH_POLL_INTERVAL="0.2",
            PROMPTBATCH_LOG_LEVEL="WARNING",
        )
        OUT.mkdir(exist_ok=True)
        with open(OUT / f"soak-{self.tag}-{slot.index}-{slot.starts}.log", "w") as out:
            slot.proc = subprocess.Popen(
                [sys.executable, "-m", "runner", "run", "--drain"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        slot.starts += 1
        slot.started_at = time.monotonic()
        slot.restart_at = None

    def _tend(self, now: float) -> None:
        """Restart killed runners, thaw the frozen one, restart the database, time rescues."""
        for slot in self.slots:
            if slot.proc is not None and not slot.done and slot.restart_at is None:
                code = slot.proc.poll()
                if code is not None:
                    slot.exit_codes.append(code)
                    if code == -signal.SIGKILL:
                        slot.restart_at = now + RESTART_DELAY_S
                    else:
                        slot.done = True
            if slot.restart_at is not None and now >= slot.restart_at:
                self._start(slot)
        if self.frozen is not None and now >= self.frozen[1]:
            self._signal_group(self.frozen[0], signal.SIGCONT)
            self.frozen = None
        if self.database_back_at is not None and now >= self.database_back_at:
            assert self.cluster is not None
            self.cluster.start()
            self.database_back_at = None
        self._time_rescues()
        self._time_orphans()

    def _inject(self, fault: str) -> None:
        now = time.monotonic() - self.started
        target = self._inject_on(fault, now)
        if target is not None:
            self.injected.append((round(now, 1), fault, target))
            log.info("%s: %.1f s %s %s", self.tag, now, fault, target)

    def _inject_on(self, fault: str, now: float) -> str | None:
        """Inject `fault`; what it hit, or None when there was nothing to hit."""
        live = [s for s in self.slots if self._alive(s) and not self._is_frozen(s)]
        if fault in ("restart", "outage") and self.cluster is not None:
            if fault == "restart":
                self.cluster.restart("immediate")
            else:
                self.cluster.stop("immediate")
                self.database_back_at = now + self.plan.outage_s
            return "postgresql"
        if not live:
            return None
        if fault == "freeze":  # the runner up longest: one started a moment ago holds no job yet
            slot = min(live, key=lambda s: s.started_at)
            self._signal_group(slot, signal.SIGSTOP)
            self.frozen = (slot, now + FREEZE_S)
            return f"runner {slot.index}"
        slot = self.random.choice(live)
        assert slot.proc is not None
        workers = _workers(slot)
        if fault == "kill-worker" and workers:
            victim = self.random.choice(workers)
            self.kills.append(Kill(victim.pid, time.monotonic()))
            _kill(victim.pid)
            return f"worker {victim.pid} of runner {slot.index}"
        if fault == "kill-supervisor":
            for worker in workers:
                self.orphans[worker.pid] = time.monotonic()
            _kill(slot.proc.pid)
            return f"runner {slot.index}'s supervisor ({len(workers)} workers orphaned)"
        return None

    def _alive(self, slot: Slot) -> bool:
        return slot.proc is not None and slot.proc.poll() is None

    def _is_frozen(self, slot: Slot) -> bool:
        return self.frozen is not None and self.frozen[0] is slot

    def _signal_group(self, slot: Slot, signum: int) -> None:
        assert slot.proc is not None
        with suppress(ProcessLookupError):
            os.killpg(slot.proc.pid, signum)

    def _time_rescues(self) -> None:
        waiting = [k for k in self.kills if k.rescued_after is None]
        for kill in waiting:
            held = self._scalar(
                "SELECT count(*) FROM prompt_jobs WHERE status = 'processing' "
                "AND locked_by LIKE :owner",
                owner=f"%:{kill.pid}:%",
            )
            if held == 0:
                kill.rescued_after = time.monotonic() - kill.at

    def _time_orphans(self) -> None:
        for pid, since in list(self.orphans.items()):
            if not _running(pid):
                self.orphan_exit_s.append(time.monotonic() - since)
                del self.orphans[pid]

    def _all_terminal(self) -> bool:
        left = self._scalar(
            "SELECT count(*) FROM prompt_jobs WHERE status NOT IN "
            "('succeeded', 'failed', 'cancelled')"
        )
        return left == 0

    def _scalar(self, sql: str, **params: Any) -> int | None:
        """A read of the soak's own bookkeeping; None while the database is away."""
        try:
            with self.watch.connect() as conn:
                return int(conn.execute(text(sql), params).scalar_one())
        except SQLAlchemyError:
            return None

    def figures(self) -> dict[str, Any]:
        rescues = [k.rescued_after for k in self.kills if k.rescued_after is not None]
        return {
            "wall_s": self.wall_s,
            "runners": self.plan.runners,
            "processes": self.plan.processes,
            "concurrency": self.plan.concurrency,
            "faults": {f: [e[1] for e in self.injected].count(f) for f in _kinds(self.injected)},
            "events": self.injected,
            "runner_starts": sum(s.starts for s in self.slots),
            "exit_codes": sorted({c for s in self.slots for c in s.exit_codes}),
            "killed_worker_jobs_back_max_s": max(rescues, default=None),
            "orphan_stop_max_s": max(self.orphan_exit_s, default=None),
            "orphans_left": len(self.orphans),
        }


def _kinds(events: list[tuple[float, str, str]]) -> list[str]:
    return sorted({fault for _, fault, _ in events})


def _workers(slot: Slot) -> list[psutil.Process]:
    """A runner's worker processes (its children but multiprocessing's resource tracker)."""
    assert slot.proc is not None
    try:
        children = psutil.Process(slot.proc.pid).children()
        return [c for c in children if "resource_tracker" not in " ".join(c.cmdline())]
    except psutil.NoSuchProcess:
        return []


def _running(pid: int) -> bool:
    """Whether `pid` is a live process (an exited orphan is gone or a zombie)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:  # also when it exits between the lookup and the read
        return False


def _kill(pid: int) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


CHECKS = {
    "jobs": "SELECT count(*) FROM prompt_jobs",
    "jobs_not_succeeded": "SELECT count(*) FROM prompt_jobs WHERE status <> 'succeeded'",
    "jobs_completed_twice": (
        "SELECT count(*) FROM (SELECT job_id FROM job_attempts WHERE outcome = 'succeeded' "
        "GROUP BY job_id HAVING count(*) > 1) AS twice"
    ),
    "succeeded_jobs_without_exactly_one_response": (
        "SELECT count(*) FROM prompt_jobs j WHERE j.status = 'succeeded' "
        "AND (SELECT count(*) FROM responses r WHERE r.job_id = j.id) <> 1"
    ),
    "responses_of_jobs_not_succeeded": (
        "SELECT count(*) FROM responses r JOIN prompt_jobs j ON j.id = r.job_id "
        "WHERE j.status <> 'succeeded'"
    ),
    "attempt_rows": "SELECT count(*) FROM job_attempts",
    "attempt_count_sum": "SELECT coalesce(sum(attempt_count), 0) FROM prompt_jobs",
    "jobs_whose_attempt_rows_differ": (
        "SELECT count(*) FROM prompt_jobs j WHERE j.attempt_count <> "
        "(SELECT count(*) FROM job_attempts a WHERE a.job_id = j.id)"
    ),
    "stored_calls": "SELECT coalesce(sum(calls), 0) FROM job_attempts",
}


def invariants(target: Target, sim: SimulatorServer) -> dict[str, Any]:
    """The data guarantees after the run, by SQL, and the paid calls never stored."""
    engine = create_engine(target.url)
    with engine.connect() as conn:
        found = {name: int(conn.execute(text(sql)).scalar_one()) for name, sql in CHECKS.items()}
    engine.dispose()
    paid, undelivered = sim.paid_calls
    never_stored = paid - found["stored_calls"]
    return {
        **found,
        "paid_calls": paid,
        "paid_calls_never_stored": never_stored,
        "paid_calls_never_stored_fraction": never_stored / paid if paid else 0.0,
        "answered_to_a_killed_client": undelivered,
        "delivered_calls_never_stored": never_stored - undelivered,
        "delivered_never_stored_fraction": (never_stored - undelivered) / paid if paid else 0.0,
    }


def main() -> None:
    """`python -m bench.soak [--small]`: the soak into bench/results.json ("soak": "full" or
    "small", the other kept) and bench/RESULTS.md."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    size = "small" if sys.argv[1:] == ["--small"] else "full"
    plans = run(small=size == "small")
    print("\n".join(report.soak_table(plans)))
    results = json.loads((report.HERE / "results.json").read_text())
    results.setdefault("soak", {})[size] = {"date": time.strftime("%Y-%m-%d"), "plans": plans}
    report.write(results)


if __name__ == "__main__":
    main()
