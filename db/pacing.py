"""Pacing a rate-limited model's calls across every runner that shares the database.

State is one `model_pacing` row per model: the next moment a request may start, and the moment
the tokens reserved so far are paid off. A call reserves its start in one short transaction (the
row locked FOR UPDATE on PostgreSQL; SQLite's write transaction serializes alike) and sleeps until
it: requests are spaced 60/rpm seconds apart and a call of N tokens pushes the token clock by
N x 60/tpm seconds (a GCRA with no burst, run at 98% of the limit: HEADROOM), so no 60 s window
ever holds more than rpm requests or tpm tokens, whatever the number of runners. OpenAI's "Rate
limits" guide counts a request's tokens when it arrives as the prompt's estimate plus max_tokens:
that is what is reserved; `refund_tokens` gives back what a provider that counts only used
tokens did not use.

Clocks: reservations are UTC timestamps from the caller's clock; runners sharing a database must
be NTP-synced (a skew of d seconds lets a runner start d seconds early).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Row, case, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from db.engine import is_sqlite, write_operation
from db.models import ModelPacing, PromptJob, utcnow
from db.types import JobStatus

# The pace runs this much under the limit: a call whose thread wakes late (the scheduler, a GC
# pause) arrives in the provider's next window, and 2% headroom absorbs up to 1.2 s of such delay
# at any rate (a 60 s window then holds at most 0.98 x limit + 1.2 s x limit/60). Measured at the
# simulator (bench/ item 8): 606 requests in one 60 s window at 600 RPM without it.
HEADROOM = 0.02


@dataclass(frozen=True)
class Reservation:
    """A call's place in its model's pace: start after `wait_seconds` (from the reservation's
    clock). `granted` False: the wait would exceed the caller's max_wait and nothing was
    reserved; `wait_seconds` is then how long until it would fit."""

    wait_seconds: float
    granted: bool


@write_operation
def reserve_call(
    conn: Connection,
    model_id: int,
    *,
    rpm: int | None,
    tpm: int | None,
    tokens: int,
    max_wait: float,
    now: datetime | None = None,
) -> Reservation:
    """Reserve one request of `tokens` tokens under `rpm` requests and `tpm` tokens per minute
    (None: that limit is off); seconds to wait before calling."""
    at = now or utcnow()
    row = _locked_row(conn, model_id, at)
    start = max(at, row.next_request_at or at, row.next_tokens_at or at)
    wait = (start - at).total_seconds()
    if wait > max_wait:
        return Reservation(wait, granted=False)
    values: dict[str, object] = {"updated_at": at}
    if rpm:
        values["next_request_at"] = start + timedelta(seconds=_per_minute(1, rpm))
    if tpm:
        values["next_tokens_at"] = start + timedelta(seconds=_per_minute(tokens, tpm))
    conn.execute(update(ModelPacing).where(ModelPacing.model_id == model_id).values(values))
    return Reservation(wait, granted=True)


@write_operation
def record_learned(
    conn: Connection,
    model_id: int,
    *,
    rpm: int | None,
    tpm: int | None,
    remaining_requests: int | None = None,
    remaining_tokens: int | None = None,
) -> None:
    """Keep what a provider's headers stated for a model: its per-minute limits and what was
    left (shown by `models list`, the console and /metrics; each runner paces by what it read
    itself)."""
    now = utcnow()
    _locked_row(conn, model_id, now)
    conn.execute(
        update(ModelPacing)
        .where(ModelPacing.model_id == model_id)
        .values(
            learned_rpm=rpm,
            learned_tpm=tpm,
            remaining_requests=remaining_requests,
            remaining_tokens=remaining_tokens,
            learned_at=now,
            updated_at=now,
        )
    )


@write_operation
def refund_tokens(conn: Connection, model_id: int, *, tpm: int, tokens: int) -> None:
    """Give back `tokens` reserved but not used (a provider that counts used tokens only)."""
    if tokens <= 0:
        return
    row = _locked_row(conn, model_id, utcnow())
    if row.next_tokens_at is not None:
        earlier = row.next_tokens_at - timedelta(seconds=_per_minute(tokens, tpm))
        conn.execute(
            update(ModelPacing)
            .where(ModelPacing.model_id == model_id)
            .values(next_tokens_at=earlier, updated_at=utcnow())
        )


def _per_minute(units: float, limit: int) -> float:
    """Seconds `units` take of a per-minute `limit`, with the HEADROOM."""
    return units * 60 / (limit * (1 - HEADROOM))


def _locked_row(
    conn: Connection, model_id: int, now: datetime
) -> Row[datetime | None, datetime | None]:
    """(next_request_at, next_tokens_at) of the model, its row created on first use and locked
    until the transaction ends."""
    dialect_insert = sqlite.insert if is_sqlite(conn) else postgresql.insert
    conn.execute(
        dialect_insert(ModelPacing)
        .values(model_id=model_id, updated_at=now)
        .on_conflict_do_nothing(index_elements=["model_id"])
    )
    query = select(ModelPacing.next_request_at, ModelPacing.next_tokens_at).where(
        ModelPacing.model_id == model_id
    )
    return conn.execute(query if is_sqlite(conn) else query.with_for_update()).one()


# --- AIMD concurrency --------------------------------------------------------------------------

DECREASE_AT_MOST_EVERY = timedelta(seconds=1)  # a burst of 429s from one moment halves once
MAX_CONCURRENCY = 10_000.0


def concurrency_after_429(conn: Connection, model_id: int, now: datetime) -> None:
    """Multiplicative decrease in the caller's transaction: halve the model's concurrency
    (starting from the jobs it has in flight, this one included, when it was not adapting yet),
    at most once per DECREASE_AT_MOST_EVERY. Never below 1."""
    row = _locked_pacing(conn, model_id, now)
    if row.decreased_at is not None and now - row.decreased_at < DECREASE_AT_MOST_EVERY:
        return
    current = row.concurrency if row.concurrency is not None else _in_flight(conn, model_id) + 1
    conn.execute(
        update(ModelPacing)
        .where(ModelPacing.model_id == model_id)
        .values(concurrency=max(current / 2, 1.0), decreased_at=now, updated_at=now)
    )


def concurrency_after_answers(conn: Connection, answers: dict[int, int]) -> None:
    """Additive increase in the caller's transaction: +n/c for a model adapting at concurrency
    c that got n answers (about +1 per window of c answers, as TCP's congestion avoidance)."""
    c = ModelPacing.concurrency
    for model_id in sorted(answers):  # one lock order for every writer
        grown = c + answers[model_id] / c
        conn.execute(
            update(ModelPacing)
            .where(ModelPacing.model_id == model_id, c.is_not(None))
            .values(concurrency=case((grown > MAX_CONCURRENCY, MAX_CONCURRENCY), else_=grown))
        )


def _locked_pacing(
    conn: Connection, model_id: int, now: datetime
) -> Row[float | None, datetime | None]:
    _locked_row(conn, model_id, now)  # created if missing, locked
    return conn.execute(
        select(ModelPacing.concurrency, ModelPacing.decreased_at).where(
            ModelPacing.model_id == model_id
        )
    ).one()


def _in_flight(conn: Connection, model_id: int) -> int:
    return int(
        conn.scalar(
            select(func.count())
            .select_from(PromptJob)
            .where(PromptJob.model_id == model_id, PromptJob.status == JobStatus.PROCESSING.value)
        )
        or 0
    )
