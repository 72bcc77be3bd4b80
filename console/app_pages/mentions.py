"""Mentions: for a range of batches, each brand's mention rate, share of voice and average position,
over all models and per model, and its mention rate per day."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from console import charts, context, data
from db import insights

TOP_TREND = 6  # brands drawn in the per-day trend


def batch_range(url: str) -> tuple[str, str] | None:
    keys = data.batch_keys(url)
    if not keys:
        st.info("No batch yet.")
        return None
    cols = st.columns(2)
    last = cols[1].selectbox("To batch", keys, index=0, key="mentions_to")
    older = [k for k in keys if k <= last]
    first = cols[0].selectbox(
        "From batch", older, index=min(6, len(older) - 1), key="mentions_from"
    )
    return first, last


ctx = context.current()
st.title("Mentions")
chosen = batch_range(ctx.database_url)
if chosen is not None:
    first, last = chosen
    rows = data.brand_visibility(ctx.database_url, first, last)
    frame = pd.DataFrame(
        [r.__dict__ for r in rows],
        columns=[
            "entity_id",
            "brand",
            "model_id",
            "model",
            "answers_mentioning",
            "answers",
            "mention_rate",
            "share_of_voice",
            "avg_position",
        ],
    )
    overall = frame[frame["model"] == insights.ALL_MODELS]
    per_model = frame[frame["model"] != insights.ALL_MODELS]
    left, right = st.columns(2)
    left.plotly_chart(charts.share_of_voice(overall.head(15)), key="chart_sov")
    top = overall.head(TOP_TREND)
    right.plotly_chart(
        charts.mention_rate_by_model(per_model[per_model["entity_id"].isin(top["entity_id"])]),
        key="chart_rate",
    )
    trend = data.brand_trend(ctx.database_url, first, last, tuple(int(i) for i in top["entity_id"]))
    st.plotly_chart(
        charts.mention_trend(
            pd.DataFrame(
                [
                    {"batch": d.batch_key, "brand": d.brand, "mention_rate": d.mention_rate}
                    for d in trend
                ],
                columns=["batch", "brand", "mention_rate"],
            )
        ),
        key="chart_trend",
    )
    percent = st.column_config.NumberColumn(format="percent")
    st.dataframe(
        frame.drop(columns=["entity_id", "model_id"]),
        hide_index=True,
        column_config={
            "mention_rate": percent,
            "share_of_voice": percent,
            "avg_position": st.column_config.NumberColumn(format="%.2f"),
        },
    )
    st.caption(
        "Mention rate: answers mentioning the brand / answers (refusals excluded). "
        "Share of voice: the brand's mentions / all mentions. Position 1 = named first."
    )
