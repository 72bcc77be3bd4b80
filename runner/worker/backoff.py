"""Retry delays: exponential backoff with full jitter (AWS Architecture Blog, "Exponential Backoff
And Jitter", 2015); a provider's Retry-After wins when it is longer."""

from __future__ import annotations

import random


def backoff_seconds(
    attempt: int,
    *,
    base: float,
    cap: float,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before attempt `attempt + 1`, given `attempt` (1 = the first try) failed.

    Full jitter: uniform in [0, min(cap, base * 2^(attempt-1))]. A Retry-After (seconds) longer than
    that is honoured as is, even past the cap: the provider said so.
    """
    ceiling = min(cap, base * 2 ** max(attempt - 1, 0))
    delay = (rng or random).uniform(0, ceiling)
    return max(delay, retry_after or 0.0)
