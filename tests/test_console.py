"""The console through Streamlit's AppTest, on SQLite and PostgreSQL (cases C20, C21, C22)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest
import streamlit as st
from sqlalchemy import Engine, func, select
from streamlit.testing.v1 import AppTest

from console.actions import PendingAction
from db import catalog, queue
from db.engine import read_tx
from db.models import PromptJob
from db.types import JobStatus
from tests.test_console_helpers import (
    APP,
    HOSTILE_ANSWER,
    Seeded,
    app,
    audit_rows,
    fail_one_more,
    job_row,
    seed,
    statuses,
    texts,
)

PAGES = ["overview", "jobs", "failures", "prompts_models", "mentions", "workers"]


@pytest.fixture(autouse=True)
def fresh_caches() -> Iterator[None]:
    """Streamlit caches are per process: no test sees another's data or engine."""
    st.cache_data.clear()
    st.cache_resource.clear()
    yield
    st.cache_data.clear()
    st.cache_resource.clear()


@pytest.fixture
def seeded(engine: Engine) -> Seeded:
    return seed(engine)


def open_page(at: AppTest, page: str) -> AppTest:
    at.run()
    if page != "overview":
        at.switch_page(f"app_pages/{page}.py").run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def button(at: AppTest, label_start: str) -> st.testing.v1.element_tree.Button:  # type: ignore[name-defined]
    found = [b for b in at.button if b.label.startswith(label_start)]
    assert len(found) == 1, (label_start, [b.label for b in at.button])
    return found[0]


def confirm(at: AppTest) -> None:
    (ok,) = [b for b in at.button if (b.key or "").startswith("confirm:")]
    ok.click().run()
    assert not at.exception, [e.message for e in at.exception]


def select_rows(at: AppTest, table: str, ids: list[int]) -> None:
    """Select the rows showing `ids` in the selectable table `table`, as a click would."""
    (frame,) = [d for d in at.dataframe if (d.key or "").startswith(f"{table}:")]
    shown = list(frame.value["id"])
    at.session_state[frame.key] = {
        "selection": {"rows": [shown.index(i) for i in ids], "columns": [], "cells": []}
    }
    at.run()


def count_by_status(engine: Engine, batch: str) -> dict[str, int]:
    with read_tx(engine) as conn:
        rows = conn.execute(
            select(PromptJob.status, func.count())
            .where(PromptJob.batch_key == batch)
            .group_by(PromptJob.status)
        )
        return {status: int(n) for status, n in rows}


# --- every page -----------------------------------


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders(monkeypatch, db_url, seeded, page):
    """Each page renders without exception or error banner and shows its data."""
    at = open_page(app(monkeypatch, db_url), page)
    assert not at.error, [e.value for e in at.error]
    assert at.dataframe or at.metric


def test_overview_kpis_match_the_database(monkeypatch, db_url, engine, seeded):
    at = open_page(app(monkeypatch, db_url), "overview")
    shown = {m.label: m.value for m in at.metric}
    counts = count_by_status(engine, seeded.batch)
    for status in JobStatus:
        assert shown[status.value.capitalize()] == str(counts.get(status.value, 0)), status
    ended = sum(counts.get(s, 0) for s in ("succeeded", "failed", "skipped", "cancelled"))
    assert shown["Done"] == f"{ended / sum(counts.values()):.1%}"
    assert len(at.get("plotly_chart")) == 3  # progress by model, per minute, history
    history = next(d.value for d in at.dataframe if "cost_usd" in d.value.columns)
    assert list(history["batch"]) == [seeded.batch, seeded.previous]
    assert history.iloc[1]["succeeded"] == 12 and history.iloc[1]["prompt_tokens"] == 1200


def test_overview_pause_toggle_stops_live_refresh(monkeypatch, db_url, seeded):
    at = open_page(app(monkeypatch, db_url), "overview")
    at.toggle(key="overview_paused").set_value(True).run()
    assert not at.exception and at.metric


# --- jobs -----------------------------------


