"""Jobs: filters, server-side paging and sorting, actions on a selection or on every match, and
one job's detail (attempts, the answer as plain text, its mentions)."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pandas as pd
import streamlit as st

from console import actions, context, data, tables, widgets
from console.text import md_escape
from db import insights
from db.filters import JobQuery
from db.types import CANCELLABLE_STATUSES, REQUEUEABLE_STATUSES, JobStatus

PAGE = "jobs"
ANY_BATCH = "All batches"
SORTS: dict[str, insights.SortKey] = {
    "Job id": "id",
    "Finished": "finished_at",
    "Last change": "updated_at",
    "Attempts": "attempt_count",
}
TIME = st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss")


def filters(url: str) -> JobQuery:
    cols = st.columns([1.2, 1.5, 1.5, 1])
    with cols[0]:
        batch = widgets.batch_picker(url, key="jobs_batch")
        everywhere = st.checkbox(ANY_BATCH, key="jobs_all_batches")
    statuses = cols[1].multiselect("Status", [s.value for s in JobStatus], key="jobs_status")
    models = {m.label: m.id for m in data.models(url)}
    chosen = cols[2].multiselect("Model", list(models), key="jobs_models")
    kinds = data.error_kinds(url, None if everywhere else batch)
    kind = cols[3].selectbox(
        "Error kind", kinds, index=None, placeholder="any", key="jobs_error_kind"
    )
    text_cols = st.columns(2)
    prompt_text = text_cols[0].text_input("Prompt contains", key="jobs_prompt_text")
    error_text = text_cols[1].text_input("Error contains", key="jobs_error_text")
    return JobQuery(
        batch_key=None if everywhere else batch,
        statuses=tuple(statuses),
        model_ids=tuple(models[m] for m in chosen),
        prompt_text=prompt_text,
        error_kind=kind,
        error_text=error_text,
    )


def listing(url: str, query: JobQuery) -> tuple[insights.JobPage, list[int]]:
    cols = st.columns([1, 1, 1, 3])
    sort = SORTS[cols[0].selectbox("Sort by", list(SORTS), key="jobs_sort")]
    descending = cols[1].toggle("Newest / largest first", value=True, key="jobs_desc")
    size = cols[2].selectbox("Rows per page", [25, 50, 100, 200], index=1, key="jobs_size")
    # A new filter or sort starts again at page 1: the pager's key changes with them.
    pager_key = (
        "jobs_page_"
        + hashlib.blake2b(repr((query, sort, descending, size)).encode(), digest_size=6).hexdigest()
    )
    page_no = st.session_state.get(pager_key, 1)
    page = data.jobs_page(
        url, query, sort, descending=descending, limit=size, offset=(page_no - 1) * size
    )
    more = "+" if page.total_capped else ""
    cols[3].markdown(f"**{page.total:,}{more} jobs match** · page {page_no}")
    selected = tables.selectable_jobs(
        jobs_frame(page.rows), "jobs_table", column_config={"finished_at": TIME, "updated_at": TIME}
    )
    pages = max(1, -(-page.total // size))
    if pages > 1:
        st.pagination(pages, key=pager_key)
    return page, selected


def jobs_frame(rows: list[insights.JobListRow]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "id": r.id,
                "batch": r.batch_key,
                "status": r.status,
                "model": r.model,
                "prompt": r.prompt,
                "run": r.run_index,
                "attempts": f"{r.attempt_count}/{r.max_attempts}",
                "error_kind": r.error_kind,
                "error": r.error_message,
                "finished_at": r.finished_at,
                "updated_at": r.updated_at,
            }
            for r in rows
        ],
        columns=[
            "id",
            "batch",
            "status",
            "model",
            "prompt",
            "run",
            "attempts",
            "error_kind",
            "error",
            "finished_at",
            "updated_at",
        ],
    )


def action_bar(url: str, query: JobQuery, selected: list[int], total: int) -> None:
    if not context.current().can_act:
        return
    cols = st.columns(4)
    if cols[0].button(f"Re-queue selected ({len(selected)})", disabled=not selected):
        actions.propose("requeue", selected, "selected on Jobs", PAGE)
    if cols[1].button(f"Cancel selected ({len(selected)})", disabled=not selected):
        actions.propose("cancel", selected, "selected on Jobs", PAGE)
    if cols[2].button("Re-queue all matching…", disabled=not total):
        ids = action_targets(url, query, REQUEUEABLE_STATUSES)
        actions.propose(
            "requeue", ids, "failed, cancelled or skipped jobs matching the filter", PAGE
        )
    if cols[3].button("Cancel all matching…", disabled=not total):
        ids = action_targets(url, query, CANCELLABLE_STATUSES)
        actions.propose("cancel", ids, "queued or processing jobs matching the filter", PAGE)


def action_targets(url: str, query: JobQuery, allowed: frozenset[JobStatus]) -> list[int]:
    """Ids of the jobs matching the filter that the action applies to, resolved now."""
    wanted = {s.value for s in allowed}
    statuses = wanted & set(query.statuses) if query.statuses else wanted
    if not statuses:
        return []
    return data.matching_job_ids(url, replace(query, statuses=tuple(sorted(statuses))))


def detail(url: str, page: insights.JobPage, selected: list[int]) -> None:
    st.subheader("Job detail")
    ids = [r.id for r in page.rows]
    default = selected[0] if selected else None
    cols = st.columns([2, 1])
    choice = cols[0].selectbox(
        "Job on this page",
        ids,
        index=ids.index(default) if default in ids else None,
        placeholder="choose a job",
        key="jobs_detail_pick",
    )
    typed = cols[1].number_input("or job id", min_value=0, step=1, value=0, key="jobs_detail_id")
    job_id = int(typed) if typed else choice
    if job_id is None:
        return
    job = data.job_detail(url, int(job_id))
    if job is None:
        st.info(f"No job with id {int(job_id)}.")
        return
    show_job(job)


def show_job(job: insights.JobDetail) -> None:
    st.markdown(
        f"#### Job #{job.id} · `{job.status}` · batch {job.batch_key} · run {job.run_index}"
    )
    cols = st.columns(4)
    cols[0].metric("Attempts", f"{job.attempt_count}/{job.max_attempts}")
    cols[1].metric("Model", job.model_label)
    cols[2].metric("Provider", job.provider)
    cols[3].metric("Prompt id", job.prompt_id)
    job_actions(job)
    st.caption("Prompt")
    st.code(job.prompt_text, language=None, wrap_lines=True)
    if job.error_kind or job.error_message:
        st.caption(f"Last error: {md_escape(job.error_kind or '')}")
        st.code(job.error_message or "", language=None, wrap_lines=True)
    st.caption("Attempts")
    st.dataframe(
        pd.DataFrame(
            [a.__dict__ for a in job.attempts],
            columns=[
                "attempt",
                "worker_id",
                "started_at",
                "finished_at",
                "outcome",
                "error_kind",
                "error_message",
                "latency_ms",
                "calls",
                "prompt_tokens",
                "completion_tokens",
                "cost_usd",
                "cost_source",
                "request_id",
            ],
        ),
        hide_index=True,
        key=f"attempts_{job.id}",
    )
    response_part(job)


def job_actions(job: insights.JobDetail) -> None:
    if not context.current().can_act:
        return
    left, right = st.columns(2)
    if left.button(
        f"Re-queue job #{job.id}",
        disabled=job.status not in {s.value for s in REQUEUEABLE_STATUSES},
    ):
        actions.propose("requeue", [job.id], f"job #{job.id}", PAGE)
    if right.button(
        f"Cancel job #{job.id}", disabled=job.status not in {s.value for s in CANCELLABLE_STATUSES}
    ):
        actions.propose("cancel", [job.id], f"job #{job.id}", PAGE)


def response_part(job: insights.JobDetail) -> None:
    response = job.response
    if response is None:
        st.caption("No response saved.")
        return
    st.caption(
        f"Response · {response.output_mode} · finish {response.finish_reason or '—'} · "
        f"{response.prompt_tokens or 0}+{response.completion_tokens or 0} tokens · "
        f"${response.cost_usd or 0:.5f} ({response.cost_source or 'unpriced'}) · "
        f"{response.latency_ms} ms · request {response.request_id or '—'}"
    )
    # Model output is untrusted: plain text only, never Markdown or HTML.
    st.code(response.answer or "", language=None, wrap_lines=True)
    st.caption("Mentions (position 1 = first in the answer)")
    st.dataframe(
        pd.DataFrame(
            [m.__dict__ for m in job.mentions],
            columns=["position", "brand", "raw_name", "char_offset"],
        ),
        hide_index=True,
        key=f"mentions_{job.id}",
    )


ctx = context.current()
st.title("Jobs")
query = filters(ctx.database_url)
actions.confirmation(PAGE)
page, selected = listing(ctx.database_url, query)
action_bar(ctx.database_url, query, selected, page.total)
detail(ctx.database_url, page, selected)
