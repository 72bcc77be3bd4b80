"""A worker process: claims jobs in batches and runs each as a coroutine on one event loop
(DESIGN.md, "Runner"; issue 11): at most C model calls at once (`concurrency`), plus a few
prefetched jobs (`prefetch`).

Its threads, whatever C is: the claim loop (main thread: the group commit's transactions), the
event loop (every job and model call), one database thread for the jobs' own short statements,
the heartbeat and a stop watch. Its database connections: two (the claim loop's, and one shared
by the heartbeat and the database thread).

Started by the supervisor with the `spawn` method; it builds its own engine and SDK clients after
start (case C4) and receives only plain data: a settings dict and ids.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from types import FrameType
from typing import Any, TypeVar

from db import queue, workers
from db.budgets import BudgetPolicy
from db.engine import make_engine
from db.errors import DatabaseUnavailable
from db.types import ClaimedJob
from runner.llm.client import ModelClient
from runner.logs import configure_logging
from runner.settings import Settings
from runner.worker import collector
from runner.worker.catalog_cache import CatalogCache
from runner.worker.group_commit import MAX_BATCH, GroupCommit
from runner.worker.jobs import JobContext, JobOutcome, run_job
from runner.worker.learned import LearnedLimits
from runner.worker.spacing import StartSpacing
from runner.worker.spawn import STOP_POLL_SECONDS, StopFlag, WorkerSpec

log = logging.getLogger(__name__)
T = TypeVar("T")


# A stopping worker retries its last writes (outcomes, jobs handed back, its registry row) this
# long while the database is away (issue 12: the drain raised and left all of it to the lease);
# the supervisor waits grace_seconds + 15 s for it.
BOOKKEEPING_SECONDS = 10.0
BOOKKEEPING_RETRY_SECONDS = 0.5

# PostgreSQL's commit_delay / commit_siblings, for the group commit: with at least
# COMMIT_SIBLINGS model calls in flight (each to hand over an outcome soon), a turn with fewer
# than MAX_BATCH outcomes waiting first waits COMMIT_DELAY_S for more. Answers arriving one by
# one (real, spread latencies) were otherwise each written and claimed for in a transaction of
# their own: at 1,024 in flight, 4.2 ms of runner CPU per job with no delay, 3.5 ms with 20 ms,
# 2.8 ms with 100 ms; 1.9 ms when the answers arrive in bursts (bench/ item 3). The delay holds
# no call slot: a job leaves its place when it hands its outcome over.
COMMIT_SIBLINGS = 16
COMMIT_DELAY_S = 0.1


def prefetch(concurrency: int) -> int:
    """Jobs a process holds beyond its C concurrent model calls: a job whose call ended waits
    for the claim loop to commit its answer (tens of ms on a busy machine) while a prefetched job
    already takes its call slot. 500 ms calls x 64 slots: 86% -> 90% of the ideal (bench/)."""
    return max(2, concurrency // 4)


@dataclass(eq=False)
class HeldJob:
    """A claimed job this process holds, and its coroutine's task on the event loop. The claim
    loop creates it; `task` and `done` are set on the loop thread (a task per job started in
    one hand-over per claim, not a thread-safe future per job: their locks were a twentieth of a
    worker's CPU at 1,024 in flight, bench/ item 3)."""

    job: ClaimedJob
    task: asyncio.Task[JobOutcome] | None = None
    done: bool = False  # its task has ended (returned, raised or was cancelled)
    handed_back: bool = False  # cancelled, waiting for a call slot, to go back to the queue

    def unfinished(self) -> bool:
        """Whether the job is held but not run to an outcome: still running past the grace
        period, cancelled before it started, or handed back uncalled."""
        task = self.task
        if not self.done or task is None or task.cancelled():
            return True
        return task.exception() is None and task.result() is JobOutcome.NOT_STARTED


def _cancelled(held: HeldJob) -> bool:
    return held.task is not None and held.task.cancelled()


def cancel_tasks(held: list[HeldJob]) -> None:
    """Cancel the held jobs' tasks (on the event loop)."""
    for h in held:
        if h.task is not None:
            h.task.cancel()


def worker_main(spec: WorkerSpec, stop: StopFlag) -> None:
    """Entry point of a worker process; `stop` is the supervisor's StopFlag."""
    settings = Settings.model_validate(spec.settings)
    configure_logging(settings)
    worker = Worker(settings, spec, stop)
    signal.signal(signal.SIGTERM, worker.on_signal)
    signal.signal(signal.SIGINT, worker.on_signal)
    worker.run()


class Worker:
    """Claim -> run -> record loop of one process, with a heartbeat thread for its leases."""

    def __init__(self, settings: Settings, spec: WorkerSpec, shared_stop: StopFlag) -> None:
        self.settings = settings
        if not spec.nonce:
            spec = replace(spec, nonce=uuid.uuid4().hex[:6])
        self.id = spec.worker_id(os.getpid())
        self.spec = spec
        self._shared_stop = shared_stop
        self._stop = threading.Event()
        # The supervisor's pid from the spawn arguments: os.getppid() read here, seconds after
        # the spawn, would already be init's if the supervisor died in between (issue 12).
        self._parent = spec.supervisor_pid or os.getppid()
        self._signals = 0
        self.capacity = settings.concurrency + prefetch(settings.concurrency)  # jobs held
        self._dry = False  # the last claim found fewer due jobs than it asked for
        self._to_release: list[tuple[int, int]] = []  # attempts handed back, not released yet
        # One connection each, whatever the concurrency: the claim loop's, and the heartbeat's
        # shared with the jobs' database thread (pacing, the model gate, the catalog).
        url = settings.database_url
        self.engine = make_engine(url, pool_size=1, max_overflow=0)
        self.control = make_engine(url, pool_size=1, max_overflow=0)
        self._db = ThreadPoolExecutor(1, thread_name_prefix="job-db")
        self._wake = threading.Event()  # a job ended or handed over its outcome, or stop
        self.outcomes = GroupCommit(
            self.engine,
            self._wake,
            BudgetPolicy(settings.daily_budget_usd, settings.default_max_tokens),
            executor=self._db,
        )
        self._draining = threading.Event()
        self.spacing = StartSpacing()
        self.ctx = JobContext(
            settings,
            self.engine,
            ModelClient(settings),
            CatalogCache(self.control),
            self.outcomes,
            asyncio.Semaphore(settings.concurrency),
            self._draining,
            LearnedLimits(self.control),
            control_engine=self.control,
            db_executor=self._db,
            spacing=self.spacing,
        )
        # By (job id, attempt): a worker woken from a freeze may claim again a job whose first
        # attempt it still runs (the reaper took it back meanwhile); both are held until they end
        self.in_flight: dict[tuple[int, int], HeldJob] = {}
        self._ended: deque[HeldJob] = deque()  # appended on the loop, taken by the claim loop
        self._lock = threading.Lock()  # in_flight: changed by the claim loop, read by others

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        """First SIGTERM/SIGINT: stop claiming and drain; second: exit at once (leases expire)."""
        # Only a counter: a lock taken in a signal handler can deadlock the interrupted thread.
        self._signals += 1
        if self._signals > 1:
            os._exit(1)

    def stopping(self) -> bool:
        return (
            self._signals > 0 or self._shared_stop.is_set() or os.getppid() != self._parent
        )  # the supervisor died: do not run orphaned

    def run(self) -> None:
        workers.register_worker(
            self.engine,
            workers.WorkerInfo(
                self.id,
                self.spec.runner_id,
                socket.gethostname(),
                os.getpid(),
                self.settings.processes,
                self.settings.concurrency,
            ),
        )
        self.ctx.catalog.get()  # loaded before the first call: a later refresh may fail safely
        collector.tune()  # after start-up: what is alive now stays (issue 11)
        log.info("worker started", extra={"action": "worker_started", "worker_id": self.id})
        beat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        beat.start()
        threading.Thread(target=self._wake_on_stop, name="stop-watch", daemon=True).start()
        try:
            try:
                self._work()
            finally:  # also when the loop died: stop renewing leases (the reaper takes its
                # jobs back), and let no heartbeat hold a connection past the dispose below
                self._stop.set()
                beat.join(timeout=5)
            self._retrying("mark the worker stopped", workers.stop_worker, self.engine, self.id)
        finally:
            with self._lock:
                held = list(self.in_flight.values())  # handed back already: end their tasks
            self.ctx.client.call_soon(partial(cancel_tasks, held))
            self.ctx.client.close()
            self._db.shutdown(wait=True, cancel_futures=True)
            self.control.dispose()
            self.engine.dispose()
        log.info(
            "worker stopped",
            extra={"action": "worker_stopped", "worker_id": self.id, **collector.stats()},
        )

    def _work(self) -> None:
        try:
            self._claim_loop()
            self._drain()
        finally:  # also when the loop died: no job may wait for it forever
            self._draining.set()
            self.outcomes.close()

    def _wake_on_stop(self) -> None:
        while not self.stopping():
            time.sleep(STOP_POLL_SECONDS)
        self._wake.set()

    def _claim_loop(self) -> None:
        """Each turn, one transaction records the outcomes handed over since the last turn and
        claims jobs for every free slot; then wait until a job ends or `poll_interval` passes.
        A claim that found fewer due jobs than it asked for is not tried again for poll_interval
        (turns in between only write): each try builds and runs the whole claim statement, and a
        turn per answer in a batch's tail tried it hundreds of times a second (bench/ item 3)."""
        next_claim = 0.0  # time.monotonic() before which no claim is tried
        while not self.stopping():
            self._wake.clear()  # before the turn: a hand-over from now on ends the wait below
            self.spacing.measure(self._reap_done())
            self._release_handed_back()
            self._gather()
            # A job whose outcome is handed over leaves its place: claim for it now. No
            # prefetch while the queue is dry: a held job would wait for this process's slots.
            capacity = self.settings.concurrency if self._dry else self.capacity
            free = capacity - len(self.in_flight) + len(self.outcomes)
            claiming = free > 0 and time.monotonic() >= next_claim
            if claiming or self.outcomes:
                asked = time.monotonic()  # the claims' leases run from no later than this
                claimed = self._turn(free if claiming else None)
                if claiming and claimed is not None:
                    self._dry = len(claimed) < free
                    if self._dry:
                        next_claim = time.monotonic() + self.settings.poll_interval
                self._start(claimed or [], asked + self.settings.lease_seconds)
            if self._dry and self.ctx.awaiting_slot:  # also jobs prefetched before it ran dry
                self.ctx.client.call_soon(self._hand_back_waiting)
            if not self.outcomes:
                self._wake.wait(self.settings.poll_interval)

    def _start(self, claimed: list[ClaimedJob], lease_until: float) -> None:
        held = [HeldJob(job) for job in claimed]
        with self._lock:
            for h in held:
                self.ctx.leases[h.job.key] = lease_until
                self.in_flight[h.job.key] = h
        if held:
            self.ctx.client.call_soon(partial(self._spawn, held))

    def _spawn(self, held: list[HeldJob]) -> None:
        """Start the jobs' tasks (on the event loop)."""
        loop = asyncio.get_running_loop()
        for h in held:
            h.task = loop.create_task(run_job(self.ctx, h.job))
            h.task.add_done_callback(partial(self._on_ended, h))

    def _on_ended(self, held: HeldJob, _task: object) -> None:
        """A job's task ended (on the event loop): the claim loop reaps it next turn."""
        held.done = True
        self._ended.append(held)
        if not self._wake.is_set():
            self._wake.set()

    def _gather(self) -> None:
        """Let a busy worker's outcomes gather for one turn (COMMIT_DELAY_S). Counted by calls
        in flight, not jobs held: jobs whose outcomes are being written are held too, and
        counting them slowed no-op jobs threefold (bench/ item 2)."""
        if 0 < len(self.outcomes) < MAX_BATCH and len(self.ctx.calling) >= COMMIT_SIBLINGS:
            time.sleep(COMMIT_DELAY_S)

    def _turn(self, free: int | None) -> list[ClaimedJob] | None:
        """The group commit's turn, claiming up to `free` jobs (None: write only); the claimed
        jobs (None: the database is away)."""
        try:
            if free is None:
                self.outcomes.commit()
                return []
            return self.outcomes.commit_and_claim(
                self.id, free, lease_seconds=self.settings.lease_seconds
            )
        except DatabaseUnavailable as exc:  # the outcomes are kept for the next turn
            log.warning("claim failed, will retry: %s", exc, extra={"action": "claim_failed"})
            time.sleep(self.settings.poll_interval)  # no hot loop while it is away (drain too)
            return None

    def _hand_back_waiting(self) -> None:
        """On the loop, once a claim found the queue dry: cancel the held jobs still waiting for
        a call slot, for the claim loop to hand back as they end. At a batch's tail a process's
        prefetched jobs otherwise waited for its own slots, a round of answers away, while
        another process's slots were free (bench/ item 3: 43 jobs ended 2 s after the rest of a
        1,024 x 4 s batch). Jobs waiting for their pacing place or start spacing keep their slot."""
        with self._lock:
            waiting = [h for key in self.ctx.awaiting_slot if (h := self.in_flight.get(key))]
        for held in waiting:
            held.handed_back = True
        cancel_tasks(waiting)

    def _release_handed_back(self) -> None:
        """Hand the jobs cancelled by _hand_back_waiting (ended and reaped by now) back to the
        queue, uncalled and without spending an attempt; kept for the next turn while the
        database is away (their leases are no longer renewed: the reaper is the fallback). By
        attempt: a job the reaper took back meanwhile and this process claimed again is not
        released."""
        if not self._to_release:
            return
        try:
            released = queue.release_jobs(self.engine, self.id, self._to_release)
        except DatabaseUnavailable as exc:
            log.warning(
                "hand-back failed, will retry: %s", exc, extra={"action": "hand_back_failed"}
            )
            return
        log.info(
            "handed %d jobs waiting for a call slot back to the queue",
            released,
            extra={"action": "jobs_handed_back", "worker_id": self.id},
        )
        self._to_release = []

    def _reap_done(self) -> int:
        """Forget the jobs whose coroutine has ended, log one that raised; how many ended.
        Those cancelled to be handed back wait in _to_release, no longer held. A released job
        claimed again gets its (id, attempt) again: an entry is forgotten only if it is still
        this ended job's, not the new claim's."""
        ended = [self._ended.popleft() for _ in range(len(self._ended))]
        with self._lock:
            for held in ended:
                if self.in_flight.get(held.job.key) is held:
                    del self.in_flight[held.job.key]
                    self.ctx.leases.pop(held.job.key, None)
        self._to_release += [h.job.key for h in ended if h.handed_back and _cancelled(h)]
        for held in ended:
            task = held.task
            if task is not None and not task.cancelled() and (exc := task.exception()):
                log.error("job raised", exc_info=exc, extra={"action": "job_crashed"})
        return len(ended)

    def _drain(self) -> None:
        """Start no more model calls; let the running ones finish within the grace period (still
        recording their outcomes), then hand back the rest and the prefetched jobs."""
        self._draining.set()
        # On the loop, after the flag: a job not calling by then never will (run_job checks the
        # flag as it starts its call), so cancelling it stops no call in flight.
        self.ctx.client.call_soon(self._cancel_uncalled)
        deadline = time.monotonic() + self.settings.grace_seconds
        while self._running() and time.monotonic() < deadline:
            self._wake.clear()
            if self.outcomes:
                self._turn(None)
            else:  # a hand-over or a job's end wakes it
                self._wake.wait(
                    max(min(self.settings.poll_interval, deadline - time.monotonic()), 0)
                )
        # Outcomes handed over by now are saved, not handed back and lost: also through a blip
        self.outcomes.close(retry_seconds=BOOKKEEPING_SECONDS)
        with self._lock:
            back = [key for key, held in self.in_flight.items() if held.unfinished()]
        back += self._to_release  # handed back at the tail, not released yet
        if back:
            released = self._retrying(
                "hand back unfinished jobs", queue.release_jobs, self.engine, self.id, back
            )
            if released is None:
                return
            log.warning(
                "handed %d unfinished jobs back to the queue",
                released,
                extra={"action": "jobs_released", "worker_id": self.id},
            )

    def _retrying(self, what: str, fn: Callable[..., T], /, *args: Any) -> T | None:
        """`fn(*args)`, retried while the database is away, for BOOKKEEPING_SECONDS; None when
        it stayed away (the leases then expire and the reaper takes the jobs back)."""
        deadline = time.monotonic() + BOOKKEEPING_SECONDS
        while True:
            try:
                return fn(*args)
            except DatabaseUnavailable as exc:
                if time.monotonic() >= deadline:
                    log.error(
                        "could not %s, database away; the leases will expire: %s",
                        what,
                        exc,
                        extra={"action": "shutdown_bookkeeping_failed", "worker_id": self.id},
                    )
                    return None
                time.sleep(BOOKKEEPING_RETRY_SECONDS)

    def _cancel_uncalled(self) -> None:
        """Cancel the jobs that have not started their call (prefetched, waiting for a slot or a
        pacing place): they are handed back. Runs on the event loop."""
        with self._lock:
            uncalled = [h for h in self.in_flight.values() if h.job.key not in self.ctx.calling]
        cancel_tasks(uncalled)

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_interval):
            try:
                self._heartbeat()
            except DatabaseUnavailable as exc:
                log.warning("heartbeat failed: %s", exc, extra={"action": "heartbeat_failed"})

    def _heartbeat(self) -> None:
        running = self._running_held()
        asked = time.monotonic()
        held = queue.heartbeat(
            self.control, self.id, list(running), lease_seconds=self.settings.lease_seconds
        )
        leases = self.ctx.leases
        for key in held:  # assignments of floats: safe beside the loop thread's reads
            if key in leases:  # not an attempt the claim loop has just forgotten
                leases[key] = asked + self.settings.lease_seconds
        # Lost: the same claim, still running. One that ended since the snapshot left
        # 'processing' itself; one handed back and claimed again under the same key is a new
        # claim the statement did not see.
        with self._lock:
            lost = [
                key
                for key in running.keys() - held
                if self.in_flight.get(key) is running[key] and not running[key].done
            ]
            for key in lost:
                leases[key] = 0.0  # not called if it has not started its call
        for job_id, attempt in lost:
            log.warning(
                "lease lost (cancelled or taken over)",
                extra={"action": "lease_lost", "job_id": job_id, "attempt": attempt},
            )
        workers.touch_worker(self.control, self.id, len(running))

    def _running(self) -> list[tuple[int, int]]:
        """(job id, attempt) of the attempts whose coroutine has not returned yet (a finished
        one is still in in_flight until the claim loop reaps it)."""
        return list(self._running_held())

    def _running_held(self) -> dict[tuple[int, int], HeldJob]:
        with self._lock:
            return {key: held for key, held in self.in_flight.items() if not held.done}