def jobs_table(at: AppTest) -> list[int]:
    (frame,) = [d for d in at.dataframe if (d.key or "").startswith("jobs_table:")]
    return [int(i) for i in frame.value["id"]]


def test_jobs_filters_narrow_the_table(monkeypatch, db_url, seeded):
    at = open_page(app(monkeypatch, db_url), "jobs")
    assert len(jobs_table(at)) == 12
    at.multiselect(key="jobs_status").set_value(["failed"]).run()
    assert sorted(jobs_table(at)) == seeded.failed
    at.text_input(key="jobs_error_text").set_value("SCHEMA").run()
    assert sorted(jobs_table(at)) == seeded.failed[:2]
    at.multiselect(key="jobs_status").set_value([]).run()
    at.text_input(key="jobs_error_text").set_value("").run()
    at.text_input(key="jobs_prompt_text").set_value("<script>").run()
    assert len(jobs_table(at)) == 2  # the hostile prompt x 2 models
    at.multiselect(key="jobs_models").set_value(["Sim B"]).run()
    assert len(jobs_table(at)) == 1
    at.checkbox(key="jobs_all_batches").check().run()
    assert len(jobs_table(at)) == 2  # yesterday's too
    assert "2 jobs match" in texts(at)


def test_jobs_paging_and_sorting_are_server_side(monkeypatch, db_url, seeded):
    at = open_page(app(monkeypatch, db_url), "jobs")
    at.selectbox(key="jobs_size").set_value(25).run()
    at.checkbox(key="jobs_all_batches").check().run()
    first = jobs_table(at)
    assert len(first) == 24 and first == sorted(first, reverse=True)
    at.toggle(key="jobs_desc").set_value(False).run()
    assert jobs_table(at) == sorted(first)


def test_requeue_selected_changes_exactly_those_jobs(monkeypatch, db_url, engine, seeded):
    at = open_page(app(monkeypatch, db_url), "jobs")
    before = statuses(engine)
    target = seeded.failed[0]
    select_rows(at, "jobs_table", [target])
    button(at, "Re-queue selected (1)").click().run()
    assert statuses(engine) == before  # nothing happens before the confirmation
    assert "Re-queue 1 job" in texts(at)
    confirm(at)
    after = statuses(engine)
    assert after[target] == "queued"
    assert {k: v for k, v in after.items() if k != target} == {
        k: v for k, v in before.items() if k != target
    }
    assert "1 re-queued" in texts(at)
    row = job_row(engine, target)
    assert row.max_attempts == row.attempt_count + 3 and row.error_kind is None
    assert [n for _, n in audit_rows(engine, "requeue")] == [1]


def test_cancel_all_matching_cancels_only_cancellable_matches(monkeypatch, db_url, engine, seeded):
    at = open_page(app(monkeypatch, db_url), "jobs")
    before = statuses(engine)
    button(at, "Cancel all matching").click().run()
    assert "Cancel 2 jobs" in texts(at)  # the queued and the processing job
    confirm(at)
    after = statuses(engine)
    changed = {k for k in after if after[k] != before[k]}
    assert changed == {*seeded.queued, *seeded.processing}
    assert all(after[k] == "cancelled" for k in changed)
    assert "2 cancelled" in texts(at)


def test_job_detail_shows_attempts_answer_as_plain_text_and_mentions(monkeypatch, db_url, seeded):
    at = open_page(app(monkeypatch, db_url), "jobs")
    at.number_input(key="jobs_detail_id").set_value(seeded.succeeded[0]).run()
    codes = [c.value for c in at.code]
    assert HOSTILE_ANSWER in codes  # shown verbatim in a code block: no HTML, no Markdown
    assert not [m.value for m in at.markdown if "<img" in m.value or "<script" in m.value]
    assert not at.get("html")
    mentions = next(d.value for d in at.dataframe if "raw_name" in d.value.columns)
    assert list(mentions["brand"]) == ["HubSpot", "Salesforce", "Pipedrive"]
    assert list(mentions["position"]) == [1, 2, 3]
    attempts = next(d.value for d in at.dataframe if "outcome" in d.value.columns)
    assert list(attempts["outcome"]) == ["succeeded"]
    at.number_input(key="jobs_detail_id").set_value(seeded.failed[0]).run()
    attempts = next(d.value for d in at.dataframe if "outcome" in d.value.columns)
    assert list(attempts["error_kind"]) == ["bad_request"]


