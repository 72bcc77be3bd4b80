"""A job end to end through the real openai client and the simulator over HTTP, on both backends:
answer paths (structured, fenced JSON, fallback, refusal) and failure kinds (retry vs fail)."""

from __future__ import annotations

import logging
import time

import pytest
from sqlalchemy import Engine

from db import catalog
from db.types import ErrorKind, JobStatus
from runner.cli.inputs import brand
from runner.logs import configure_logging
from runner.worker.jobs import JobOutcome
from tests.helpers import (
    attempts,
    fast_settings,
    mentions,
    one_job,
    only_job,
    responses,
    run_once,
)

CRM_BRANDS = ["HubSpot", "Pipedrive", "Salesforce", "Zoho", "Attio"]


@pytest.fixture
def brands(engine: Engine) -> None:
    """The brand catalog the text fallback extracts with."""
    catalog.add_entities(engine, [brand(b) for b in CRM_BRANDS])


def run_until_done(engine: Engine, db_url: str, limit: int = 10, **settings: object) -> list[str]:
    """Run the single job until it leaves the queue or its model is paused; returns each
    attempt's outcome."""
    cfg = fast_settings(db_url, **settings)
    outcomes = []
    for _ in range(limit):
        outcome = run_once(engine, cfg)
        outcomes.append(outcome.value)
        paused = catalog.list_models(engine)[0].paused_at is not None
        if outcome not in (JobOutcome.RETRY, JobOutcome.DEFERRED) or paused:
            return outcomes
        time.sleep(0.06)  # past the test backoff cap
    return outcomes


def test_structured_answer_saved_with_mentions_in_order(engine, db_url, sim):
    one_job(engine, "sim-gpt-4o-mini", sim.base_url)
    assert run_until_done(engine, db_url) == ["succeeded"]
    [response] = responses(engine)
    assert response["output_mode"] == "structured"
    assert response["request_id"] and str(response["request_id"]).startswith("sim-")
    assert response["prompt_tokens"] and response["completion_tokens"]
    assert [m["raw_name"] for m in mentions(engine)] == CRM_BRANDS
    assert [m["position"] for m in mentions(engine)] == [1, 2, 3, 4, 5]
    answer = str(response["answer"])
    for m in mentions(engine):  # positions come from the answer text
        assert answer[int(m["char_offset"]) :].lower().startswith(str(m["raw_name"]).lower())


def test_refusal_saved_as_refusal_with_no_mentions(engine, db_url, sim):
    """C17: content null with a refusal -> a refusal response, zero mentions, job succeeded."""
    one_job(engine, "sim-gpt-4o-mini@refusal", sim.base_url)
    assert run_until_done(engine, db_url) == ["succeeded"]
    [response] = responses(engine)
    assert response["output_mode"] == "refusal"
    assert mentions(engine) == []


def test_truncated_answer_fails_without_partial_mentions(engine, db_url, sim):
    """C17: finish_reason 'length' -> `truncated` failure; no response, no mentions."""
    one_job(engine, "sim-gpt-4o-mini@length", sim.base_url)
    assert run_until_done(engine, db_url) == ["failed"]
    job = only_job(engine)
    assert (job["status"], job["error_kind"]) == ("failed", "truncated")
    assert responses(engine) == [] and mentions(engine) == []


def test_blank_answer_falls_back_then_fails_invalid_output(engine, db_url, sim):
    """C17: blank content with finish 'stop' -> fallback, then `invalid_output`."""
    one_job(engine, "sim-gpt-4o-mini@blank", sim.base_url)
    before = sim.request_count
    assert run_until_done(engine, db_url) == ["failed"]
    assert sim.request_count - before == 2  # structured, then the plain fallback
    assert only_job(engine)["error_kind"] == ErrorKind.INVALID_OUTPUT.value


