"""The model call as the providers document it (issue 9), through the real openai client over
HTTP to the simulator speaking each provider's shapes, on both backends: the whole-call deadline,
what each provider is sent, ids and cost, error shapes, answers in prose, and where keys may go."""

from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy import Engine, update

from db import catalog, queue
from db.catalog import NewPrompt
from db.endpoints import OPENAI_BASE_URL
from db.engine import write_tx
from db.errors import InvalidInput
from db.models import Model
from db.types import ErrorKind
from runner.cli.inputs import brand
from runner.llm.client import build_sdk_client
from runner.simulator.server import SimulatorServer
from runner.worker.jobs import JobOutcome
from tests.helpers import (
    BATCH,
    CRM_PROMPT,
    attempts,
    fast_settings,
    mentions,
    one_job,
    only_job,
    responses,
    run_once,
)
from tests.test_cli import assert_user_error, cli

KEYS = {"openai_api_key": "sk-test-openai", "openrouter_api_key": "sk-or-test"}


def provider_job(
    engine: Engine, sim: SimulatorServer, provider: str, model: str, **settings: object
) -> None:
    """One prompt on an openai/openrouter model whose custom host is the simulator (loopback)."""
    catalog.import_prompts(engine, [NewPrompt(CRM_PROMPT, "crm", 1)])
    catalog.add_model(
        engine, provider=provider, name=model, base_url=sim.base_url, custom_host=True, **settings
    )
    queue.enqueue_batch(engine, BATCH, max_attempts=1)


def run(engine: Engine, db_url: str, **overrides: object) -> JobOutcome:
    return run_once(engine, fast_settings(db_url, **{**KEYS, **overrides}))


# --- the deadline ----------------------------------------------------------------------------


def test_trickling_server_fails_as_timeout_within_the_deadline(engine, db_url, sim):
    """Headers at once, then one body byte a second: a per-read timeout never fires; the call's
    wall-clock deadline does, within deadline + 1 s."""
    one_job(engine, "sim-gpt-4o-mini@trickle=1000", sim.base_url, max_attempts=1)
    started = time.monotonic()
    assert run(engine, db_url, request_timeout=2.0) is JobOutcome.FAILED
    elapsed = time.monotonic() - started
    assert 2.0 <= elapsed < 3.0, elapsed
    job = only_job(engine)
    assert job["error_kind"] == "timeout" and "whole call" in str(job["error_message"])


# --- what each provider is sent ---------------------------------------------------------------


def test_openai_gets_max_completion_tokens_and_its_org_only(engine, db_url, sim):
    provider_job(engine, sim, "openai", "gpt-4o-mini@style=openai")
    org = {"openai_org_id": "org-123", "openai_project_id": "proj-9"}
    assert run(engine, db_url, **org) is JobOutcome.SUCCEEDED
    [request] = sim.captured
    body = request.body
    assert body["max_completion_tokens"] == 4096 and "max_tokens" not in body
    assert "temperature" not in body and "seed" not in body and "provider" not in body
    assert body["response_format"]["type"] == "json_schema"
    assert request.header("OpenAI-Organization") == "org-123"
    assert request.header("OpenAI-Project") == "proj-9"
    assert request.header("Authorization") == "Bearer sk-test-openai"
    assert str(responses(engine)[0]["request_id"]).startswith("req_")


def test_openrouter_gets_max_tokens_require_parameters_and_attribution(engine, db_url, sim):
    provider_job(
        engine, sim, "openrouter", "openai/gpt-4o-mini@style=openrouter", temperature=0.2, seed=7
    )
    org = {"openai_org_id": "org-123", "openai_project_id": "proj-9"}
    assert run(engine, db_url, **org) is JobOutcome.SUCCEEDED
    [request] = sim.captured
    body = request.body
    assert body["max_tokens"] == 4096 and "max_completion_tokens" not in body
    assert body["provider"] == {"require_parameters": True}
    assert (body["temperature"], body["seed"]) == (0.2, 7)
    assert request.header("X-OpenRouter-Title") == request.header("X-Title") == "promptbatch"
    assert request.header("HTTP-Referer")
    assert request.header("OpenAI-Organization") is None  # OpenAI's ids stay with OpenAI
    assert request.header("OpenAI-Project") is None


