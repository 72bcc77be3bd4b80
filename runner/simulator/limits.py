"""The simulated provider's own limits, as OpenAI's "Rate limits" guide describes them: requests
and tokens per minute as token buckets (capacity = the per-minute limit, refilled continuously),
tokens counted at admission as the prompt's estimate (characters / 4) plus max_tokens; a 429
with OpenAI's body and `x-ratelimit-*` headers (with Retry-After unless `no_retry_after`), credits
that run out (402 after `credits` USD) and a key revoked after `revoke_after` calls.

All of it is the simulator's alone, chosen by the model name's faults (`rpm=600,tpm=1000000`);
the runner never reads it. Every admitted request's time is kept for the benchmarks (the most
requests admitted in any 60 s window).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from runner.simulator.faults import Faults, Reply, error_reply, status_reply

DEFAULT_MAX_TOKENS = 4096  # counted for a request without max_tokens (the model's cap)
ADMITTED_KEPT = 200_000  # admission times kept per model for `max_in_window`


def duration_text(seconds: float) -> str:
    """OpenAI's reset format: "20ms", "1s", "6m0s", "1h2m3.5s"."""
    if seconds < 1:
        return f"{max(round(seconds * 1000), 1)}ms"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{secs:.3g}s" if secs != int(secs) else f"{int(secs)}s"
    if minutes or hours:
        text = f"{int(minutes)}m{text}"
    return f"{int(hours)}h{text}" if hours else text


