"""`python -m bench.profile`: pyinstrument over the no-op claim-and-complete path, one thread.

Claims CLAIM_LIMIT jobs at a time and completes each with the production writes, as a worker
does, and prints where the time goes (the issue 4 profile; see bench/RESULTS.md).
"""

from __future__ import annotations

import sys

from pyinstrument import Profiler

from bench import throughput
from bench.databases import fresh_target
from db import queue, results

CLAIM_LIMIT = 8
ROUNDS = 300


def main(backend: str = "postgresql") -> None:
    with fresh_target(backend, "profile") as target:
        throughput.enqueue_jobs(target)
        engine = target.engine()
        profiler = Profiler(interval=0.0005)
        with profiler:
            for _ in range(ROUNDS):
                for job in queue.claim_jobs(engine, "bench:profile", CLAIM_LIMIT,
                                            lease_seconds=60):
                    results.complete_job(engine, job, throughput.NOOP_ANSWER, None)
        engine.dispose()
    print(profiler.output_text(show_all=False, color=False))


if __name__ == "__main__":
    main(*sys.argv[1:])
