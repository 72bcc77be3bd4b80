"""Operator actions (re-queue, cancel): propose -> confirm with the count -> run -> "N re-queued".

An action's targets are job ids resolved from what the operator saw (a table snapshot, or the
filter's matches when the action was proposed), never re-derived at confirm time; the UPDATE in
db.operations is conditional on the current status, so a stale selection or a second click never
touches another job or acts twice (cases C20, C21). Refused outright in read-only mode or before
sign-in, whatever the session state says.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import streamlit as st

from console import context, data
from console.text import md_escape
from db import insights, operations
from db.errors import DatabaseUnavailable, InvalidInput

log = logging.getLogger(__name__)

Kind = Literal["requeue", "cancel"]
_PENDING = "pending_action"
_FLASH = "action_flash"
VERBS = {"requeue": ("Re-queue", "re-queued"), "cancel": ("Cancel", "cancelled")}


@dataclass(frozen=True)
class PendingAction:
    """An action waiting for its confirmation."""

    token: str
    kind: Kind
    job_ids: tuple[int, ...]
    what: str  # how the operator chose them, e.g. "selected on Failures"
    page: str


def propose(kind: Kind, job_ids: list[int], what: str, page: str) -> None:
    """Ask for confirmation of `kind` on `job_ids` (shown by `confirmation(page)`); reruns."""
    if not context.current().can_act:
        st.session_state[_FLASH] = ("error", "Actions are disabled in this console session.")
    elif not job_ids:
        st.session_state[_FLASH] = ("info", f"No job to {VERBS[kind][0].lower()}: {what}.")
    elif len(job_ids) > insights.MAX_ACTION_JOBS:
        st.session_state[_FLASH] = (
            "error",
            f"More than {insights.MAX_ACTION_JOBS:,} jobs match "
            f"({what}); narrow the filter (e.g. by model) and retry.",
        )
    else:
        st.session_state[_PENDING] = PendingAction(
            uuid.uuid4().hex, kind, tuple(sorted(job_ids)), what, page
        )
    st.rerun()  # show the confirmation at the top of the page now


def confirmation(page: str) -> None:
    """The confirmation box for this page's pending action, if any; then the last outcome."""
    pending = st.session_state.get(_PENDING)
    if isinstance(pending, PendingAction) and pending.page == page:
        _confirm_box(pending)
    flash = st.session_state.pop(_FLASH, None)
    if flash:
        level, message = flash
        {"success": st.success, "error": st.error, "info": st.info}[level](md_escape(message))


def _confirm_box(pending: PendingAction) -> None:
    verb = VERBS[pending.kind][0]
    n = len(pending.job_ids)
    with st.container(border=True):
        shown = ", ".join(f"#{i}" for i in pending.job_ids[:20])
        more = f" and {n - 20} more" if n > 20 else ""
        st.warning(md_escape(f"{verb} {n} job{'s' * (n != 1)} ({pending.what})? {shown}{more}"))
        left, right = st.columns(2)
        left.button(
            f"Confirm: {verb.lower()} {n}",
            key=f"confirm:{pending.token}",
            type="primary",
            on_click=_run,
            args=(pending.token,),
        )
        right.button(
            "Keep them as they are",
            key=f"dismiss:{pending.token}",
            on_click=_dismiss,
            args=(pending.token,),
        )


def _dismiss(token: str) -> None:
    pending = st.session_state.get(_PENDING)
    if isinstance(pending, PendingAction) and pending.token == token:
        del st.session_state[_PENDING]


def _run(token: str) -> None:
    # A callback: runs once per click, before the page renders again.
    pending = st.session_state.get(_PENDING)
    if not isinstance(pending, PendingAction) or pending.token != token:
        return  # already done, dismissed or replaced: a second click does nothing
    del st.session_state[_PENDING]
    ctx = context.current()
    if not ctx.can_act:
        st.session_state[_FLASH] = ("error", "Actions are disabled in this console session.")
        return
    try:
        changed = execute(ctx, pending.kind, list(pending.job_ids))
    except (DatabaseUnavailable, InvalidInput) as exc:
        st.session_state[_FLASH] = ("error", f"Nothing changed: {exc}")
        return
    data.clear()
    st.session_state[_FLASH] = (
        "success",
        outcome_message(pending.kind, len(pending.job_ids), len(changed)),
    )


def execute(ctx: context.ConsoleContext, kind: Kind, job_ids: list[int]) -> list[int]:
    """Run the action through db.operations; returns the ids that changed."""
    engine = data.engine_for(ctx.database_url)
    if kind == "requeue":
        changed = operations.requeue_jobs(
            engine,
            job_ids=job_ids,
            actor=context.ACTOR,
            fresh_attempts=ctx.max_attempts,
            deadline_at=ctx.batch_deadline(datetime.now(UTC)),
        )
    else:
        changed = operations.cancel_jobs(engine, job_ids=job_ids, actor=context.ACTOR)
    log.info(
        "console %s: %d of %d jobs changed",
        kind,
        len(changed),
        len(job_ids),
        extra={"action": f"console_{kind}", "count": len(changed)},
    )
    return changed


def outcome_message(kind: Kind, asked: int, changed: int) -> str:
    """ "3 re-queued", plus how many were left alone because their status had moved on."""
    message = f"{changed} {VERBS[kind][1]}"
    if changed < asked:
        message += f"; {asked - changed} left alone (their status changed since you looked)"
    return message
