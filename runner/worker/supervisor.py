"""`promptbatch run`: the supervisor process (DESIGN.md, "Runner process model").

It owns a table of worker processes (spawned, restarted when they die), the scheduler thread, the
reaper, and shutdown: the first SIGTERM/SIGINT stops claiming and lets in-flight jobs finish within
the grace period; a second one exits at once (leases then expire and the reaper hands jobs back).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.process import BaseProcess
from types import FrameType

from db import budgets, insights, queue, workers
from db.engine import Engine
from db.errors import DatabaseUnavailable
from db.types import EnqueueResult, JobStatus
from runner.settings import Settings
from runner.worker.progress import ProgressReporter
from runner.worker.scheduler import BatchScheduler, utc_batch_key
from runner.worker.spawn import StopFlag, WorkerSpec, worker_entry

log = logging.getLogger(__name__)

TICK_SECONDS = 0.5
EXIT_OK, EXIT_FAILED_JOBS, EXIT_SCHEDULER_DIED, EXIT_INTERRUPTED = 0, 1, 3, 130


@dataclass
class Child:
    index: int
    process: BaseProcess
    spec: WorkerSpec
    restarts: int = 0

    @property
    def worker_id(self) -> str | None:
        pid = self.process.pid
        return self.spec.worker_id(pid) if pid is not None else None


@dataclass
class Supervisor:
    """Runs P worker processes x C calls in flight until stopped (or, with drain, until nothing
    is due)."""

    settings: Settings
    engine: Engine
    drain: bool = False
    progress: bool = True
    runner_id: str = field(default_factory=lambda: f"{socket.gethostname()}:{uuid.uuid4().hex[:8]}")

    def __post_init__(self) -> None:
        self._ctx = mp.get_context("spawn")
        self._stop = StopFlag(self._ctx)
        self._signals = 0
        self._signum = 0
        self._children: list[Child] = []
        self._scheduler = BatchScheduler(
            self._enqueue,
            self.settings.batch_time,
            catch_up_days=self.settings.catch_up_days,
            on_missed=lambda keys: queue.record_missed_batches(self.engine, keys),
        )
        self._sched_thread: threading.Thread | None = None
        self._next_reap = 0.0
        self._drained_batches: set[str] = set()  # batch keys a drain works on
        # Dead workers whose jobs could not be taken back yet (the database away): retried each
        # tick, so a worker killed during a database restart is rescued when it is back, not
        # at lease expiry (bench/soak.py: 10 s, the lease, before this)
        self._unrescued: dict[str, str] = {}  # worker id -> why
        self._rescue_warned: set[str] = set()

    # --- lifecycle ---------------------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped; returns the process exit code."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self._catch_up()
        if self.drain:  # the exit code covers every batch this drain works on (issue 12)
            self._drained_batches.update(insights.batches_with_work(self.engine))
        if not self.drain:
            self._sched_thread = threading.Thread(
                target=self._scheduler_loop, name="scheduler", daemon=True
            )
            self._sched_thread.start()
        self._children = [self._spawn(i) for i in range(self.settings.processes)]
        log.info(
            "runner started: %d processes x %d calls in flight",
            self.settings.processes,
            self.settings.concurrency,
            extra={"action": "runner_started", "runner_id": self.runner_id},
        )
        try:
            code = self._loop()
            self._shutdown()
        except SystemExit:  # raised by a second signal's handler, logged here, outside it
            log.warning("second signal: exited now", extra={"action": "runner_killed"})
            raise
        return code

    def _loop(self) -> int:
        reporter = (
            ProgressReporter(self.engine, utc_batch_key(), as_log=self.settings.log_json)
            if self.progress
            else None
        )
        while not self._signals:
            if self._sched_thread and not self._sched_thread.is_alive():
                log.error("scheduler thread died; exiting", extra={"action": "scheduler_died"})
                return EXIT_SCHEDULER_DIED
            self._respawn_dead()
            self._rescue_pending()
            self._maintain()
            if reporter:
                reporter.maybe_report()
            if self.drain and self._drained():
                return self._drain_exit_code()
            time.sleep(TICK_SECONDS)
        log.info(
            "signal %d: finishing in-flight jobs (grace %.0fs)",
            self._signum,
            self.settings.grace_seconds,
            extra={"action": "runner_stopping"},
        )
        return EXIT_OK  # a graceful stop is a clean exit (DESIGN.md)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # No lock may be taken here (logging, Event.set): the thread the handler interrupted may
        # hold it. A counter and the signal number; the loop sees them within one tick and logs.
        self._signals += 1
        self._signum = signum
        if self._signals > 1:
            for child in self._children:
                if child.process.is_alive():
                    child.process.kill()
            sys.exit(EXIT_INTERRUPTED)

    def _shutdown(self) -> None:
        self._stop.set()
        deadline = time.monotonic() + self.settings.grace_seconds + 15
        for child in self._children:
            child.process.join(max(deadline - time.monotonic(), 0.1))
            if child.process.is_alive():
                log.error(
                    "worker %d did not stop; killing it",
                    child.index,
                    extra={"action": "worker_killed"},
                )
                child.process.kill()
                child.process.join(5)
        log.info("runner stopped", extra={"action": "runner_stopped", "runner_id": self.runner_id})

    # --- children ----------------------------------------------------------------------------

    def _spawn(self, index: int) -> Child:
        spec = WorkerSpec(
            self.settings.model_dump(),
            self.runner_id,
            index,
            supervisor_pid=os.getpid(),
            nonce=uuid.uuid4().hex[:6],
        )
        process = self._ctx.Process(
            target=worker_entry,
            args=(spec, self._stop),
            name=f"promptbatch-worker-{index}",
            daemon=False,
        )
        process.start()
        return Child(index, process, spec)

    def _respawn_dead(self) -> None:
        for slot, child in enumerate(self._children):
            if child.process.is_alive() or self._signals:
                continue
            log.error(
                "worker %d (pid %s) died with exit code %s; starting a new one",
                child.index,
                child.process.pid,
                child.process.exitcode,
                extra={"action": "worker_died", "exitcode": child.process.exitcode},
            )
            child.process.join(0)
            if child.worker_id is not None:
                self._unrescued[child.worker_id] = f"died (exit code {child.process.exitcode})"
            fresh = self._spawn(child.index)
            fresh.restarts = child.restarts + 1
            self._children[slot] = fresh

    def _rescue_pending(self) -> None:
        """Take the dead workers' jobs back now, not at lease expiry; one that fails (the
        database away) is tried again next tick. The lease stays the safety net (a dead host)."""
        for worker_id, why in list(self._unrescued.items()):
            try:
                rescued = queue.rescue_worker(
                    self.engine,
                    worker_id,
                    why=why,
                    max_interruptions=self.settings.max_interruptions,
                )
                workers.stop_worker(self.engine, worker_id)
            except DatabaseUnavailable as exc:
                if worker_id not in self._rescue_warned:  # once per worker, not every tick
                    self._rescue_warned.add(worker_id)
                    log.warning(
                        "could not take back the dead worker's jobs yet, will retry: %s",
                        exc,
                        extra={"action": "rescue_failed", "worker_id": worker_id},
                    )
                return  # the database is away: the rest wait for the next tick too
            del self._unrescued[worker_id]
            self._rescue_warned.discard(worker_id)
            if rescued:
                log.warning(
                    "took back %d jobs of dead worker %s",
                    len(rescued),
                    worker_id,
                    extra={"action": "jobs_rescued", "worker_id": worker_id, "count": len(rescued)},
                )

    # --- periodic work -----------------------------------------------------------------------

    def _maintain(self) -> None:
        """Reap expired leases and skip jobs of deactivated prompts/models, every reap_interval."""
        if time.monotonic() < self._next_reap:
            return
        self._next_reap = time.monotonic() + self.settings.reap_interval
        try:
            reaped = queue.reap_expired(
                self.engine, max_interruptions=self.settings.max_interruptions
            )
            for job_id, status in reaped:
                log.warning(
                    "lease expired: job %d is %s",
                    job_id,
                    status,
                    extra={"action": "job_reaped", "job_id": job_id, "status": status},
                )
            for model_id in budgets.resume_for_new_day(self.engine):
                log.info(
                    "model %d resumed: a new UTC day, a new budget",
                    model_id,
                    extra={"action": "model_resumed_budget", "model_id": model_id},
                )
            if late := queue.fail_past_deadline(self.engine):
                log.error(
                    "%d jobs not done by their batch deadline failed",
                    late,
                    extra={"action": "jobs_past_deadline", "count": late},
                )
            if skipped := queue.skip_inactive(self.engine):
                log.info(
                    "skipped %d jobs of deactivated prompts or models",
                    skipped,
                    extra={"action": "jobs_skipped", "count": skipped},
                )
        except DatabaseUnavailable as exc:
            log.warning(
                "maintenance failed, will retry: %s", exc, extra={"action": "maintenance_failed"}
            )

    def _enqueue(self, batch_key: str) -> EnqueueResult:
        return queue.enqueue_batch(
            self.engine,
            batch_key,
            max_attempts=self.settings.max_attempts,
            deadline_at=self.settings.batch_deadline(datetime.now(UTC)),
            actor=f"runner {self.runner_id}",
        )

    def _catch_up(self) -> None:
        self._scheduler.catch_up(insights.latest_batch_key(self.engine))

    def _scheduler_loop(self) -> None:
        try:
            while not self._stop.wait(1.0):
                self._scheduler.tick()
        except Exception:  # the thread ends; the supervisor sees it and exits non-zero (C3)
            log.critical(
                "scheduler thread crashed", exc_info=True, extra={"action": "scheduler_crashed"}
            )

    # --- drain -------------------------------------------------------------------------------

    def _drained(self) -> bool:
        horizon = self.settings.backoff_cap + 1
        try:
            return insights.pending_jobs(self.engine, due_within_seconds=horizon) == 0
        except DatabaseUnavailable as exc:
            log.warning("drain check failed: %s", exc, extra={"action": "drain_check_failed"})
            return False

    def _drain_exit_code(self) -> int:
        """EXIT_FAILED_JOBS when a batch this drain worked on (those with work at its start, and
        today's) has failed jobs or jobs left queued, else EXIT_OK; each batch is logged. It
        looked at today's batch only: a drain crossing midnight exited 0 over yesterday's
        failures (issue 12)."""
        code = EXIT_OK
        for key in sorted(self._drained_batches | {utc_batch_key()}):
            counts = insights.batch_overview(self.engine, key)
            unfinished = counts.get(JobStatus.FAILED) + counts.get(JobStatus.QUEUED)
            log.log(
                logging.WARNING if unfinished else logging.INFO,
                "drained batch %s: %s",
                key,
                counts.counts,
                extra={"action": "runner_drained", "batch_key": key},
            )
            if unfinished:
                code = EXIT_FAILED_JOBS
        return code
