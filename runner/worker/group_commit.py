"""The group commit: the one writer of a worker process's job outcomes, successes and failures
alike. Idea from pgqueuer's batched acknowledgements and PostgreSQL's own group commit
(bench/RESULTS.md, item 2).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future

from db import results
from db.budgets import BudgetPolicy
from db.engine import Engine
from db.errors import DatabaseUnavailable
from db.types import ClaimedJob, Outcome, Recorded

log = logging.getLogger(__name__)

RETRY_SECONDS = 0.5  # between a closed group commit's tries of a lone write
MAX_BATCH = 64  # outcomes per transaction; bounds one statement's arrays and its lock set

# Where an outcome's write result goes: a thread's future (`record`), or a job coroutine's
# future on its event loop (`submit`), all of a batch's set in one hand-over to that loop.
_Done = Future[Recorded] | asyncio.Future[Recorded]
_Waiting = tuple[Outcome, _Done]


class GroupCommit:
    """Jobs hand their outcome over (`submit` from a coroutine, `record` from a thread) and wait
    until it is written; the worker's claim loop writes every outcome handed over since its last
    turn together with its next claim, in ONE transaction (`commit_and_claim`). A job's slot is
    never freed before its outcome is saved, so a crash loses nothing that was acknowledged;
    under load the writes batch themselves, and an idle worker writes each outcome at once, with
    no added wait.

    One outcome's states:

        handed over --turn--> written --commit--> acknowledged (its job gets its Recorded)
                                  |--the batch raised (one bad answer)--> rewritten alone
                                  '--the database is away--> kept for retry --next turn--> written
        handed over after the claim loop ended (close) --> rewritten alone, in its own thread

    "Rewritten alone" is one transaction per outcome: only the bad one fails (its thread gets
    the error). Without a claim loop (`wake` None: tests, tools) every outcome is written alone.
    """

    def __init__(
        self,
        engine: Engine,
        wake: threading.Event | None = None,
        budget: BudgetPolicy | None = None,
        executor: Executor | None = None,
    ) -> None:
        self._engine = engine
        self._executor = executor  # where `submit` writes alone off the event loop
        self._budget = budget  # the daily budgets every claim and spend is checked against
        self._wake = wake  # set on every hand-over, so the claim loop stops waiting
        self._lock = threading.Lock()
        self._waiting: deque[_Waiting] = deque()
        self._closed = wake is None
        self._retry_until = 0.0  # time.monotonic() until which a lone write retries (close)

    def record(self, outcome: Outcome) -> Recorded:
        """Hand `outcome` over and block until it is written (from a thread). Recorded.DROPPED when
        the worker no longer held the job (nothing was written). Raises what its lone write
        raised, e.g. DatabaseUnavailable."""
        done: Future[Recorded] = Future()
        return self._write_alone(outcome) if not self._hand_over(outcome, done) else done.result()

    async def submit(self, outcome: Outcome) -> Recorded:
        """`record` for a job coroutine: hand `outcome` over and await its write without blocking
        the event loop (a lone write runs on the executor). Returns and raises as `record`."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Recorded] = loop.create_future()
        if not self._hand_over(outcome, done):
            return await loop.run_in_executor(self._executor, self._write_alone, outcome)
        return await done

    def _hand_over(self, outcome: Outcome, done: _Done) -> bool:
        """Queue `outcome` for the claim loop's next turn and wake it; False once closed (the
        caller writes it alone)."""
        with self._lock:
            if self._closed:
                return False
            self._waiting.append((outcome, done))
        assert self._wake is not None
        self._wake.set()
        return True

    def commit_and_claim(
        self, worker_id: str, free: int, *, lease_seconds: float
    ) -> list[ClaimedJob]:
        """One claim-loop turn: write up to MAX_BATCH waiting outcomes and claim up to `free`
        jobs, in ONE transaction. The caller counts a job whose outcome is waiting as free
        already: after a burst of answers, the jobs for every slot they free are claimed in the
        first turn, not MAX_BATCH per turn as the writes go (bench/ item 3, 1,024 in flight).

        Returns the claimed jobs: none when the batch raised (each outcome is then rewritten
        alone). Raises DatabaseUnavailable when the database is away, the batch kept for the
        next turn.
        """
        batch = self._take(MAX_BATCH)
        if not batch and free < 1:
            return []
        outcomes = [outcome for outcome, _ in batch]
        return self._write(
            batch,
            lambda: results.write_outcomes_and_claim(
                self._engine,
                outcomes,
                worker_id,
                free,
                lease_seconds=lease_seconds,
                budget=self._budget,
            ),
        )

    def commit(self) -> None:
        """Write what is waiting and claim nothing (a draining worker's turn); raises as
        commit_and_claim."""
        if batch := self._take(MAX_BATCH):
            outcomes = [outcome for outcome, _ in batch]
            self._write(
                batch,
                lambda: (results.write_outcomes(self._engine, outcomes, budget=self._budget), []),
            )

    def _write(
        self,
        batch: list[_Waiting],
        transaction: Callable[[], tuple[list[Recorded], list[ClaimedJob]]],
    ) -> list[ClaimedJob]:
        """Run `transaction` (which writes `batch`'s outcomes) and hand each thread its result;
        the jobs it claimed."""
        try:
            recorded, claimed = transaction()
        except DatabaseUnavailable:
            self._keep(batch)
            raise
        except Exception:
            if not batch:
                raise
            log.warning(
                "group commit of %d outcomes failed; writing each alone",
                len(batch),
                exc_info=True,
                extra={"action": "group_commit_failed", "count": len(batch)},
            )
            self._write_each(batch)
            return []
        _settle([(done, result) for (_, done), result in zip(batch, recorded, strict=True)])
        return claimed

    def close(self, retry_seconds: float = 0.0) -> None:
        """The claim loop ends: write what is waiting, each alone; later outcomes are written
        alone by their own jobs. A lone write that finds the database away is retried for
        `retry_seconds` from now (a stopping worker keeps its paid answers through a blip:
        issue 12). Idempotent."""
        with self._lock:
            self._closed = True
            self._retry_until = max(self._retry_until, time.monotonic() + retry_seconds)
            batch = list(self._waiting)
            self._waiting.clear()
        self._write_each(batch)

    def __len__(self) -> int:
        return len(self._waiting)

    def _take(self, limit: int) -> list[_Waiting]:
        with self._lock:
            return [self._waiting.popleft() for _ in range(min(limit, len(self._waiting)))]

    def _keep(self, batch: list[_Waiting]) -> None:
        """Put a batch that could not reach the database back in front, to be written first next
        turn: a paid answer is kept while the database is away (its jobs keep waiting)."""
        with self._lock:
            self._waiting.extendleft(reversed(batch))

    def _write_alone(self, outcome: Outcome) -> Recorded:
        while True:
            try:
                return results.write_outcomes(self._engine, [outcome], budget=self._budget)[0]
            except DatabaseUnavailable as exc:
                if time.monotonic() >= self._retry_until:
                    raise
                log.warning(
                    "outcome not written, database away; retrying: %s",
                    exc,
                    extra={"action": "outcome_write_retry", "job_id": outcome.job.id},
                )
                time.sleep(RETRY_SECONDS)

    def _write_each(self, batch: list[_Waiting]) -> None:
        for outcome, done in batch:
            try:
                result: Recorded | BaseException = self._write_alone(outcome)
            except Exception as exc:  # handed to the job, which reports it
                result = exc
            _settle([(done, result)])


def _settle(results: list[tuple[_Done, Recorded | BaseException]]) -> None:
    """Give each waiting job its write's result (or error): a thread's future at once, the
    futures of an event loop in one call on that loop (from the claim loop's thread)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Done, Recorded | BaseException]]] = {}
    for done, result in results:
        if isinstance(done, asyncio.Future):
            by_loop.setdefault(done.get_loop(), []).append((done, result))
        else:
            _set(done, result)
    for loop, settled in by_loop.items():
        try:
            loop.call_soon_threadsafe(_set_all, settled)
        except RuntimeError:  # the loop is closed: its jobs are gone with it
            log.debug("event loop closed; %d outcomes written unawaited", len(settled))


def _set_all(settled: list[tuple[_Done, Recorded | BaseException]]) -> None:
    for done, result in settled:
        if not done.done():  # an awaiting job may have been cancelled
            _set(done, result)


def _set(done: _Done, result: Recorded | BaseException) -> None:
    if isinstance(result, BaseException):
        done.set_exception(result)
    else:
        done.set_result(result)
