"""Timing a pool of workers that empties a queue: jobs/s between the first and the last completion
seen by polling how many jobs are left (so worker start-up is not counted, for any system)."""

from __future__ import annotations

import time
from collections.abc import Callable

POLL_SECONDS = 0.05


class DrainTimeout(RuntimeError):
    """The workers did not empty the queue in time."""


def time_drain(
    remaining: Callable[[], int], total: int, *, timeout: float, alive: Callable[[], bool]
) -> float:
    """Jobs per second from the first poll that sees a job done to the poll that sees none left.

    Raises DrainTimeout when jobs are still left after `timeout` seconds or once every worker
    (`alive` is false) has exited.
    """
    deadline = time.monotonic() + timeout
    first: tuple[float, int] | None = None
    while time.monotonic() < deadline and (alive() or remaining() == 0):
        left = remaining()
        now = time.perf_counter()
        if first is None and left < total:
            first = (now, left)
        if left == 0 and first is not None:
            return first[1] / (now - first[0]) if now > first[0] else float("inf")
        time.sleep(POLL_SECONDS)
    raise DrainTimeout(f"{remaining()} of {total} jobs left after {timeout:.0f} s")
