"""Shared by the console tests: a realistic small database, and an AppTest on console/app.py.

The data is made through db's named operations (enqueue, claim, complete, fail, cancel) exactly as
the runner makes it; only a stale worker's clock is set directly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import streamlit as st
from sqlalchemy import Engine, select, update
from streamlit.testing.v1 import AppTest

from db import catalog, operations, queue, workers
from db.catalog import NewPrompt
from db.engine import read_tx, write_tx
from db.models import AuditLog, PromptJob, Worker
from db.types import (
    AnswerRecord,
    ClaimedJob,
    ErrorKind,
    FailureRecord,
    MentionRecord,
    OutputMode,
)
from tests import factories as f

APP = Path(__file__).resolve().parents[1] / "console" / "app.py"
HOSTILE_PROMPT = "Best CRM? <script>alert('x')</script> **bold** [link](http://evil.test)"
HOSTILE_ANSWER = "<img src=x onerror=alert(1)> **HubSpot** leads; then Salesforce and Pipedrive."
BRANDS = ("HubSpot", "Salesforce", "Pipedrive", "Zoho CRM", "Attio")


def today() -> str:
    return datetime.now(UTC).date().isoformat()


@dataclass
class Seeded:
    batch: str
    previous: str
    model_ids: list[int]
    succeeded: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    queued: list[int] = field(default_factory=list)
    processing: list[int] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)


def answer(brands: tuple[str, ...], body: str | None = None) -> AnswerRecord:
    text = body or "For a small team: " + ", ".join(brands) + "."
    mentions = tuple(
        MentionRecord(
            raw_name=b,
            display=b,
            key=b.casefold().replace(" ", ""),
            position=i,
            char_offset=text.index(b),
        )
        for i, b in enumerate(brands, start=1)
    )
    return AnswerRecord(
        answer=text,
        raw_body="{}",
        output_mode=OutputMode.STRUCTURED,
        finish_reason="stop",
        prompt_tokens=100,
        completion_tokens=250,
        latency_ms=900,
        request_id="req-1",
        mentions=mentions,
    )


def seed(engine: Engine, *, batch: str | None = None) -> Seeded:
    """Yesterday's batch all done; today's: 6 succeeded, 3 failed, 1 queued (retry), 1
    processing, 1 cancelled, out of 6 prompts x 2 models."""
    key = batch or today()
    previous = (datetime.fromisoformat(key) - timedelta(days=1)).date().isoformat()
    texts = [HOSTILE_PROMPT] + [f"Which CRM suits a team of {n}?" for n in range(2, 7)]
    catalog.import_prompts(engine, [NewPrompt(t, "crm", 1) for t in texts], actor="test")
    model_ids = [
        catalog.add_model(
            engine,
            provider="compatible",
            name=name,
            label=label,
            base_url="http://127.0.0.1:9/v1",
            actor="test",
            input_usd_per_mtok=0.15,
            output_usd_per_mtok=0.6,
        )
        for name, label in (("sim-a", "Sim A"), ("sim-b", "Sim B"))
    ]
    out = Seeded(key, previous, model_ids)
    queue.enqueue_batch(engine, previous, max_attempts=3, actor="test")
    done = [
        f.completion(job, answer(BRANDS[i % 3 : i % 3 + 3]), 0.0004)
        for i, job in enumerate(claim_all(engine))
    ]
    f.complete_all(engine, done)  # one transaction: a worker's group commit
    queue.enqueue_batch(engine, key, max_attempts=3, actor="test")
    jobs = claim_all(engine)
    done = []
    for i, job in enumerate(jobs[:6]):
        body = HOSTILE_ANSWER if i == 0 else None
        brands = ("HubSpot", "Salesforce", "Pipedrive") if i == 0 else BRANDS[i % 4 : i % 4 + 2]
        done.append(f.completion(job, answer(brands, body), 0.0005))
        out.succeeded.append(job.id)
    f.complete_all(engine, done)
    for job, kind, message in zip(
        jobs[6:9],
        (ErrorKind.BAD_REQUEST, ErrorKind.BAD_REQUEST, ErrorKind.FLAGGED),
        (
            "Invalid schema for response_format <b>x</b>",
            "Invalid schema for response_format <b>x</b>",
            "403 Your input was flagged by moderation",
        ),
        strict=True,
    ):
        f.fail(engine, job, FailureRecord(kind, message, latency_ms=50), 0)
        out.failed.append(job.id)
    f.fail(engine, jobs[9], FailureRecord(ErrorKind.SERVER_ERROR, "500 try again"), 60)
    out.queued.append(jobs[9].id)
    out.processing.append(jobs[10].id)
    operations.cancel_jobs(engine, job_ids=[jobs[11].id], actor="test")
    out.cancelled.append(jobs[11].id)
    register_workers(engine)
    return out


def claim_all(engine: Engine) -> list[ClaimedJob]:
    return sorted(
        queue.claim_jobs(engine, "host-1:101:0", 1000, lease_seconds=600), key=lambda j: j.id
    )


def register_workers(engine: Engine) -> None:
    for wid, pid in (("host-1:101:0", 101), ("host-2:202:0", 202)):
        workers.register_worker(
            engine, workers.WorkerInfo(wid, f"runner-{pid}", wid.split(":")[0], pid, 2, 4)
        )
    workers.touch_worker(engine, "host-1:101:0", 1)
    with write_tx(engine) as conn:  # host-2 went silent ten minutes ago
        conn.execute(
            update(Worker)
            .where(Worker.id == "host-2:202:0")
            .values(last_seen_at=datetime.now(UTC) - timedelta(minutes=10))
        )


def fail_one_more(engine: Engine) -> int:
    """A new failure arrives (case C20): the queued job is claimed and fails permanently."""
    (job,) = queue.claim_jobs(
        engine, "host-1:101:0", 1, lease_seconds=600, now=datetime.now(UTC) + timedelta(minutes=5)
    )
    f.fail(engine, job, FailureRecord(ErrorKind.BAD_REQUEST, "400 new failure"), 0)
    return job.id


def statuses(engine: Engine) -> dict[int, str]:
    with read_tx(engine) as conn:
        return {int(i): str(s) for i, s in conn.execute(select(PromptJob.id, PromptJob.status))}


def job_row(engine: Engine, job_id: int) -> Any:
    """The job's row: every column of prompt_jobs."""
    with read_tx(engine) as conn:
        return conn.execute(select(PromptJob).where(PromptJob.id == job_id)).one()


