"""`python -m bench.profile`: pyinstrument over the no-op claim-and-complete path, one thread.

Runs the worker's turn as a busy worker does: one transaction records the CLAIM_LIMIT successes of
the previous turn and claims CLAIM_LIMIT more (db.results.write_outcomes_and_claim). Prints
where the time goes (the issue 4 profile; see bench/RESULTS.md).
"""

from __future__ import annotations

import sys

from pyinstrument import Profiler

from bench import throughput
from bench.databases import fresh_target
from db import results
from db.types import ClaimedJob, Completion

CLAIM_LIMIT = 8
ROUNDS = 300


def main(backend: str = "postgresql") -> None:
    with fresh_target(backend, "profile") as target:
        throughput.enqueue_jobs(target)
        engine = target.engine()
        profiler = Profiler(interval=0.0005)
        jobs: list[ClaimedJob] = []
        with profiler:
            for _ in range(ROUNDS):
                _, jobs = results.write_outcomes_and_claim(
                    engine,
                    [Completion(job, throughput.NOOP_ANSWER) for job in jobs],
                    "bench:profile",
                    CLAIM_LIMIT,
                    lease_seconds=60,
                )
        engine.dispose()
    print(profiler.output_text(show_all=False, color=False))


if __name__ == "__main__":
    main(*sys.argv[1:])
