"""What a provider says about its rate limits in response headers.

OpenAI ("Rate limits" guide): `x-ratelimit-limit-requests` / `-tokens` (per minute),
`x-ratelimit-remaining-requests` / `-tokens`, `x-ratelimit-reset-requests` / `-tokens` as a
duration ("1s", "6m0s", "20ms"). OpenRouter (and others): `X-RateLimit-Limit`,
`X-RateLimit-Remaining`, `X-RateLimit-Reset` (epoch milliseconds). Header names are matched
case-insensitively, as the SDK's headers do.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

_DURATION = re.compile(
    r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+(?:\.\d+)?)ms)?"
)


@dataclass(frozen=True)
class RateLimits:
    """One response's limits: per-minute limits, what is left, and seconds until it resets
    (None: not said)."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float | None = None

    @property
    def empty(self) -> bool:
        return all(v is None for v in self.__dict__.values())

    def reset_seconds(self) -> float | None:
        """The longest reset of an exhausted limit (what a 429 without Retry-After waits for),
        else None."""
        waits = [
            reset
            for remaining, reset in (
                (self.remaining_requests, self.reset_requests_s),
                (self.remaining_tokens, self.reset_tokens_s),
            )
            if remaining is not None and remaining <= 0 and reset is not None
        ]
        return max(waits) if waits else None


def parse_rate_limits(headers: Mapping[str, str]) -> RateLimits | None:
    """The limits in `headers` (OpenAI's, else OpenRouter's), or None when there are none."""
    found = RateLimits(
        limit_requests=_int(headers.get("x-ratelimit-limit-requests")),
        remaining_requests=_int(headers.get("x-ratelimit-remaining-requests")),
        reset_requests_s=duration_seconds(headers.get("x-ratelimit-reset-requests")),
        limit_tokens=_int(headers.get("x-ratelimit-limit-tokens")),
        remaining_tokens=_int(headers.get("x-ratelimit-remaining-tokens")),
        reset_tokens_s=duration_seconds(headers.get("x-ratelimit-reset-tokens")),
    )
    if found.empty and headers.get("x-ratelimit-limit") is not None:
        found = RateLimits(
            limit_requests=None,  # OpenRouter's window is not said to be a minute
            remaining_requests=_int(headers.get("x-ratelimit-remaining")),
            reset_requests_s=_epoch_ms_from_now(headers.get("x-ratelimit-reset")),
        )
    return None if found.empty else found


def duration_seconds(text: str | None) -> float | None:
    """OpenAI's duration ("1s", "6m0s", "20ms", "1h2m3.5s") in seconds; None if unreadable."""
    if not text:
        return None
    match = _DURATION.fullmatch(text.strip())
    if match is None or not any(match.groups()):
        return None
    hours, minutes, seconds, millis = (float(g) if g else 0.0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds + millis / 1000


def _int(text: str | None) -> int | None:
    try:
        return int(float(text)) if text is not None else None
    except ValueError:
        return None


def _epoch_ms_from_now(text: str | None) -> float | None:
    stamp = _int(text)
    return None if stamp is None else max(stamp / 1000 - time.time(), 0.0)
