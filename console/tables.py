"""Tables of jobs the operator can select rows of, with the selection kept by job id (case C20).

Streamlit reports a selection as row positions. The positions are mapped to job ids through the
snapshot of the ids that very table showed, and the table's key changes with its ids, so a refresh
that inserts a new row never shifts a selection onto another job: the selection follows the job ids
(and a job that left the table leaves the selection).
"""

from __future__ import annotations

import hashlib
from typing import Any

import pandas as pd
import streamlit as st


def _digest(ids: list[int]) -> str:
    return hashlib.blake2b(",".join(map(str, ids)).encode(), digest_size=6).hexdigest()


def selected_from_last_render(name: str) -> list[int]:
    """Job ids selected in the table `name` as the operator last saw it."""
    key = st.session_state.get(f"{name}:key")
    snapshot: dict[str, list[int]] = st.session_state.get(f"{name}:snapshot", {})
    if key is None or key not in st.session_state or key not in snapshot:
        return list(st.session_state.get(f"{name}:selected", []))
    shown = snapshot[key]
    rows = st.session_state[key]["selection"]["rows"]
    return [shown[r] for r in rows if 0 <= r < len(shown)]


def selectable_jobs(
    df: pd.DataFrame, name: str, *, column_config: dict[str, Any] | None = None
) -> list[int]:
    """Render `df` (an `id` column of job ids) with multi-row selection; returns selected ids."""
    ids = [int(i) for i in df["id"]] if len(df) else []
    selected = [i for i in selected_from_last_render(name) if i in set(ids)]
    st.session_state[f"{name}:selected"] = selected
    key = f"{name}:{_digest(ids)}"
    st.session_state[f"{name}:key"] = key
    st.session_state[f"{name}:snapshot"] = {key: ids}
    positions = {job_id: row for row, job_id in enumerate(ids)}
    st.dataframe(
        df,
        key=key,
        on_select="rerun",
        selection_mode="multi-row",
        hide_index=True,
        column_config=column_config,
        selection_default={"selection": {"rows": [positions[i] for i in selected]}},
    )
    return selected