# --- failures -----------------------------------


def test_failures_grouped_by_error_with_counts_per_model(monkeypatch, db_url, seeded):
    at = open_page(app(monkeypatch, db_url), "failures")
    groups = next(d.value for d in at.dataframe if "error_message" in d.value.columns)
    assert list(groups["jobs"]) == [2, 1]
    assert groups.iloc[0]["error_message"] == "Invalid schema for response_format <b>x</b>"
    assert {m.label: m.value for m in at.metric}["Failed jobs in this batch"] == "3"


def test_failures_requeue_group_and_all(monkeypatch, db_url, engine, seeded):
    at = open_page(app(monkeypatch, db_url), "failures")
    button(at, "Re-queue this group").click().run()
    confirm(at)
    after = statuses(engine)
    assert [after[i] for i in seeded.failed] == ["queued", "queued", "failed"]
    assert "2 re-queued" in texts(at)
    button(at, "Re-queue all failed in this batch (1)").click().run()
    confirm(at)
    assert statuses(engine)[seeded.failed[2]] == "queued"
    assert [n for _, n in audit_rows(engine, "requeue")] == [2, 1]


def test_c20_stale_selection_never_touches_the_new_failure(monkeypatch, db_url, engine, seeded):
    """C20: newest-first failures; row 0 (job A) selected; failure B arrives and the page
    refreshes; Re-queue -> A re-queued, B untouched."""
    at = open_page(app(monkeypatch, db_url), "failures")
    (frame,) = [d for d in at.dataframe if (d.key or "").startswith("failures_table:")]
    job_a = int(frame.value["id"].iloc[0])
    select_rows(at, "failures_table", [job_a])
    job_b = fail_one_more(engine)
    st.cache_data.clear()
    at.run()  # the refresh: B is now row 0
    (frame,) = [d for d in at.dataframe if (d.key or "").startswith("failures_table:")]
    assert int(frame.value["id"].iloc[0]) == job_b
    button(at, "Re-queue selected (1)").click().run()
    confirm(at)
    after = statuses(engine)
    assert after[job_a] == "queued" and after[job_b] == "failed"


def test_c20_click_resolves_against_the_table_the_operator_saw(monkeypatch, db_url, engine, seeded):
    """C20 without a refresh in between: B arrives between the selection and the click."""
    at = open_page(app(monkeypatch, db_url), "failures")
    (frame,) = [d for d in at.dataframe if (d.key or "").startswith("failures_table:")]
    job_a = int(frame.value["id"].iloc[0])
    at.session_state[frame.key] = {"selection": {"rows": [0], "columns": [], "cells": []}}
    job_b = fail_one_more(engine)
    st.cache_data.clear()
    at.run()
    button(at, "Re-queue selected (1)").click().run()
    assert f"#{job_a}" in texts(at) and f"#{job_b}" not in texts(at)
    confirm(at)
    after = statuses(engine)
    assert after[job_a] == "queued" and after[job_b] == "failed"


def test_c21_repeated_and_crossing_actions_end_consistent(monkeypatch, db_url, engine, seeded):
    """C21: re-queue twice, then cancel the same selection: one consistent end state, one audit
    row per effective action, attempts reset once."""
    at = open_page(app(monkeypatch, db_url), "jobs")
    target = seeded.failed[0]
    for _ in range(2):
        select_rows(at, "jobs_table", [target])
        button(at, "Re-queue selected (1)").click().run()
        confirm(at)
    assert "0 re-queued; 1 left alone" in texts(at)
    budget = job_row(engine, target).max_attempts
    select_rows(at, "jobs_table", [target])
    button(at, "Cancel selected (1)").click().run()
    confirm(at)
    assert statuses(engine)[target] == "cancelled"
    assert job_row(engine, target).max_attempts == budget
    assert [n for _, n in audit_rows(engine, "requeue")] == [1]
    assert [n for _, n in audit_rows(engine, "cancel")] == [1]


