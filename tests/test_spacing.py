"""A worker's call starts spaced by its CPU per job (runner.worker.spacing, issue 11)."""

from __future__ import annotations

import asyncio
import time

import pytest

from runner.worker import spacing
from runner.worker.spacing import StartSpacing


class _CpuClock:
    """The process CPU clock the spacing reads, advanced by the test: the pytest worker's other
    threads (a shared simulator's) would otherwise add their CPU to the measure."""

    def __init__(self) -> None:
        self.seconds = 100.0

    def __call__(self) -> float:
        return self.seconds


def test_a_burst_of_starts_is_spread_by_the_spacing() -> None:
    """Five starts asked at once go out one spacing apart. Measured from the burst's start: a
    gap between two releases can shrink when a busy machine delays the earlier one, but the
    k-th start can never come before k spacings have passed."""
    starts = StartSpacing()
    starts.spacing_s = 0.05

    async def burst() -> tuple[float, list[float]]:
        released: list[float] = []

        async def one() -> None:
            await starts.wait()
            released.append(time.monotonic())

        asked = time.monotonic()
        await asyncio.gather(*(one() for _ in range(5)))
        return asked, released

    asked, released = asyncio.run(burst())
    after = [at - asked for at in sorted(released)]
    assert len(released) == 5
    assert all(offset >= 0.05 * k - 0.001 for k, offset in enumerate(after)), after
    assert after[-1] < 10.0  # none held for ever


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
    cpu = _CpuClock()
    monkeypatch.setattr(time, "process_time", cpu)
    starts = StartSpacing()
    cpu.seconds += 0.05
    starts.measure(0)  # no job finished: nothing to measure
    starts.measure(10)  # the first ends start the measure; the start-up CPU is not counted
    assert starts.spacing_s == spacing.INITIAL_SPACING_S
    cpu.seconds += 0.04
    starts.measure(10)  # ~4 ms of CPU per job over the last 10
    assert 0.003 <= starts.spacing_s <= 0.0055
    cpu.seconds += 0.2
    starts.measure(1)  # 200 ms for one job: held at the most
    assert starts.spacing_s == spacing.MAX_SPACING_S
    starts.measure(0)  # no job finished since: unchanged
    assert starts.spacing_s == spacing.MAX_SPACING_S