def test_compatible_server_gets_the_models_max_tokens_and_no_openai_ids(engine, db_url, sim):
    one_job(engine, "sim-gpt-4o-mini", sim.base_url)
    model_id = catalog.list_models(engine)[0].id
    catalog.update_model(engine, model_id, max_tokens=300)
    assert run(engine, db_url, openai_org_id="org-123") is JobOutcome.SUCCEEDED
    [request] = sim.captured
    assert request.body["max_tokens"] == 300 and "provider" not in request.body
    assert request.header("OpenAI-Organization") is None


def test_answer_past_max_tokens_is_truncated_and_its_tokens_recorded(engine, db_url, sim):
    """The provider cuts at max_tokens (finish_reason length): a failure, never an answer; the
    attempt still records what was paid for."""
    one_job(engine, "sim-gpt-4o-mini", sim.base_url, max_attempts=1)
    catalog.update_model(engine, catalog.list_models(engine)[0].id, max_tokens=20)
    assert run(engine, db_url) is JobOutcome.FAILED
    assert only_job(engine)["error_kind"] == "truncated" and responses(engine) == []
    [attempt] = attempts(engine)
    assert attempt["completion_tokens"] == 20 and attempt["calls"] == 1


# --- ids and cost -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("style", "prefix"), [("openai", "req_"), ("openrouter", "gen-"), ("sim", "sim-")]
)
def test_request_id_from_header_or_body(engine, db_url, sim, style, prefix):
    one_job(engine, f"sim-gpt-4o-mini@style={style}", sim.base_url)
    assert run(engine, db_url) is JobOutcome.SUCCEEDED
    [response] = responses(engine)
    assert str(response["request_id"]).startswith(prefix)
    assert attempts(engine)[0]["request_id"] == response["request_id"]


def test_litellm_call_id_is_the_request_id(engine, db_url, sim):
    one_job(engine, "sim-gpt-4o-mini@style=litellm", sim.base_url)
    assert run(engine, db_url) is JobOutcome.SUCCEEDED
    request_id = str(responses(engine)[0]["request_id"])
    assert uuid.UUID(request_id)  # x-litellm-call-id, not the body's chatcmpl- id


def test_openrouter_usage_cost_is_stored_as_charged(engine, db_url, sim):
    provider_job(
        engine,
        sim,
        "openrouter",
        "m@style=openrouter",
        input_usd_per_mtok=100.0,
        output_usd_per_mtok=100.0,
    )
    assert run(engine, db_url) is JobOutcome.SUCCEEDED
    [response] = responses(engine)
    tokens = int(response["prompt_tokens"]) + int(response["completion_tokens"])
    assert response["cost_source"] == "provider"
    assert response["cost"] == pytest.approx(tokens * 0.5 / 1e6, abs=1e-9)  # not the prices'


def test_priced_model_without_reported_cost_is_an_estimate(engine, db_url, sim):
    one_job(engine, "sim-gpt-4o-mini", sim.base_url)
    catalog.update_model(
        engine, catalog.list_models(engine)[0].id, input_usd_per_mtok=1.0, output_usd_per_mtok=2.0
    )
    assert run(engine, db_url) is JobOutcome.SUCCEEDED
    [response] = responses(engine)
    expected = (int(response["prompt_tokens"]) + 2 * int(response["completion_tokens"])) / 1e6
    assert (response["cost_source"], response["cost"]) == ("estimate", pytest.approx(expected))


# --- error shapes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "kind", "outcome"),
    [
        ("status=403", ErrorKind.FLAGGED, JobOutcome.FAILED),
        ("region", ErrorKind.FORBIDDEN, JobOutcome.DEFERRED),
        ("status=402", ErrorKind.PAYMENT_REQUIRED, JobOutcome.DEFERRED),
        ("quota", ErrorKind.QUOTA_EXCEEDED, JobOutcome.DEFERRED),
        ("spend_wait=0.01", ErrorKind.RATE_LIMITED, JobOutcome.DEFERRED),
        ("rate_limit=1", ErrorKind.RATE_LIMITED, JobOutcome.DEFERRED),
        ("status=503", ErrorKind.UNAVAILABLE, JobOutcome.DEFERRED),
        ("status=500", ErrorKind.SERVER_ERROR, JobOutcome.RETRY),
    ],
)
def test_account_errors_are_told_apart(engine, db_url, sim, fault, kind, outcome):
    """A moderation 403 is the prompt's (failed); a region 403, a 402 without Retry-After and a
    spent quota are the account's (model-level: deferred, counted to the pause); 402 with
    Retry-After, 429 and 503 were not served (deferred); a 500 spends an attempt (retry)."""
    one_job(engine, f"sim-gpt-4o-mini@{fault}", sim.base_url, max_attempts=2)
    assert run(engine, db_url) is outcome
    assert only_job(engine)["error_kind"] == kind.value
    model_level = kind in (
        ErrorKind.FORBIDDEN,
        ErrorKind.PAYMENT_REQUIRED,
        ErrorKind.QUOTA_EXCEEDED,
    )
    assert kind.model_level is model_level
    streak = catalog.list_models(engine)[0].failure_streak
    assert streak == (1 if model_level else 0)


