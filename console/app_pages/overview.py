"""Overview: a batch's KPIs, progress by model, completions per minute, the last 14 batches."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from console import charts, context, data, widgets
from console.text import md_escape
from db import insights
from db.types import JobStatus, pause_text


def kpis(overview: insights.Overview) -> None:
    cols = st.columns(8)
    for col, status in zip(cols, JobStatus, strict=False):
        col.metric(status.value.capitalize(), f"{overview.get(status):,}")
    cols[6].metric("Done", f"{overview.done_fraction:.1%}", help="Jobs that ended, of all jobs")
    cols[7].metric(
        "ETA",
        eta_text(overview),
        help=f"From the completion rate over the last {insights.RATE_WINDOW_MINUTES} minutes",
    )


def eta_text(overview: insights.Overview) -> str:
    if overview.total and overview.ended == overview.total:
        return "done"
    if overview.eta_seconds is None:
        return "—"
    minutes = overview.eta_seconds / 60
    return f"{minutes:.0f} min" if minutes < 120 else f"{minutes / 60:.1f} h"


def paused_banner(url: str) -> None:
    """One warning per paused model: its jobs wait until it is resumed (Prompts & models)."""
    for p in data.paused_models(url):
        st.warning(
            md_escape(f"{p.label}: {pause_text(p.reason, p.since)} · {p.queued:,} jobs queued")
            + " — resume it on **Prompts & models**",
            icon="⏸",
        )


def missed_banner(url: str) -> None:
    """One warning naming the days the runner was down or frozen at their batch time."""
    if missed := data.missed_batches(url):
        st.warning(
            md_escape(f"Batches not enqueued on their day (runner down): {', '.join(missed)}")
            + " — PROMPTBATCH_CATCH_UP_DAYS enqueues recent ones late",
            icon="📅",
        )


def live_section(url: str, batch_key: str, every: int | None) -> None:
    @st.fragment(run_every=every)
    def live() -> None:
        with data.database_banner():
            overview = data.overview(url, batch_key)
            paused_banner(url)
            missed_banner(url)
            kpis(overview)
            st.caption(
                f"{overview.total:,} jobs · {overview.rate_per_minute:.1f} ended/min · "
                f"{overview.deferred:,} queued after a deferral · {overview.deferrals:,} "
                f"deferrals and {overview.interruptions:,} lost leases (no attempt spent) · "
                f"as of {overview.as_of:%H:%M:%S} UTC"
            )
            left, right = st.columns(2)
            progress = pd.DataFrame(
                [p.__dict__ for p in data.progress_by_model(url, batch_key)],
                columns=["model_id", "model", "status", "jobs"],
            )
            left.plotly_chart(charts.progress_by_model(progress), key="chart_progress")
            per_minute = data.completions_per_minute(url, batch_key)
            minutes = pd.DataFrame(
                [m.__dict__ for m in per_minute], columns=["minute", "succeeded", "failed"]
            )
            right.plotly_chart(charts.completions_per_minute(minutes), key="chart_minutes")

    live()


def history_section(url: str) -> None:
    st.subheader("Last 14 batches")
    rows = data.batch_history(url)
    table = pd.DataFrame(
        [
            {
                "batch": b.batch_key,
                "jobs": b.jobs,
                "succeeded": b.succeeded,
                "failed": b.failed,
                "success_rate": b.success_rate,
                "duration_min": None if b.duration_seconds is None else b.duration_seconds / 60,
                "prompt_tokens": b.prompt_tokens,
                "completion_tokens": b.completion_tokens,
                "cost_usd": b.cost_usd,
            }
            for b in rows
        ],
        columns=[
            "batch",
            "jobs",
            "succeeded",
            "failed",
            "success_rate",
            "duration_min",
            "prompt_tokens",
            "completion_tokens",
            "cost_usd",
        ],
    )
    st.plotly_chart(charts.batch_history(table.iloc[::-1]), key="chart_history")
    st.dataframe(
        table,
        hide_index=True,
        column_config={
            "success_rate": st.column_config.NumberColumn("success", format="percent"),
            "duration_min": st.column_config.NumberColumn("duration (min)", format="%.1f"),
            "cost_usd": st.column_config.NumberColumn("cost (USD)", format="$%.4f"),
        },
    )


ctx = context.current()
st.title("Overview")
top = st.columns([2, 1])
with top[0]:
    batch = widgets.batch_picker(ctx.database_url, key="overview_batch")
with top[1]:
    every = widgets.live_interval("overview_paused")
live_section(ctx.database_url, batch, every)
history_section(ctx.database_url)
