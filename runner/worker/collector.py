"""CPython's cyclic garbage collector, set for a worker that holds hundreds of calls in flight
(issue 11).

At its default threshold (a young-generation pass every 700 net container allocations) the
collector ran ~410 passes per worker process for 4,000 jobs at 1,024 in flight x 4 s, 37 of
them of the middle and 3 of the oldest generation, each walking the jobs in flight and every
module object imported: 0.9-1.0 s of a worker's 8.9-10 s of CPU by `gc.callbacks`, and the runner
used 2.0-2.7 ms of CPU per job against 1.6-1.95 ms with the settings below (bench/ item 3, A/B on
one machine, 2026-12-07). A job's request build and answer parse allocate thousands of objects
and free them soon after; the default threshold collected in the middle of each such burst.

`gc.freeze()` once the worker has imported and built everything it runs with moves those objects
to a permanent generation that no collection walks (the gc module's docs: "to speed up
collection"). Cyclic garbage is still found, later: at a worker's exit after 4,000 jobs a full
collection freed ~2,100 objects (425 at the default threshold), and peak RSS was the same.
"""

from __future__ import annotations

import gc

# First generation's threshold in net container allocations; the older two keep CPython's x10.
YOUNG_THRESHOLD = 20_000


_at_tune: list[int] = [0, 0, 0]  # collections per generation before tune()


def tune() -> None:
    """Freeze what is alive now and raise the young generation's threshold to YOUNG_THRESHOLD.
    Call once, after start-up and before the first claim."""
    _at_tune[:] = _collections()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, oldest)


def stats() -> dict[str, int]:
    """Collections per generation since tune() (start-up's imports run hundreds) and the frozen
    object count: {"gc_young": n, "gc_middle": n, "gc_oldest": n, "gc_frozen": n}."""
    young, middle, oldest = (now - then for now, then in zip(_collections(), _at_tune, strict=True))
    return {
        "gc_young": young,
        "gc_middle": middle,
        "gc_oldest": oldest,
        "gc_frozen": gc.get_freeze_count(),
    }


def _collections() -> list[int]:
    return [generation["collections"] for generation in gc.get_stats()]