@dataclass
class Bucket:
    """A token bucket holding up to `limit` units, refilled at limit/60 per second."""

    limit: float
    at: float  # time.monotonic() of the last refill
    level: float = field(init=False)

    def __post_init__(self) -> None:
        self.level = self.limit

    def refill(self, now: float) -> None:
        self.level = min(self.limit, self.level + max(now - self.at, 0) * self.limit / 60)
        self.at = max(now, self.at)

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` units are there (0: now). A request larger than the whole
        bucket waits for a full bucket."""
        missing = min(amount, self.limit) - self.level
        return max(missing, 0) * 60 / self.limit

    def reset_seconds(self) -> float:
        """Seconds until the bucket is full again (OpenAI's x-ratelimit-reset-*)."""
        return (self.limit - self.level) * 60 / self.limit


@dataclass
class ModelState:
    requests: Bucket | None
    tokens: Bucket | None
    calls: int = 0  # admitted so far
    spent_usd: float = 0.0
    admitted: deque[float] = field(default_factory=lambda: deque(maxlen=ADMITTED_KEPT))
    rejected: int = 0  # 429s for a limit
    refused: int = 0  # 401s of the revoked key and 402s of spent credits


class ProviderLimits:
    """Per-model buckets, credits and revocation, shared by the server's handler threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[str, ModelState] = {}

    def admit(
        self, model: str, faults: Faults, prompt_chars: int, max_tokens: int | None
    ) -> Reply | None:
        """None when the request may run (its units taken), else the refusal to send."""
        if not (faults.rpm or faults.tpm or faults.credits is not None or faults.revoke_after):
            return None
        tokens = math.ceil(prompt_chars / 4) + (max_tokens or DEFAULT_MAX_TOKENS)
        now = time.monotonic()
        with self._lock:
            state = self._state(model, faults, now)
            if faults.revoke_after is not None and state.calls >= faults.revoke_after:
                state.refused += 1
                return status_reply(401, model)
            if faults.credits is not None and state.spent_usd >= faults.credits:
                state.refused += 1
                return credits_reply()
            refusal = self._take(state, model, faults, tokens, now)
            if refusal is None:
                state.calls += 1
                state.admitted.append(now)
            else:
                state.rejected += 1
            return refusal

    def spend(self, model: str, usd: float) -> None:
        """Charge an answered call's cost against the model's credits."""
        with self._lock:
            if model in self._models:
                self._models[model].spent_usd += usd

    def headers(self, model: str) -> tuple[tuple[str, str], ...]:
        """The x-ratelimit-* headers of the model's buckets now (none without limits)."""
        with self._lock:
            state = self._models.get(model)
            if state is None:
                return ()
            return _limit_headers(state, time.monotonic())

    def max_in_window(self, model: str, window: float = 60.0) -> int:
        """The most requests admitted within any `window` seconds."""
        with self._lock:
            times = list(self._models[model].admitted) if model in self._models else []
        best, start = 0, 0
        for end, at in enumerate(times):
            while at - times[start] >= window:
                start += 1
            best = max(best, end - start + 1)
        return best

    def stats(self, model: str) -> tuple[int, int, int]:
        """(admitted calls, 429s for a limit, 401/402 refusals) of the model."""
        with self._lock:
            state = self._models.get(model)
            return (state.calls, state.rejected, state.refused) if state else (0, 0, 0)

    def _state(self, model: str, faults: Faults, now: float) -> ModelState:
        if model not in self._models:
            self._models[model] = ModelState(
                Bucket(faults.rpm, now) if faults.rpm else None,
                Bucket(faults.tpm, now) if faults.tpm else None,
            )
        return self._models[model]

    def _take(
        self, state: ModelState, model: str, faults: Faults, tokens: int, now: float
    ) -> Reply | None:
        for bucket in (state.requests, state.tokens):
            if bucket is not None:
                bucket.refill(now)
        checks = (("requests", "RPM", state.requests, 1), ("tokens", "TPM", state.tokens, tokens))
        for kind, unit, bucket, amount in checks:
            if bucket is not None and (wait := bucket.wait_for(amount)) > 0:
                return rate_limit_reply(model, kind, unit, bucket, amount, wait, faults, state, now)
        for bucket, amount in ((state.requests, 1), (state.tokens, tokens)):
            if bucket is not None:
                bucket.level -= amount
        return None


def rate_limit_reply(
    model: str,
    kind: str,
    unit: str,
    bucket: Bucket,
    amount: float,
    wait: float,
    faults: Faults,
    state: ModelState,
    now: float,
) -> Reply:
    """OpenAI's 429 for a spent limit: "Rate limit reached for M in organization O on requests
    per min (RPM): Limit L, Used U, Requested R. Please try again in T." (type `requests` or
    `tokens`, code `rate_limit_exceeded`), the x-ratelimit-* headers, and Retry-After /
    retry-after-ms unless `no_retry_after`."""
    used = round(bucket.limit - bucket.level)
    message = (
        f"Rate limit reached for {model} in organization org-sim on {kind} per min ({unit}): "
        f"Limit {round(bucket.limit)}, Used {used}, Requested {round(amount)}. "
        f"Please try again in {duration_text(wait)}."
    )
    headers = _limit_headers(state, now)
    if not faults.no_retry_after:
        headers += (
            ("retry-after", f"{math.ceil(wait)}"),
            ("retry-after-ms", str(math.ceil(wait * 1000))),
        )
    return error_reply(429, message, kind, code="rate_limit_exceeded", headers=headers)


def credits_reply() -> Reply:
    """OpenRouter's 402 when the key's credits are spent ("Errors": add credits and retry)."""
    message = "Insufficient credits. Add more using https://openrouter.ai/credits (simulated)"
    return Reply(402, {"error": {"code": 402, "message": message}})


def _limit_headers(state: ModelState, now: float) -> tuple[tuple[str, str], ...]:
    headers: list[tuple[str, str]] = []
    for kind, bucket in (("requests", state.requests), ("tokens", state.tokens)):
        if bucket is None:
            continue
        bucket.refill(now)
        headers += [
            (f"x-ratelimit-limit-{kind}", str(round(bucket.limit))),
            (f"x-ratelimit-remaining-{kind}", str(max(math.floor(bucket.level), 0))),
            (f"x-ratelimit-reset-{kind}", duration_text(bucket.reset_seconds())),
        ]
    return tuple(headers)
