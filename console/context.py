"""What every page needs to know about this console session: where the data is, who may act."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import streamlit as st

from runner.settings import Settings

_KEY = "console_context"
AUTH_KEY = "console_authenticated"
ACTOR = "console"


@dataclass(frozen=True)
class ConsoleContext:
    """Built from Settings once per script run by app.py; pages read it with `current()`."""

    database_url: str
    read_only: bool  # CONSOLE_READ_ONLY: no action is offered or accepted
    password_required: bool  # CONSOLE_PASSWORD is set
    max_attempts: int  # the fresh attempt budget a re-queue gives
    stale_after_seconds: float  # a worker not seen for this long is marked stale
    batch_deadline: Callable[[datetime], datetime]  # Settings.batch_deadline: when jobs enqueued
    # or re-queued at a moment must be done

    @property
    def can_act(self) -> bool:
        """True when actions are offered and accepted in this session."""
        signed_in = not self.password_required or bool(st.session_state.get(AUTH_KEY))
        return signed_in and not self.read_only


def load(settings: Settings) -> ConsoleContext:
    """The context for this run, published for the pages."""
    ctx = ConsoleContext(
        settings.database_url,
        settings.console_read_only,
        settings.console_password is not None,
        settings.max_attempts,
        settings.lease_seconds,
        settings.batch_deadline,
    )
    st.session_state[_KEY] = ctx
    return ctx


def current() -> ConsoleContext:
    """The context app.py published for this run."""
    ctx = st.session_state.get(_KEY)
    if not isinstance(ctx, ConsoleContext):
        raise RuntimeError("console pages run through console/app.py (st.navigation)")
    return ctx


def today_batch_key() -> str:
    """Today's batch key: the UTC date, YYYY-MM-DD (DESIGN.md)."""
    return datetime.now(UTC).date().isoformat()