def test_a_used_confirmation_cannot_run_again(monkeypatch, db_url, engine, seeded):
    """C21: the pending action is consumed by the first confirm; replaying it does nothing."""
    at = open_page(app(monkeypatch, db_url), "failures")
    button(at, "Re-queue all failed in this batch (3)").click().run()
    pending = at.session_state["pending_action"]
    confirm(at)
    at.session_state["pending_action"] = pending  # the same confirmation delivered again
    at.run()
    confirm(at)
    assert [n for _, n in audit_rows(engine, "requeue")] == [3]
    assert "0 re-queued; 3 left alone" in texts(at)


# --- read-only and password -----------------------------------

ACTION_LABELS = ("Re-queue", "Cancel", "Confirm", "Enqueue", "Add ", "Save ", "Resume", "Pause")


@pytest.mark.parametrize("page", ["jobs", "failures", "prompts_models"])
def test_read_only_offers_no_action(monkeypatch, db_url, engine, seeded, page):
    catalog.pause_model(engine, seeded.model_ids[0], reason="401", actor="test")  # a Resume
    at = open_page(app(monkeypatch, db_url, CONSOLE_READ_ONLY="1"), page)
    offered = [
        b.label
        for b in [*at.button, *at.get("form_submit_button")]
        if b.label.startswith(ACTION_LABELS) and not b.disabled
    ]
    assert offered == []


def test_read_only_accepts_no_action(monkeypatch, db_url, engine, seeded):
    at = open_page(app(monkeypatch, db_url, CONSOLE_READ_ONLY="1"), "failures")
    before = statuses(engine)
    at.session_state["pending_action"] = PendingAction(
        "t0k3n", "requeue", tuple(seeded.failed), "forged", "failures"
    )
    at.run()
    confirm(at)
    assert statuses(engine) == before
    assert "Actions are disabled" in texts(at)
    assert audit_rows(engine, "requeue") == []


def test_password_gates_every_page_per_session(monkeypatch, db_url, engine, seeded):
    at = app(monkeypatch, db_url, CONSOLE_PASSWORD="s3cret-pw")
    at.run()
    assert not at.metric and not at.dataframe
    at.text_input[0].set_value("wrong")  # a form: the value goes with the submit
    at.get("form_submit_button")[0].click().run()
    assert "Wrong password" in texts(at) and not at.metric
    at.session_state["pending_action"] = PendingAction(
        "t0k3n", "requeue", tuple(seeded.failed), "forged", "failures"
    )
    at.run()
    assert not [b for b in at.button if (b.key or "").startswith("confirm:")]
    at.text_input[0].set_value("s3cret-pw")
    at.get("form_submit_button")[0].click().run()
    assert at.metric  # signed in: the Overview shows
    other = app(monkeypatch, db_url, CONSOLE_PASSWORD="s3cret-pw").run()
    assert not other.metric  # another session must sign in itself
    assert statuses(engine)[seeded.failed[0]] == "failed"


# --- prompts & models -----------------------------------


def test_prompts_and_models_edit_and_enqueue(monkeypatch, db_url, engine, seeded):
    at = open_page(app(monkeypatch, db_url), "prompts_models")
    button(at, "Enqueue today's batch now").click().run()
    assert "0 created, 12 existing" in texts(at)
    at.text_area[0].set_value("Best CRM for a dentist?")
    add = next(b for b in at.get("form_submit_button") if b.label == "Add prompt")
    add.click().run()
    assert "prompt added" in texts(at)
    at.selectbox(key="model_pick").set_value(seeded.model_ids[1]).run()
    [n for n in at.number_input if n.label.startswith("Max concurrency")][-1].set_value(2)
    [t for t in at.toggle if t.label == "Active"][-1].set_value(False)
    next(b for b in at.get("form_submit_button") if b.label == "Save model").click().run()
    assert f"model #{seeded.model_ids[1]} saved" in texts(at)
    button(at, "Enqueue today's batch now").click().run()
    assert "1 created, 6 existing" in texts(at)  # 7 active prompts x the 1 active model
    models = next(d.value for d in at.dataframe if "max_concurrency" in d.value.columns)
    assert list(models["max_concurrency"])[1] == 2 and not list(models["is_active"])[1]


