"""What a call used and cost, from the response body (OpenAI's and OpenRouter's `usage`).

OpenRouter reports what it charged as `usage.cost` (in credits, 1 credit = 1 USD; "Usage
Accounting": included in every response, no parameter needed); OpenAI and most compatible
servers report tokens only, and the cost is estimated from the model's per-million-token prices.
"""

from __future__ import annotations

import math
from typing import Any

from db.types import CallUsage, ClaimedJob, CostSource


def call_usage(body: dict[str, Any], request_id: str | None, job: ClaimedJob) -> CallUsage:
    """One answered call's usage: tokens as reported (None when absent), USD from `usage.cost`
    when the provider sent one, else estimated from `job`'s prices (None when unpriced)."""
    found = body.get("usage")
    usage: dict[str, Any] = found if isinstance(found, dict) else {}
    prompt = _count(usage.get("prompt_tokens"))
    completion = _count(usage.get("completion_tokens"))
    reported = _amount(usage.get("cost"))
    cost = reported if reported is not None else estimate_usd(job, prompt, completion)
    source = (
        None
        if cost is None
        else (CostSource.PROVIDER if reported is not None else CostSource.ESTIMATE)
    )
    ids = (request_id,) if request_id else ()
    return CallUsage(1, prompt, completion, cost, source, ids)


def estimate_usd(
    job: ClaimedJob, prompt_tokens: int | None, completion_tokens: int | None
) -> float | None:
    """USD from the model's per-million-token prices, or None when the model is unpriced."""
    if job.input_usd_per_mtok is None or job.output_usd_per_mtok is None:
        return None
    return (
        (prompt_tokens or 0) * job.input_usd_per_mtok
        + (completion_tokens or 0) * job.output_usd_per_mtok
    ) / 1_000_000


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _amount(value: object) -> float | None:
    """A reported USD amount: a finite number >= 0, else None."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) if math.isfinite(value) and value >= 0 else None
    return None