def audit_rows(engine: Engine, action: str) -> list[tuple[str, int]]:
    with read_tx(engine) as conn:
        rows = conn.execute(
            select(AuditLog.target, AuditLog.count)
            .where(AuditLog.action == action, AuditLog.actor == "console")
            .order_by(AuditLog.id)
        )
        return [(str(target), int(n)) for target, n in rows]


def app(monkeypatch: pytest.MonkeyPatch, url: str, **env: str) -> AppTest:
    """An AppTest on console/app.py against `url`, with extra environment (e.g. passwords)."""
    monkeypatch.setenv("DATABASE_URL", url)
    for name in (
        "CONSOLE_PASSWORD",
        "CONSOLE_READ_ONLY",
        "PROMPTBATCH_CONSOLE_PASSWORD",
        "PROMPTBATCH_CONSOLE_READ_ONLY",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    st.cache_data.clear()
    return AppTest.from_file(str(APP), default_timeout=60)


def texts(at: AppTest) -> str:
    """Everything the page shows as text, joined, Markdown escapes removed (for assertions)."""
    parts = [
        str(getattr(e, "value", ""))
        for kind in ("markdown", "text", "code", "caption", "success", "error", "info", "warning")
        for e in at.get(kind)
    ]
    return re.sub(r"\\(.)", r"\1", "\n".join(parts))


def test_chart_labels_show_markup_a_model_wrote_as_text() -> None:
    """Issue 12: Plotly renders a subset of HTML in labels, legends and hovers; a brand name a
    model invented with markup in it (an outside link, restyled text) must show as typed."""
    import pandas as pd

    from console import charts

    evil = '<a href="https://evil.example">Acme</a> <b>CRM</b>'
    shown = '&lt;a href="https://evil.example"&gt;Acme&lt;/a&gt; &lt;b&gt;CRM&lt;/b&gt;'
    sov = charts.share_of_voice(pd.DataFrame({"brand": [evil], "share_of_voice": [1.0]}))
    assert list(sov.data[0].y) == [shown]
    rate = charts.mention_rate_by_model(
        pd.DataFrame({"brand": [evil], "model": ["<i>m</i>"], "mention_rate": [0.5]})
    )
    assert list(rate.data[0].x) == [shown] and rate.data[0].name == "&lt;i&gt;m&lt;/i&gt;"
    trend = charts.mention_trend(
        pd.DataFrame({"batch": ["2026-12-01"], "brand": [evil], "mention_rate": [0.5]})
    )
    assert trend.data[0].name == shown
    progress = charts.progress_by_model(
        pd.DataFrame({"model": ["<b>x</b>"], "status": ["queued"], "jobs": [3]})
    )
    assert list(progress.data[0].y) == ["&lt;b&gt;x&lt;/b&gt;"]
