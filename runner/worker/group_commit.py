"""Group commit of job successes: job threads hand their success to the worker's claim loop, which
records every success waiting and claims their replacements in ONE transaction.

A job thread's `complete` call blocks until its own result is committed, so a job's slot is never
freed before its answer is saved (a crash loses nothing that was acknowledged). Under load the
writes batch themselves; an idle worker writes each success at once, with no added wait. Idea from
pgqueuer's batched acknowledgements and PostgreSQL's own group commit (bench/RESULTS.md, item 2).
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future

from db import results
from db.engine import Engine
from db.types import Completion

MAX_BATCH = 64  # successes per transaction; bounds one statement's arrays and its lock set

Pending = tuple[Completion, Future[bool]]


class PendingCompletions:
    """Successes waiting for the claim loop's next transaction (thread-safe)."""

    def __init__(self, engine: Engine, wake: threading.Event) -> None:
        self._engine = engine
        self._wake = wake  # set on every hand-over, so the claim loop stops waiting
        self._lock = threading.Lock()
        self._items: deque[Pending] = deque()
        self._closed = False

    def complete(self, completion: Completion) -> bool:
        """Hand `completion` over and block until it is committed (job threads).

        Returns False when the worker no longer held the job (nothing was written for it).
        Raises what the write raised, e.g. DatabaseUnavailable.
        """
        done: Future[bool] = Future()
        with self._lock:
            direct = self._closed
            if not direct:
                self._items.append((completion, done))
        if direct:  # the claim loop has ended: write it in this thread
            return results.complete_jobs(self._engine, [completion])[0]
        self._wake.set()
        return done.result()

    def close(self) -> None:
        """The claim loop ends: write what is waiting one by one; later calls write directly.
        Idempotent."""
        with self._lock:
            self._closed = True
        write_each(self._engine, self.take(len(self._items)))

    def take(self, limit: int = MAX_BATCH) -> list[Pending]:
        """Up to `limit` waiting successes, oldest first (the claim loop)."""
        with self._lock:
            return [self._items.popleft() for _ in range(min(limit, len(self._items)))]

    def put_back(self, batch: list[Pending]) -> None:
        """Return a batch whose write could not reach the database, to be written first next
        turn: a paid answer is kept while the database is away (its job threads keep waiting)."""
        with self._lock:
            self._items.extendleft(reversed(batch))

    def __len__(self) -> int:
        return len(self._items)


def resolve(batch: list[Pending], saved: list[bool]) -> None:
    """Wake the job threads of a committed batch with their own result."""
    for (_, done), ok in zip(batch, saved, strict=True):
        done.set_result(ok)


def write_each(engine: Engine, batch: list[Pending]) -> None:
    """Write each success in its own transaction, so one bad answer fails only its own job."""
    for completion, done in batch:
        try:
            done.set_result(results.complete_jobs(engine, [completion])[0])
        except Exception as exc:  # handed to the job thread, which reports it
            done.set_exception(exc)
