"""Workers: the live runner processes (host, pid, processes x concurrency, in flight, last seen)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from console import context, data, widgets

TIME = st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss")


def workers_section(url: str, stale_after: float, include_stopped: bool, every: int | None) -> None:
    @st.fragment(run_every=every)
    def live() -> None:
        with data.database_banner():
            rows = data.workers(url, stale_after, include_stopped)
            live_rows = [w for w in rows if w.stopped_at is None and not w.stale]
            cols = st.columns(4)
            cols[0].metric("Live worker processes", len(live_rows))
            cols[1].metric("Calls in flight at most", sum(w.concurrency for w in live_rows))
            cols[2].metric("Jobs in flight", sum(w.in_flight for w in live_rows))
            cols[3].metric(
                "Stale",
                sum(w.stale for w in rows),
                help=f"Not seen for more than {stale_after:.0f} s and not stopped: "
                "probably dead; its jobs come back when their leases expire",
            )
            frame = pd.DataFrame(
                [
                    {
                        "state": "stopped" if w.stopped_at else ("STALE" if w.stale else "live"),
                        "host": w.hostname,
                        "pid": w.pid,
                        "shape": f"{w.processes}x{w.concurrency}",
                        "in_flight": w.in_flight,
                        "last_seen_at": w.last_seen_at,
                        "started_at": w.started_at,
                        "stopped_at": w.stopped_at,
                        "id": w.id,
                    }
                    for w in rows
                ],
                columns=[
                    "state",
                    "host",
                    "pid",
                    "shape",
                    "in_flight",
                    "last_seen_at",
                    "started_at",
                    "stopped_at",
                    "id",
                ],
            )
            st.dataframe(
                frame,
                hide_index=True,
                column_config={
                    "shape": st.column_config.TextColumn("processes x concurrency"),
                    "last_seen_at": TIME,
                    "started_at": TIME,
                    "stopped_at": TIME,
                },
            )
            if not rows:
                st.info("No runner is registered. Start one with `promptbatch run`.")

    live()


ctx = context.current()
st.title("Workers")
cols = st.columns(2)
with cols[0]:
    every = widgets.live_interval("workers_paused")
include_stopped = cols[1].toggle("Show stopped workers", key="workers_stopped")
workers_section(ctx.database_url, ctx.stale_after_seconds, include_stopped, every)
