"""Daily budgets in USD: per model (models.daily_budget_usd) and for all models together
(PROMPTBATCH_DAILY_BUDGET_USD).

Spend is checked before a claim and settled after: a claim may hold at most as many jobs in
flight as the budget left covers at each job's worst case (a 4,000-character prompt and the full
max_tokens at the model's prices), and every attempt's cost (the provider's `usage.cost`, else
the estimate) is added to `model_spend` for its UTC day in the transaction that records it. A
model whose day's budget cannot cover one more job is paused with reason "budget: ..."; the
supervisor resumes it when the UTC day changes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, time

from sqlalchemy import Connection, Engine, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from db.engine import is_sqlite, read_tx, write_operation
from db.models import Model, ModelSpend, PromptJob, utcnow
from db.types import JobStatus

WORST_PROMPT_TOKENS = 1_100  # a 4,000-character prompt (~1,000 tokens) and the instructions
BUDGET_REASON = "budget"  # paused_reason starts with it: resumed when the UTC day changes


@dataclass(frozen=True)
class BudgetPolicy:
    """What a claim needs to keep the budgets: the global budget (USD per UTC day, None: none)
    and the runner's output cap for models without max_tokens."""

    daily_budget_usd: float | None = None
    default_max_tokens: int = 4096


def day_of(at: datetime) -> str:
    """The UTC day (YYYY-MM-DD) spend is booked on."""
    return at.date().isoformat()


def worst_case_usd(
    input_usd_per_mtok: float | None,
    output_usd_per_mtok: float | None,
    max_tokens: int | None,
    policy: BudgetPolicy,
) -> float | None:
    """USD of one call at its worst (None: the model has no prices)."""
    if input_usd_per_mtok is None or output_usd_per_mtok is None:
        return None
    out = max_tokens or policy.default_max_tokens
    return (WORST_PROMPT_TOKENS * input_usd_per_mtok + out * output_usd_per_mtok) / 1e6


def spent_on(conn: Connection, day: str) -> dict[int, float]:
    """USD spent per model on `day`."""
    rows = conn.execute(select(ModelSpend.model_id, ModelSpend.usd).where(ModelSpend.day == day))
    return {int(model_id): float(usd) for model_id, usd in rows}


def budget_caps(
    conn: Connection, policy: BudgetPolicy, now: datetime
) -> tuple[dict[int, int], int | None]:
    """(jobs each budgeted model may hold in flight, jobs all priced models together may hold;
    None: no global budget). A model's cap is what its budget left covers at its worst case."""
    rows = conn.execute(
        select(
            Model.id,
            Model.daily_budget_usd,
            Model.input_usd_per_mtok,
            Model.output_usd_per_mtok,
            Model.max_tokens,
        ).where(Model.is_active)
    ).all()
    day = day_of(now)
    spent = spent_on(conn, day)
    caps: dict[int, int] = {}
    worst_all: list[float] = []
    for r in rows:
        worst = worst_case_usd(r.input_usd_per_mtok, r.output_usd_per_mtok, r.max_tokens, policy)
        if worst is not None:
            worst_all.append(worst)
        if r.daily_budget_usd is not None and worst:
            used = spent.get(r.id, 0.0)
            caps[r.id] = max(math.floor((r.daily_budget_usd - used) / worst), 0)
            if caps[r.id] == 0:  # not even one job fits: say so, and a drain stops waiting
                _pause(conn, r.id, _reason(used, r.daily_budget_usd, day, worst), now)
    if policy.daily_budget_usd is None or not worst_all:
        return caps, None
    left = policy.daily_budget_usd - sum(spent.values())
    room = max(math.floor(left / max(worst_all)), 0) - _in_flight(conn)
    return caps, max(room, 0)


def uses_budgets(conn: Connection, policy: BudgetPolicy) -> bool:
    """Whether a claim must count budgets (a global one, or any active model's)."""
    if policy.daily_budget_usd is not None:
        return True
    found = conn.scalar(
        select(func.count())
        .select_from(Model)
        .where(Model.is_active, Model.daily_budget_usd.is_not(None))
    )
    return bool(found)