def test_answer_that_ended_in_error_is_not_saved(engine, db_url, sim, brands):
    """OpenRouter's 200 whose choice has finish_reason "error" and an error object: a failure of
    the inner code's kind; the partial text stays in the attempt's raw body, never a response."""
    one_job(engine, "sim-gpt-4o-mini@choice_error=502,style=openrouter", sim.base_url)
    assert run(engine, db_url) is JobOutcome.RETRY  # it was served (and billed): an attempt
    assert only_job(engine)["error_kind"] == "provider_error"
    assert responses(engine) == [] and mentions(engine) == []
    [attempt] = attempts(engine)
    assert '"finish_reason": "error"' in str(attempt["raw_body"])
    assert str(attempt["request_id"]).startswith("gen-") and attempt["completion_tokens"]


# --- answers in prose and the fallback --------------------------------------------------------


@pytest.fixture
def brands(engine: Engine) -> None:
    catalog.add_entities(engine, [brand(b) for b in ("HubSpot", "Pipedrive", "Salesforce")])


def test_json_inside_prose_is_recovered_in_one_call(engine, db_url, sim, brands):
    one_job(engine, "sim-gpt-4o-mini@prose_json", sim.base_url)
    assert run(engine, db_url) is JobOutcome.SUCCEEDED
    assert sim.request_count == 1
    [response] = responses(engine)
    assert response["output_mode"] == "json"
    assert not str(response["answer"]).startswith("Sure!")  # the answer field, not the prose
    names = [m["raw_name"] for m in mentions(engine)]
    assert "Zoho" in names and "Attio" in names  # from the JSON, though not in the catalog


def test_structured_call_answered_in_prose_marks_the_model(engine, db_url, sim, brands):
    """The model ignored json_schema: its prose is the answer (one call), the model is marked,
    and the next job makes one plain call."""
    one_job(engine, "sim-gpt-4o-mini@ignores_schema", sim.base_url, runs=2)
    assert run(engine, db_url) is JobOutcome.SUCCEEDED
    assert sim.request_count == 1
    assert responses(engine)[0]["output_mode"] == "text_fallback"
    assert catalog.list_models(engine)[0].supports_json_schema is False
    assert run(engine, db_url) is JobOutcome.SUCCEEDED
    assert sim.request_count == 2 and "response_format" not in sim.captured[-1].body


def test_openrouter_no_capable_endpoint_falls_back(engine, db_url, sim, brands):
    """With require_parameters, a model no endpoint serves with json_schema answers 404 "No
    endpoints found that can handle the requested parameters": the plain call, not not_found."""
    provider_job(engine, sim, "openrouter", "m@no_endpoints,style=openrouter")
    assert run(engine, db_url) is JobOutcome.SUCCEEDED
    first, second = sim.captured
    assert first.body["provider"] == {"require_parameters": True}
    assert "response_format" not in second.body and "provider" not in second.body
    assert responses(engine)[0]["output_mode"] == "text_fallback"
    assert catalog.list_models(engine)[0].supports_json_schema is False


def test_both_paid_calls_are_recorded_in_the_attempt(engine, db_url, sim, brands):
    """Broken JSON from the structured call, then the plain call: the attempt row has both
    calls' tokens and ids; the response has the answering call's."""
    one_job(engine, "sim-gpt-4o-mini@invalid_json", sim.base_url)
    catalog.update_model(
        engine, catalog.list_models(engine)[0].id, input_usd_per_mtok=1.0, output_usd_per_mtok=1.0
    )
    assert run(engine, db_url) is JobOutcome.SUCCEEDED
    [attempt], [response] = attempts(engine), responses(engine)
    assert attempt["calls"] == 2 and len(str(attempt["request_id"]).split()) == 2
    assert int(attempt["completion_tokens"]) > int(response["completion_tokens"])
    assert float(attempt["cost"]) > float(response["cost"]) and attempt["cost_source"] == "estimate"


