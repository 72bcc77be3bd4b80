"""Failures: a batch's failed jobs grouped by error kind and message with counts per model, and
one-click re-queue per group, per model, per job, or every failed job of the batch."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from console import actions, context, data, tables, widgets
from db import insights
from db.filters import JobQuery
from db.types import JobStatus

PAGE = "failures"
FAILED = (JobStatus.FAILED.value,)
TIME = st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss")


def groups_frame(groups: list[insights.FailureGroup]) -> pd.DataFrame:
    """One row per (kind, message), a column of counts per model, largest first."""
    flat = pd.DataFrame(
        [g.__dict__ for g in groups],
        columns=["error_kind", "error_message", "model_id", "model", "jobs", "last_failed_at"],
    )
    if flat.empty:
        return pd.DataFrame(columns=["error_kind", "error_message", "jobs", "last_failed_at"])
    keys = ["error_kind", "error_message"]
    flat[keys] = flat[keys].fillna("")
    per_model = flat.pivot_table(
        index=keys, columns="model", values="jobs", aggfunc="sum", fill_value=0
    )
    totals = flat.groupby(keys).agg(jobs=("jobs", "sum"), last_failed_at=("last_failed_at", "max"))
    table = totals.join(per_model).reset_index().sort_values("jobs", ascending=False)
    return table.reset_index(drop=True)


def group_actions(
    url: str, batch: str, table: pd.DataFrame, groups: list[insights.FailureGroup]
) -> None:
    cols = st.columns(2)
    labels = [
        f"{r.error_kind or '-'}: {r.error_message[:80]} ({r.jobs})" for r in table.itertuples()
    ]
    with cols[0]:
        choice = st.selectbox(
            "Error group", range(len(labels)), format_func=labels.__getitem__, key="failures_group"
        )
        if st.button("Re-queue this group", disabled=choice is None):
            row = table.iloc[int(choice or 0)]
            ids = data.matching_job_ids(
                url,
                JobQuery(
                    batch_key=batch,
                    statuses=FAILED,
                    error_kind=row.error_kind or None,
                    error_message=row.error_message or None,
                ),
            )
            actions.propose(
                "requeue",
                ids,
                f"failed with {row.error_kind or 'no kind'}: {row.error_message[:80]}",
                PAGE,
            )
    models = sorted({(g.model, g.model_id) for g in groups})
    with cols[1]:
        model = st.selectbox("Model", models, format_func=lambda m: m[0], key="failures_model")
        if st.button("Re-queue this model's failures", disabled=model is None) and model:
            ids = data.matching_job_ids(
                url, JobQuery(batch_key=batch, statuses=FAILED, model_ids=(model[1],))
            )
            actions.propose("requeue", ids, f"failed jobs of {model[0]}", PAGE)


def failed_jobs(url: str, batch: str) -> None:
    st.subheader("Failed jobs, newest first")
    page = data.jobs_page(
        url,
        JobQuery(batch_key=batch, statuses=FAILED),
        "finished_at",
        descending=True,
        limit=200,
        offset=0,
    )
    frame = pd.DataFrame(
        [
            {
                "id": r.id,
                "failed_at": r.finished_at,
                "model": r.model,
                "error_kind": r.error_kind,
                "error": r.error_message,
                "attempts": f"{r.attempt_count}/{r.max_attempts}",
                "prompt": r.prompt,
            }
            for r in page.rows
        ],
        columns=["id", "failed_at", "model", "error_kind", "error", "attempts", "prompt"],
    )
    selected = tables.selectable_jobs(frame, "failures_table", column_config={"failed_at": TIME})
    if page.total > len(page.rows):
        st.caption(
            f"Showing the newest {len(page.rows)} of {page.total:,}; the Jobs page lists them all."
        )
    if context.current().can_act and st.button(
        f"Re-queue selected ({len(selected)})", disabled=not selected
    ):
        actions.propose("requeue", selected, "selected on Failures", PAGE)


ctx = context.current()
url = ctx.database_url
st.title("Failures")
batch = widgets.batch_picker(url, key="failures_batch")
actions.confirmation(PAGE)
groups = data.failure_groups(url, batch)
failed_total = sum(g.jobs for g in groups)
st.metric("Failed jobs in this batch", f"{failed_total:,}")
if ctx.can_act and st.button(
    f"Re-queue all failed in this batch ({failed_total})", disabled=not failed_total, type="primary"
):
    ids = data.matching_job_ids(url, JobQuery(batch_key=batch, statuses=FAILED))
    actions.propose("requeue", ids, f"every failed job of batch {batch}", PAGE)
table = groups_frame(groups)
st.subheader("By error")
st.dataframe(table, hide_index=True, column_config={"last_failed_at": TIME})
if ctx.can_act and groups:
    group_actions(url, batch, table, groups)
failed_jobs(url, batch)