def test_fenced_json_from_model_without_json_schema(engine, db_url, sim, brands):
    """C18: json_schema rejected, the plain answer is fenced JSON -> parsed, mode 'json', and the
    model is remembered as not supporting json_schema."""
    one_job(engine, "sim-gpt-4o-mini@fenced", sim.base_url)
    assert run_until_done(engine, db_url) == ["succeeded"]
    [response] = responses(engine)
    assert response["output_mode"] == "json"
    assert not str(response["answer"]).startswith("```")
    assert [m["raw_name"] for m in mentions(engine)] == CRM_BRANDS
    [model] = catalog.list_models(engine)
    assert model.supports_json_schema is False


def test_invalid_json_falls_back_to_text_and_catalog(engine, db_url, sim, brands):
    one_job(engine, "sim-gpt-4o-mini@invalid_json", sim.base_url)
    assert run_until_done(engine, db_url) == ["succeeded"]
    [response] = responses(engine)
    assert response["output_mode"] == "text_fallback"
    found = [m["raw_name"] for m in mentions(engine)]
    assert [f.lower() for f in found][:2] == ["hubspot", "pipedrive"]


def test_three_429s_then_success_spend_no_attempt(engine, db_url, sim):
    """C19 and issue 10: three 429s then a 200 -> one success on a ONE-attempt job: a call the
    provider did not serve is deferred, not an attempt; every claim is in job_attempts."""
    one_job(engine, "sim-gpt-4o-mini@rate_limit=3,retry_after=0.01", sim.base_url, max_attempts=1)
    assert run_until_done(engine, db_url) == ["deferred", "deferred", "deferred", "succeeded"]
    job = only_job(engine)
    assert (job["status"], job["attempt_count"], job["deferrals"]) == ("succeeded", 4, 3)
    assert job["max_attempts"] == 4  # raised once per deferral: still one attempt spent
    rows = attempts(engine)
    assert [r["outcome"] for r in rows] == ["deferred", "deferred", "deferred", "succeeded"]
    assert {r["error_kind"] for r in rows[:3]} == {"rate_limited"}
    assert len(responses(engine)) == 1


def test_retry_after_is_honoured(engine, db_url, sim):
    one_job(engine, "sim-gpt-4o-mini@rate_limit=1,retry_after=30", sim.base_url)
    assert run_once(engine, fast_settings(db_url)) is JobOutcome.DEFERRED
    job = only_job(engine)
    wait = (job["scheduled_for"] - job["updated_at"]).total_seconds()  # type: ignore[operator]
    assert 29 <= wait <= 31


def test_attempts_spent_on_transient_errors_fail(engine, db_url, sim):
    one_job(engine, "sim-gpt-4o-mini@error500=9", sim.base_url, max_attempts=2)
    assert run_until_done(engine, db_url) == ["retry", "failed"]
    job = only_job(engine)
    assert (job["status"], job["error_kind"], job["attempt_count"]) == ("failed", "server_error", 2)


def test_a_bad_request_fails_at_once(engine, db_url, sim):
    """C5: a 400 is the job's own permanent error: failed on the first attempt."""
    one_job(engine, "sim-gpt-4o-mini@status=400", sim.base_url)
    assert run_until_done(engine, db_url) == ["failed"]
    job = only_job(engine)
    assert (job["status"], job["error_kind"], job["attempt_count"]) == ("failed", "bad_request", 1)


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        ("status=401", ErrorKind.AUTH),
        ("status=402", ErrorKind.PAYMENT_REQUIRED),
        ("status=404", ErrorKind.NOT_FOUND),
    ],
)
def test_model_level_errors_pause_the_model_and_keep_the_job(engine, db_url, sim, fault, kind):
    """Issue 10: a bad key, spent credits or a missing model id is the model's, not the job's:
    each of the K=3 failures defers the job (no attempt spent), the third pauses the model
    ("paused: <kind>: <message>"), and the job stays queued for `models resume`."""
    one_job(engine, f"sim-gpt-4o-mini@{fault}", sim.base_url)
    assert run_until_done(engine, db_url) == ["deferred", "deferred", "deferred"]
    job = only_job(engine)
    assert (job["status"], job["error_kind"], job["attempt_count"]) == ("queued", kind.value, 3)
    assert job["max_attempts"] == 6  # none of its 3 attempts spent
    [model] = catalog.list_models(engine)
    assert model.state == "paused" and model.failure_streak == 3
    assert str(model.paused_reason).startswith(f"{kind.value}: HTTP {fault[-3:]}")


