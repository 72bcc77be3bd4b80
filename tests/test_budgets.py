"""Issue 10, budgets (db.budgets): a claim holds no more jobs than the day's budget left covers at
their worst case, every paid call's USD is booked on its model's UTC day, a model whose budget
cannot cover another job pauses ("budget: ..."), a new UTC day resumes it; `estimate` prints a
batch's expected cost before anything is spent. Both backends."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import Engine

from db import budgets, catalog, insights, queue
from db.budgets import BudgetPolicy
from db.models import utcnow
from tests import factories as f
from tests.test_cli import assert_user_error, cli

# worst case per job: (1,100 x $1 + 1,000 x $2) / 1M = $0.0031
PRICES = {"input_usd_per_mtok": 1.0, "output_usd_per_mtok": 2.0, "max_tokens": 1000}
POLICY = BudgetPolicy(None, 4096)


def priced_batch(engine: Engine, jobs: int, **settings: object) -> int:
    f.make_prompts(engine, jobs)
    [model_id] = f.make_models(engine, 1)
    catalog.update_model(engine, model_id, **PRICES, **settings)
    queue.enqueue_batch(engine, f.BATCH, max_attempts=3)
    return model_id


def claim(engine: Engine, policy: BudgetPolicy = POLICY) -> list:
    return queue.claim_jobs(engine, "w", 100, lease_seconds=60, budget=policy)


def test_a_claim_holds_only_what_the_budget_covers(engine: Engine) -> None:
    priced_batch(engine, 10, daily_budget_usd=0.01)  # 3 jobs at $0.0031
    held = claim(engine)
    assert len(held) == 3 and claim(engine) == []
    for job in held[:2]:
        assert f.complete(engine, job, f.answer(), 0.002)  # $0.006 left: 1 job, in flight
    assert claim(engine) == []
    assert f.complete(engine, held[2], f.answer(), 0.002)  # $0.004 left: 1 job, none in flight
    assert len(claim(engine)) == 1
    assert budgets.spend_today(engine) == {held[0].model_id: pytest.approx(0.006)}


def test_spent_budget_pauses_the_model_until_a_new_day(engine: Engine) -> None:
    model_id = priced_batch(engine, 10, daily_budget_usd=0.01)
    held = claim(engine)
    for job in held:
        f.complete(engine, job, f.answer(), 0.003)  # $0.009: $0.001 left < $0.0031
    [model] = catalog.list_models(engine)
    assert model.state == "paused"
    assert str(model.paused_reason).startswith("budget: $0.009 of $0.01 spent on ")
    assert str(model.paused_reason).endswith("one more job may cost up to $0.0031")
    assert claim(engine) == []
    assert budgets.resume_for_new_day(engine) == []  # still the same day
    f.set_models_paused_at(engine, model_id, utcnow() - timedelta(days=1))
    assert budgets.resume_for_new_day(engine) == [model_id]
    assert catalog.list_models(engine)[0].state == "active"


def test_a_global_budget_covers_all_models_together(engine: Engine) -> None:
    f.make_prompts(engine, 10)
    for model_id in f.make_models(engine, 2):
        catalog.update_model(engine, model_id, **PRICES)
    queue.enqueue_batch(engine, f.BATCH, max_attempts=3)
    assert len(claim(engine, BudgetPolicy(0.0065, 4096))) == 2  # 2 x $0.0031
    assert len(claim(engine, POLICY)) == 18  # no budget: the rest


def test_failed_and_dropped_calls_are_paid_for(engine: Engine) -> None:
    from db.types import CallUsage, ErrorKind, FailureRecord

    model_id = priced_batch(engine, 2)
    first, second = claim(engine)
    usage = CallUsage(calls=1, cost_usd=0.001)
    f.fail(engine, first, FailureRecord(ErrorKind.TRUNCATED, "cut", usage=usage), 0)
    queue.reap_expired(engine)  # nothing expired; second still held
    f.set_jobs(engine, [second.id], status="cancelled")
    assert not f.complete(engine, second, f.answer(), 0.002)  # dropped, but paid
    assert budgets.spend_today(engine) == {model_id: pytest.approx(0.003)}


def test_a_budget_needs_prices_and_a_number(db_url: str, engine: Engine) -> None:
    f.make_models(engine, 1)
    assert_user_error(
        cli(db_url, "models", "update", "model-0", "--daily-budget-usd", "5"),
        "a daily budget needs the model's prices",
    )
    bad = cli(db_url, "models", "update", "model-0", "--daily-budget-usd", "abc")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert_user_error(
        cli(db_url, "status", env={"PROMPTBATCH_DAILY_BUDGET_USD": "abc"}), "DAILY_BUDGET_USD"
    )
    assert catalog.list_models(engine)[0].daily_budget_usd is None


def test_estimate_before_anything_is_spent(db_url: str, engine: Engine) -> None:
    """No history: the prompts' estimate and the full max_tokens at the prices; with history:
    the mean tokens of the last batches' answers."""
    priced_batch(engine, 4)
    out = json.loads(cli(db_url, "estimate", "--batch-key", f.BATCH, "--json").stdout)
    [row] = out["models"]
    assert (row["jobs"], row["basis"], row["completion_tokens_per_job"]) == (4, "max_tokens", 1000)
    assert out["total_usd"] == pytest.approx(4 * row["usd_per_job"])
    for job in claim(engine):
        f.complete(engine, job, f.answer(), 0.001)
    later = insights.estimate_batch(engine, "2099-01-01", default_max_tokens=4096)
    assert later[0].basis == "history" and later[0].completion_tokens_per_job < 1000
    text = cli(db_url, "estimate", "--batch-key", "2099-01-01").stdout
    assert "[history]" in text and "expected $" in text


def test_the_global_budget_spent_pauses_every_model(engine: Engine) -> None:
    f.make_prompts(engine, 4)
    ids = f.make_models(engine, 2)
    for model_id in ids:
        catalog.update_model(engine, model_id, **PRICES)
    queue.enqueue_batch(engine, f.BATCH, max_attempts=3)
    policy = BudgetPolicy(0.0065, 4096)
    held = queue.claim_jobs(engine, "w", 100, lease_seconds=60, budget=policy)
    from db import results

    results.write_outcomes(engine, [f.completion(held[0], f.answer(), 0.004)], budget=policy)
    models = catalog.list_models(engine)
    assert {m.state for m in models} == {"paused"}
    assert str(models[0].paused_reason).startswith("budget: all models: $0.004 of $0.0065")


def test_a_budget_below_one_job_pauses_at_the_claim(engine: Engine) -> None:
    """Nothing is called, so nothing would settle: the claim itself pauses the model, and a
    drain stops waiting for it."""
    priced_batch(engine, 2, daily_budget_usd=0.001)  # one job may cost $0.0031
    assert claim(engine) == []
    [model] = catalog.list_models(engine)
    assert model.state == "paused" and model.daily_budget_usd == 0.001
    assert insights.pending_jobs(engine, due_within_seconds=60) == 0