# --- where keys go ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "url", "custom", "needle"),
    [
        ("openai", "https://evil.example/v1", False, "pass --custom-host"),
        ("openrouter", "http://proxy.example/v1", True, "must use https"),
        ("openai", "http://api.openai.com/v1", False, "over https only"),
        ("openai", "https://user:pw@api.openai.com/v1", False, "credentials"),
        ("compatible", "http://127.0.0.1:9/v1", True, "--custom-host is for openai"),
    ],
)
def test_key_destinations_refused(engine, provider, url, custom, needle):
    with pytest.raises(InvalidInput, match=needle):
        catalog.add_model(engine, provider=provider, name="m", base_url=url, custom_host=custom)
    assert catalog.list_models(engine) == []


def test_custom_host_is_an_opt_in_per_model(engine):
    model_id = catalog.add_model(engine, provider="openai", name="gpt-4o-mini")
    with pytest.raises(InvalidInput, match="pass --custom-host"):
        catalog.update_model(engine, model_id, base_url="https://gateway.example/v1")
    catalog.update_model(engine, model_id, base_url="https://gateway.example/v1", custom_host=True)
    with pytest.raises(InvalidInput, match="pass --custom-host"):
        catalog.update_model(engine, model_id, custom_host=False)  # the host would stay
    [row] = catalog.list_models(engine)
    assert (row.base_url, row.custom_host) == ("https://gateway.example/v1", True)


def test_cli_refuses_a_keyless_host_in_one_line(db_url, engine):
    result = cli(
        db_url, "models", "add", "--provider", "openrouter", "--name", "x",
        "--base-url", "http://10.0.0.5/v1",
    )  # fmt: skip
    assert_user_error(result, "is not openrouter's API")
    assert catalog.list_models(engine) == []
    result = cli(db_url, "models", "add", "--provider", "openai", "--name", "x", "--bogus")
    assert result.returncode == 2 and "No such option" in result.stderr


def test_runner_refuses_a_destination_written_around_the_checks(engine, db_url, sim):
    """A row edited in the database directly: the runner checks again before sending a key."""
    provider_job(engine, sim, "openai", "gpt-4o-mini")
    with write_tx(engine) as conn:
        conn.execute(update(Model).values(custom_host=False))
    assert run(engine, db_url) is JobOutcome.FAILED
    assert only_job(engine)["error_kind"] == "config" and sim.request_count == 0


def test_openai_base_url_from_the_environment_is_not_honoured(monkeypatch, sim):
    monkeypatch.setenv("OPENAI_BASE_URL", sim.base_url)
    settings = fast_settings("sqlite://", **KEYS)
    client = build_sdk_client(settings, "openai", None)
    assert str(client.base_url).rstrip("/") == OPENAI_BASE_URL


# --- models check -----------------------------------------------------------------------------


def test_models_check_reports_each_model_and_marks_schema_support(db_url, engine, sim):
    for name in ("sim-gpt-4o-mini@style=openai", "sim-a@no_schema", "sim-b@status=401"):
        catalog.add_model(engine, provider="compatible", name=name, base_url=sim.base_url)
    result = cli(db_url, "models", "check")
    assert result.returncode == 1, result.stderr
    out = result.stdout
    assert "sim-gpt-4o-mini@style=openai: ok: structured answers" in out
    assert "x-ratelimit-limit-requests" in out
    assert "sim-a@no_schema: ok, but json_schema is not honoured" in out
    assert "sim-b@status=401: FAIL auth" in out
    by_name = {m.name: m for m in catalog.list_models(engine)}
    assert by_name["sim-a@no_schema"].supports_json_schema is False
    assert sim.request_count == 3  # one call per model


def test_a_new_base_url_forgets_what_the_old_server_took(engine):
    from db.results import mark_json_schema_unsupported

    model_id = catalog.add_model(
        engine, provider="compatible", name="m", base_url="http://127.0.0.1:9/v1"
    )
    mark_json_schema_unsupported(engine, model_id)
    catalog.update_model(engine, model_id, label="same server")
    assert catalog.list_models(engine)[0].supports_json_schema is False
    catalog.update_model(engine, model_id, base_url="http://127.0.0.1:10/v1")
    assert catalog.list_models(engine)[0].supports_json_schema is None