def record_spend(
    conn: Connection, spend: Mapping[int, float], now: datetime, policy: BudgetPolicy
) -> list[int]:
    """Add each model's USD to its day's spend (in the caller's transaction, sorted: one lock
    order); pause a model whose budget left cannot cover one more job. The ids paused."""
    day = day_of(now)
    paused = []
    for model_id in sorted(m for m, usd in spend.items() if usd > 0):
        _add(conn, model_id, day, spend[model_id])
        if _pause_if_spent(conn, model_id, day, now, policy):
            paused.append(model_id)
    if spend and policy.daily_budget_usd is not None:
        paused += _pause_all_if_spent(conn, day, now, policy)
    return paused


def _add(conn: Connection, model_id: int, day: str, usd: float) -> None:
    dialect_insert = sqlite.insert if is_sqlite(conn) else postgresql.insert
    stmt = dialect_insert(ModelSpend).values(model_id=model_id, day=day, usd=usd)
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["model_id", "day"], set_={"usd": ModelSpend.usd + stmt.excluded.usd}
        )
    )


def _pause_if_spent(
    conn: Connection, model_id: int, day: str, now: datetime, policy: BudgetPolicy
) -> bool:
    m = conn.execute(
        select(
            Model.daily_budget_usd,
            Model.input_usd_per_mtok,
            Model.output_usd_per_mtok,
            Model.max_tokens,
            Model.paused_at,
        ).where(Model.id == model_id)
    ).one()
    if m.daily_budget_usd is None or m.paused_at is not None:
        return False
    worst = worst_case_usd(m.input_usd_per_mtok, m.output_usd_per_mtok, m.max_tokens, policy)
    spent = spent_on(conn, day).get(model_id, 0.0)
    if m.daily_budget_usd - spent >= (worst or 0.0) and spent < m.daily_budget_usd:
        return False
    _pause(conn, model_id, _reason(spent, m.daily_budget_usd, day, worst), now)
    return True


def _reason(spent: float, budget: float, day: str, worst: float | None) -> str:
    """Why a budget paused a model: what is spent, the budget, and what one more job may cost."""
    more = f"; one more job may cost up to ${worst:.6g}" if worst else ""
    return f"{BUDGET_REASON}: ${spent:.6g} of ${budget:.6g} spent on {day} (UTC){more}"


def _pause(conn: Connection, model_id: int, reason: str, now: datetime) -> None:
    conn.execute(
        update(Model)
        .where(Model.id == model_id, Model.paused_at.is_(None))
        .values(paused_at=now, paused_reason=reason[:500])
    )


def _pause_all_if_spent(
    conn: Connection, day: str, now: datetime, policy: BudgetPolicy
) -> list[int]:
    """Pause every active model when the global budget left cannot cover one more job of the
    dearest priced model; the ids paused."""
    budget = policy.daily_budget_usd
    assert budget is not None
    prices = conn.execute(
        select(Model.input_usd_per_mtok, Model.output_usd_per_mtok, Model.max_tokens).where(
            Model.is_active
        )
    ).all()
    worst = [w for p in prices if (w := worst_case_usd(*p, policy)) is not None]
    spent = sum(spent_on(conn, day).values())
    if budget - spent >= max(worst, default=0.0) and spent < budget:
        return []
    reason = _reason(spent, budget, day, max(worst, default=None)).replace(
        f"{BUDGET_REASON}: ", f"{BUDGET_REASON}: all models: ", 1
    )
    stmt = (
        update(Model)
        .where(Model.is_active, Model.paused_at.is_(None))
        .values(paused_at=now, paused_reason=reason)
        .returning(Model.id)
    )
    return sorted(conn.scalars(stmt))


@write_operation
def resume_for_new_day(conn: Connection) -> list[int]:
    """Resume the models a budget paused on an earlier UTC day; their ids."""
    start = datetime.combine(utcnow().date(), time(), tzinfo=utcnow().tzinfo)
    stmt = (
        update(Model)
        .where(
            Model.paused_at < start,
            Model.paused_reason.like(f"{BUDGET_REASON}:%"),
        )
        .values(paused_at=None, paused_reason=None, failure_streak=0, updated_at=utcnow())
        .returning(Model.id)
    )
    return sorted(conn.scalars(stmt))


def spend_today(engine: Engine) -> dict[int, float]:
    """USD spent per model today (UTC)."""
    with read_tx(engine) as conn:
        return spent_on(conn, day_of(utcnow()))


def _in_flight(conn: Connection) -> int:
    return int(
        conn.scalar(
            select(func.count())
            .select_from(PromptJob)
            .where(PromptJob.status == JobStatus.PROCESSING.value)
        )
        or 0
    )