def test_a_paused_model_is_shown_and_resumed_with_one_click(monkeypatch, db_url, engine, seeded):
    """Issue 10: "paused: <reason> since <time>" on the Overview and the models page; Resume
    (audited, actor console) lets its jobs be claimed again; Pause this model pauses by hand."""
    model_id = seeded.model_ids[0]
    catalog.pause_model(engine, model_id, reason="auth: HTTP 401: Incorrect API key", actor="t")
    overview = open_page(app(monkeypatch, db_url), "overview")
    shown = [w.value.replace("\\", "") for w in overview.warning]  # md-escaped
    assert any("paused: auth: HTTP 401: Incorrect API key since" in w for w in shown)
    at = open_page(app(monkeypatch, db_url), "prompts_models")
    assert any("paused: auth: HTTP 401" in w.value.replace("\\", "") for w in at.warning)
    models = next(d.value for d in at.dataframe if "state" in d.value.columns)
    assert models["state"].iloc[0] == "paused"
    at.button(key=f"model_resume_{model_id}").click().run()
    assert catalog.list_models(engine)[0].state == "active"
    assert len(audit_rows(engine, "model_resume")) == 1  # actor: console
    at.selectbox(key="model_pick").set_value(model_id).run()
    at.button(key=f"model_pause_{model_id}").click().run()
    assert catalog.list_models(engine)[0].paused_reason == "paused in the console"


def test_missed_batches_are_shown_on_the_overview(monkeypatch, db_url, engine, seeded):
    """Issue 12: the days the runner was down or frozen at batch time are on the Overview, not
    only in `status`."""
    queue.record_missed_batches(engine, ["2026-11-02", "2026-11-03"])
    overview = open_page(app(monkeypatch, db_url), "overview")
    shown = [w.value.replace("\\", "") for w in overview.warning]
    assert any("not enqueued on their day" in w and "2026-11-02, 2026-11-03" in w for w in shown)


# --- mentions and workers -----------------------------------


def test_mentions_rates_and_share_of_voice(monkeypatch, db_url, seeded):
    at = open_page(app(monkeypatch, db_url), "mentions")
    at.selectbox(key="mentions_to").set_value(seeded.batch).run()
    at.selectbox(key="mentions_from").set_value(seeded.batch).run()
    table = at.dataframe[0].value
    overall = table[table["model"] == "All models"].set_index("brand")
    # Today: 6 answers; HubSpot in answers 0 (hostile), 4 (HubSpot, Salesforce) -> 2 of 6.
    assert overall.loc["HubSpot", "answers_mentioning"] == 2
    assert overall.loc["HubSpot", "mention_rate"] == pytest.approx(2 / 6)
    assert overall["share_of_voice"].sum() == pytest.approx(1.0)
    assert overall.loc["HubSpot", "avg_position"] == pytest.approx(1.0)
    assert len(at.get("plotly_chart")) == 3


def test_workers_marks_the_stale_one(monkeypatch, db_url, seeded):
    at = open_page(app(monkeypatch, db_url), "workers")
    table = at.dataframe[0].value.set_index("host")
    assert table.loc["host-1", "state"] == "live" and table.loc["host-2", "state"] == "STALE"
    assert {m.label: m.value for m in at.metric}["Stale"] == "1"


# --- the dependency rule -----------------------------------


def test_console_imports_only_db_and_settings():
    """console -> db only: no sqlalchemy, no runner worker code (DESIGN.md)."""
    bad = []
    for path in (APP.parent).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            bad += [
                f"{path.name}: {n}"
                for n in names
                if n.split(".")[0] == "sqlalchemy"
                or (n.split(".")[0] == "runner" and n != "runner.settings")
            ]
    assert bad == []
    assert Path(APP).exists()
