"""A worker's call starts spaced by its CPU per job (runner.worker.spacing, issue 11)."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from runner.worker import spacing
from runner.worker.spacing import StartSpacing


def _burn(seconds: float) -> None:
    """Spend `seconds` of this process's CPU."""
    until = time.process_time() + seconds
    while time.process_time() < until:
        pass


def test_a_burst_of_starts_is_spread_by_the_spacing() -> None:
    starts = StartSpacing()
    starts.spacing_s = 0.05

    async def burst() -> list[float]:
        released: list[float] = []

        async def one() -> None:
            await starts.wait()
            released.append(time.monotonic())

        await asyncio.gather(*(one() for _ in range(5)))
        return released

    released = asyncio.run(burst())
    gaps = [later - earlier for earlier, later in itertools.pairwise(released)]
    assert len(released) == 5
    assert all(gap >= 0.045 for gap in gaps), gaps


def _suspends(starts: StartSpacing) -> bool:
    """Whether `starts.wait()` sleeps (steps the coroutine once, outside any loop)."""
    coro = starts.wait()
    try:
        coro.send(None)
    except StopIteration:
        return False
    except RuntimeError:  # asyncio.sleep found no running loop: it was about to sleep
        return True
    coro.close()
    return True


def test_a_start_after_a_quiet_spell_waits_for_nothing() -> None:
    starts = StartSpacing()
    starts.spacing_s = 0.02
    assert not _suspends(starts)  # the first start: its place is now
    time.sleep(0.03)  # longer than the spacing: the next place has passed
    assert not _suspends(starts)


def test_spacing_follows_the_cpu_per_finished_job(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spacing, "MEASURE_EVERY_S", 0.0)
    monkeypatch.setattr(spacing, "WEIGHT", 1.0)
    starts = StartSpacing()
    _burn(0.05)
    starts.measure(0)  # no job finished: nothing to measure
    starts.measure(10)  # the first ends start the measure; the start-up CPU is not counted
    assert starts.spacing_s == spacing.INITIAL_SPACING_S
    _burn(0.04)
    starts.measure(10)  # ~4 ms of CPU per job over the last 10
    assert 0.003 <= starts.spacing_s <= 0.0055
    _burn(0.2)
    starts.measure(1)  # 200 ms for one job: held at the most
    assert starts.spacing_s == spacing.MAX_SPACING_S
    starts.measure(0)  # no job finished since: unchanged
    assert starts.spacing_s == spacing.MAX_SPACING_S
