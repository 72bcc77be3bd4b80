"""Small page parts used on several pages: the batch picker and the live-refresh switch."""

from __future__ import annotations

import streamlit as st

from console import context, data

LIVE_SECONDS = 5


def batch_picker(url: str, *, key: str, label: str = "Batch (UTC date)") -> str:
    """A select of the known batches and today's: today's by default when it has jobs, else the
    newest."""
    known = data.batch_keys(url)
    today = context.today_batch_key()
    options = known if today in known else sorted({today, *known}, reverse=True)
    default = today if today in known or not known else known[0]
    if st.session_state.get(key) not in options:
        st.session_state[key] = default
    return st.selectbox(label, options, key=key)


def live_interval(key: str) -> int | None:
    """The auto-refresh period in seconds, or None while the operator paused it."""
    paused = st.toggle("Pause live refresh", key=key)
    return None if paused else LIVE_SECONDS
