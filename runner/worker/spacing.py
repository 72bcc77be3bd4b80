"""Spacing a worker process's call starts by what a job costs it (issue 11).

A worker's jobs are coroutines on one event loop, which steps every ready task once per turn:
when a burst of answers arrives (1,024 calls started together come back together at a constant
latency), each answer waits for the whole burst to be processed, and so do the calls that
replace them, which start together again. The burst never spreads: at 1,024 x 4 s the loop lagged
up to a second on every round and calls took 4.3 s for a 4.0 s answer (bench/ item 3).

So a process starts its calls no closer together than the CPU time one job costs it (measured:
the process's CPU per finished job, averaged). That is the fastest it can finish jobs anyway, so
the spacing costs no throughput in a steady state; a burst of starts is spread over the time the
process needs to handle their answers, and the answers come back as spread. It also keeps a
process's starts from landing in one instant at a provider, whose limits may be enforced over
windows shorter than the minute ("60,000 requests/minute may be enforced as 1,000
requests/second": OpenAI, "Rate limits").
"""

from __future__ import annotations

import asyncio
import time

INITIAL_SPACING_S = 0.002  # before the first measure: 500 starts/s per process
MIN_SPACING_S = 0.0002  # 5,000 starts/s: no-op jobs are not held back
MAX_SPACING_S = 0.01  # 100 starts/s: a slow measure never starves a process
MEASURE_EVERY_S = 0.5  # how often the CPU per job is measured
WEIGHT = 0.5  # of a new measure in the running average


class StartSpacing:
    """When this process's next call may start: `wait` runs on the event loop; `measure` on any
    thread (the claim loop calls it each turn, with the jobs that ended since its last turn)."""

    def __init__(self) -> None:
        self.spacing_s = INITIAL_SPACING_S  # seconds between two starts
        self._next = 0.0  # time.monotonic() of the next free start
        self._finished = 0  # jobs finished since the process started
        self._last_measure: tuple[float, float, int] | None = None  # (monotonic, CPU, finished)

    async def wait(self) -> None:
        """Take the next start place and sleep until it comes (now, when the process is not
        starting calls faster than its spacing)."""
        now = time.monotonic()
        at = max(now, self._next)
        self._next = at + self.spacing_s
        if at > now:
            await asyncio.sleep(at - now)

    def measure(self, ended: int) -> None:
        """Count `ended` more finished jobs, and update the spacing from the process's CPU
        seconds per job finished since the last measure: at most every MEASURE_EVERY_S (the
        CPU clock is a system call, read only then), not while no job finished. The first job's
        end only starts the measure: the CPU before it (start-up, the first calls' starts) would
        count against a handful of jobs."""
        self._finished += ended
        finished, now = self._finished, time.monotonic()
        if self._last_measure is None:
            if finished > 0:
                self._last_measure = (now, time.process_time(), finished)
            return
        then, cpu_then, finished_then = self._last_measure
        if now - then < MEASURE_EVERY_S or finished <= finished_then:
            return
        cpu = time.process_time()
        self._last_measure = (now, cpu, finished)
        per_job = (cpu - cpu_then) / (finished - finished_then)
        average = WEIGHT * per_job + (1 - WEIGHT) * self.spacing_s
        self.spacing_s = min(max(average, MIN_SPACING_S), MAX_SPACING_S)
