"""The console's data: one cached engine per database URL, and db/insights reads cached briefly.

The engine (pool_pre_ping on PostgreSQL) is the only cached resource; connections are never cached,
so a restarted database is reconnected on the next query (case C22). A DatabaseUnavailable shows
one banner and the page retries on its next refresh; cached data is never stale for longer than
its ttl (seconds).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import streamlit as st

from console.text import md_escape
from db import catalog, insights, migrate
from db.engine import Engine, make_engine
from db.errors import DatabaseUnavailable, SchemaOutOfDate
from db.filters import JobQuery

log = logging.getLogger(__name__)

LIVE_TTL = 5  # seconds: counts and charts that move while a batch runs
SLOW_TTL = 60  # seconds: history, catalog, mentions


def _dispose(engine: Engine) -> None:
    engine.dispose()


@st.cache_resource(show_spinner=False, on_release=_dispose)
def engine_for(url: str) -> Engine:
    """The engine for `url`, built once per process."""
    return make_engine(url)


def clear() -> None:
    """Forget cached data (after an action, or on "Refresh now")."""
    st.cache_data.clear()


@contextmanager
def database_banner() -> Iterator[None]:
    """Show a DatabaseUnavailable or SchemaOutOfDate as one banner instead of a traceback."""
    try:
        yield
    except DatabaseUnavailable as exc:
        log.warning("console query failed: %s", exc, extra={"action": "console_db_unavailable"})
        st.error(
            "**Database unavailable.** The console retries on the next refresh.\n\n"
            + md_escape(str(exc)),
            icon="🔌",
        )
    except SchemaOutOfDate as exc:
        st.error(md_escape(str(exc)), icon="🛠")


@st.cache_data(ttl=SLOW_TTL, show_spinner=False)
def check_schema(url: str) -> None:
    """Raise SchemaOutOfDate unless the database is migrated (cached only when it is)."""
    migrate.require_current(engine_for(url))


@st.cache_data(ttl=LIVE_TTL, show_spinner=False)
def batch_keys(url: str) -> list[str]:
    return insights.batch_keys(engine_for(url))


@st.cache_data(ttl=LIVE_TTL, show_spinner=False)
def overview(url: str, batch_key: str) -> insights.Overview:
    return insights.batch_overview(engine_for(url), batch_key)


@st.cache_data(ttl=LIVE_TTL, show_spinner=False)
def progress_by_model(url: str, batch_key: str) -> list[insights.ModelProgress]:
    return insights.progress_by_model(engine_for(url), batch_key)


@st.cache_data(ttl=LIVE_TTL, show_spinner=False)
def completions_per_minute(url: str, batch_key: str) -> list[insights.MinuteCount]:
    return insights.completions_per_minute(engine_for(url), batch_key)


@st.cache_data(ttl=SLOW_TTL, show_spinner=False)
def batch_history(url: str) -> list[insights.BatchSummary]:
    return insights.batch_history(engine_for(url))


@st.cache_data(ttl=LIVE_TTL, show_spinner=False)
def jobs_page(
    url: str,
    query: JobQuery,
    sort: insights.SortKey,
    *,
    descending: bool,
    limit: int,
    offset: int,
) -> insights.JobPage:
    return insights.list_jobs_page(
        engine_for(url), query, sort=sort, descending=descending, limit=limit, offset=offset
    )


def matching_job_ids(url: str, query: JobQuery) -> list[int]:
    """Not cached: an action's targets are resolved when the operator asks for it."""
    return insights.matching_job_ids(engine_for(url), query)


@st.cache_data(ttl=LIVE_TTL, show_spinner=False)
def job_detail(url: str, job_id: int) -> insights.JobDetail | None:
    return insights.job_detail(engine_for(url), job_id)


@st.cache_data(ttl=LIVE_TTL, show_spinner=False)
def failure_groups(url: str, batch_key: str) -> list[insights.FailureGroup]:
    return insights.failure_groups(engine_for(url), batch_key)


@st.cache_data(ttl=SLOW_TTL, show_spinner=False)
def error_kinds(url: str, batch_key: str | None) -> list[str]:
    return insights.error_kinds(engine_for(url), batch_key)


@st.cache_data(ttl=SLOW_TTL, show_spinner=False)
def brand_visibility(url: str, first_key: str, last_key: str) -> list[insights.BrandVisibility]:
    return insights.brand_visibility(engine_for(url), first_key, last_key)


@st.cache_data(ttl=SLOW_TTL, show_spinner=False)
def brand_trend(
    url: str, first_key: str, last_key: str, entity_ids: tuple[int, ...]
) -> list[insights.BrandDay]:
    return insights.brand_trend(engine_for(url), first_key, last_key, entity_ids)


@st.cache_data(ttl=LIVE_TTL, show_spinner=False)
def workers(
    url: str, stale_after_seconds: float, include_stopped: bool
) -> list[insights.WorkerStatus]:
    return insights.worker_statuses(
        engine_for(url), stale_after_seconds=stale_after_seconds, include_stopped=include_stopped
    )


@st.cache_data(ttl=SLOW_TTL, show_spinner=False)
def prompts(url: str) -> list[catalog.PromptRow]:
    return catalog.list_prompts(engine_for(url))


@st.cache_data(ttl=SLOW_TTL, show_spinner=False)
def models(url: str) -> list[catalog.ModelRow]:
    return catalog.list_models(engine_for(url))


@st.cache_data(ttl=LIVE_TTL, show_spinner=False)
def paused_models(url: str) -> list[insights.PausedModel]:
    return insights.paused_models(engine_for(url))


@st.cache_data(ttl=LIVE_TTL, show_spinner=False)
def missed_batches(url: str) -> list[str]:
    """Batch keys the scheduler found not enqueued on their day, last 30 days (audit log)."""
    return insights.missed_batches(engine_for(url))
