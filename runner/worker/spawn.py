"""What the supervisor and its worker processes share across `spawn`: the stop flag, the spec a
worker starts from, and the entry point.

Kept apart from `process` so the supervisor never imports the worker's stack (openai, the model
client, extraction): about 2 s of CPU that only the worker processes need.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from typing import Any

STOP_POLL_SECONDS = 0.1  # how soon a waiting claim loop sees the supervisor's stop


class StopFlag:
    """The supervisor's "stop claiming" flag, shared with its worker processes: one byte of shared
    memory and no lock. multiprocessing.Event is not safe here: a worker SIGKILLed while inside
    Event.wait or is_set leaves its semaphores held, and the supervisor's set() (or every other
    worker's is_set()) then blocks forever (found by the worker-SIGKILL test, case C6)."""

    def __init__(self, ctx: BaseContext) -> None:
        self._flag = ctx.RawValue("b", 0)

    def set(self) -> None:
        self._flag.value = 1

    def is_set(self) -> bool:
        return bool(self._flag.value)

    def wait(self, timeout: float) -> bool:
        """Poll until set or `timeout` seconds pass; whether it is set."""
        deadline = time.monotonic() + timeout
        while not self.is_set() and time.monotonic() < deadline:
            time.sleep(min(STOP_POLL_SECONDS, max(deadline - time.monotonic(), 0)))
        return self.is_set()


@dataclass(frozen=True)
class WorkerSpec:
    """What the supervisor hands a worker process (plain, picklable data): its settings, its
    runner, its slot, the supervisor's pid (a worker whose parent is another process from its
    first instruction on is an orphan: issue 12) and the nonce of its worker id."""

    settings: dict[str, Any]
    runner_id: str
    index: int
    supervisor_pid: int = 0  # 0: not checked (tools and benchmarks that start workers alone)
    nonce: str = ""

    def worker_id(self, pid: int) -> str:
        """The id the worker with `pid` claims under (`host:pid:nonce`), known to both sides:
        the supervisor takes back a dead worker's jobs by it."""
        return f"{socket.gethostname()}:{pid}:{self.nonce}"


def worker_entry(spec: WorkerSpec, stop: StopFlag) -> None:
    """The target of a spawned worker process: imports the worker stack there, then runs it."""
    from runner.worker.process import worker_main

    worker_main(spec, stop)