def test_without_pausing_a_model_level_error_fails_the_job(engine, db_url, sim):
    """PROMPTBATCH_PAUSE_AFTER=0: a 401 fails the job on its first attempt (C5's old rule)."""
    one_job(engine, "sim-gpt-4o-mini@status=401", sim.base_url)
    assert run_until_done(engine, db_url, pause_after=0) == ["failed"]
    assert (only_job(engine)["status"], only_job(engine)["error_kind"]) == ("failed", "auth")
    assert catalog.list_models(engine)[0].state == "active"


def test_openrouter_200_with_error_429_is_rate_limited(engine, db_url, sim):
    """C16: HTTP 200 with {"choices": null, "error": {"code": 429}} is not a success."""
    one_job(engine, "sim-gpt-4o-mini@or_error=429,or_error_times=1", sim.base_url)
    assert run_once(engine, fast_settings(db_url)) is JobOutcome.DEFERRED
    job = only_job(engine)
    assert job["error_kind"] == "rate_limited"
    assert "429" in str(job["error_message"]) and "SimProvider" in str(job["error_message"])
    assert responses(engine) == []
    time.sleep(0.06)
    assert run_once(engine, fast_settings(db_url)) is JobOutcome.SUCCEEDED


def test_openrouter_200_with_schema_error_uses_fallback(engine, db_url, sim, brands):
    """C16: the same body with code 400 and a schema complaint -> json_schema marked unsupported
    and the fallback path used."""
    one_job(engine, "sim-gpt-4o-mini@or_error=400,or_error_times=1", sim.base_url)
    assert run_until_done(engine, db_url) == ["succeeded"]
    [response] = responses(engine)
    assert response["output_mode"] == "text_fallback"
    assert catalog.list_models(engine)[0].supports_json_schema is False


def test_hanging_server_times_out_within_bound(engine, db_url, sim):
    """C15: a server that accepts and never answers -> `timeout` within the configured bound."""
    one_job(engine, "sim-gpt-4o-mini@hang", sim.base_url, max_attempts=1)
    started = time.monotonic()
    assert run_until_done(engine, db_url, request_timeout=1.0) == ["failed"]
    assert time.monotonic() - started < 5
    assert only_job(engine)["error_kind"] == "timeout"


def test_connection_refused_is_deferred(engine, db_url):
    """A refused connection never reached the provider: deferred ('unavailable'), no attempt."""
    one_job(engine, "m", "http://127.0.0.1:9/v1", max_attempts=1)
    assert run_once(engine, fast_settings(db_url)) is JobOutcome.DEFERRED
    job = only_job(engine)
    assert (job["status"], job["error_kind"], job["max_attempts"]) == ("queued", "unavailable", 2)


def test_status_reports_job_status(engine, db_url, sim):
    one_job(engine, "sim-gpt-4o-mini", sim.base_url, runs=2)
    run_until_done(engine, db_url)
    from db.insights import batch_overview

    counts = batch_overview(engine, "2026-11-30")
    succeeded, queued = counts.get(JobStatus.SUCCEEDED), counts.get(JobStatus.QUEUED)
    assert (succeeded, queued, counts.total) == (1, 1, 2)


def test_a_call_at_info_logs_the_job_not_each_http_request(engine, db_url, sim, capfd):
    """The SDK's HTTP stack (httpx on openai 2.x, httpx2 on 3.x) logs every request at INFO:
    a line per call, half a millisecond of a worker's CPU per job at 1,024 in flight."""
    settings = fast_settings(db_url, log_level="INFO")
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging(settings)
    try:
        one_job(engine, "sim-gpt-4o-mini", sim.base_url)
        assert run_once(engine, settings) is JobOutcome.SUCCEEDED
    finally:
        root.handlers[:], root.level = handlers, level
    err = capfd.readouterr().err
    assert "job succeeded" in err
    assert "HTTP Request" not in err
