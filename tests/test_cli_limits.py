"""Issue 10 at the command line: pause and resume (audited), what `models list` and `status` say
about paused models and deferred jobs, and bad input (one line, exit 2, nothing written)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine

from db import catalog
from db.models import AuditLog, PromptJob
from db.types import ErrorKind, FailureRecord
from runner.settings import Settings
from tests import factories as f
from tests.test_cli import assert_user_error, cli


def test_pause_then_resume_a_model(db_url: str, engine: Engine) -> None:
    f.make_batch(engine, prompts=1, models=1)
    paused = cli(db_url, "models", "pause", "model-0", "--reason", "key rotation")
    assert paused.returncode == 0 and "paused" in paused.stdout
    listed = cli(db_url, "models", "list").stdout
    assert "paused" in listed and "paused: key rotation since " in listed
    status = cli(db_url, "status", "--batch-key", f.BATCH).stdout
    assert "model model-0: paused: key rotation since " in status and "; queued: 1" in status
    assert cli(db_url, "models", "resume", "model-0").stdout.strip().endswith("resumed")
    assert cli(db_url, "models", "resume", "model-0").stdout.strip().endswith("was not paused")
    actions = [
        a for a in (f.count(engine, AuditLog, action=x) for x in ("model_pause", "model_resume"))
    ]
    assert actions == [1, 1]
    assert catalog.list_models(engine)[0].state == "active"


def test_resume_of_an_unknown_model_is_one_line(db_url: str, engine: Engine) -> None:
    f.make_batch(engine, prompts=1, models=1)
    assert_user_error(cli(db_url, "models", "resume", "gpt-9"), "unknown model 'gpt-9'")
    assert f.count(engine, AuditLog, action="model_resume") == 0


def test_status_shows_deferred_jobs_and_deferrals(db_url: str, engine: Engine) -> None:
    f.make_batch(engine, prompts=2, models=1)
    first, _ = f.claim_all(engine, "w")
    f.fail(engine, first, FailureRecord(ErrorKind.RATE_LIMITED, "HTTP 429"), 60)
    text = cli(db_url, "status", "--batch-key", f.BATCH).stdout
    assert "queued      1 (1 deferred)" in text
    assert "deferrals 1, lost leases 0" in text
    data = json.loads(cli(db_url, "status", "--batch-key", f.BATCH, "--json").stdout)
    assert (data["deferred"], data["deferrals"], data["paused_models"]) == (1, 1, [])


def test_enqueue_sets_the_batch_deadline(db_url: str, engine: Engine) -> None:
    """Default deadline: the next batch's start (the next batch_time, UTC)."""
    f.make_prompts(engine, 1)
    f.make_models(engine, 1)
    before = datetime.now(UTC)
    assert cli(db_url, "enqueue", "--batch-key", f.BATCH).returncode == 0
    [job_id] = f.job_ids(engine)
    deadline = f.job(engine, job_id).deadline_at
    assert deadline == Settings(batch_time="00:00").batch_deadline(before)
    assert f.count(engine, PromptJob, deadline_at=None) == 0


def test_batch_deadline_is_the_next_batch_start_or_the_hours_given() -> None:
    at = datetime(2026, 12, 3, 14, 30, tzinfo=UTC)
    assert Settings(batch_time="00:00").batch_deadline(at) == datetime(2026, 12, 4, tzinfo=UTC)
    assert Settings(batch_time="18:00").batch_deadline(at) == datetime(2026, 12, 3, 18, tzinfo=UTC)
    midnight = datetime(2026, 12, 3, tzinfo=UTC)  # the scheduled enqueue itself: a full day
    assert Settings().batch_deadline(midnight) == datetime(2026, 12, 4, tzinfo=UTC)
    hours = Settings(batch_deadline_hours=6).batch_deadline(at)
    assert hours == datetime(2026, 12, 3, 20, 30, tzinfo=UTC)


def test_bad_pause_settings_are_one_line(db_url: str, engine: Engine) -> None:
    for name, value in (
        ("PROMPTBATCH_PAUSE_AFTER", "-1"),
        ("PROMPTBATCH_MAX_INTERRUPTIONS", "0"),
        ("PROMPTBATCH_BATCH_DEADLINE_HOURS", "abc"),
    ):
        result = cli(db_url, "status", env={name: value})
        assert_user_error(result, name.removeprefix("PROMPTBATCH_"))


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--rpm", "0"), "rpm (requests per minute) must be from 1"),
        (("--tpm", "-1"), "tpm (tokens per minute) must be from 1"),
    ],
)
def test_bad_limits_are_one_line_and_write_nothing(db_url: str, engine: Engine, args, needle):
    f.make_models(engine, 1)
    before = catalog.list_models(engine)
    assert_user_error(cli(db_url, "models", "update", "model-0", *args), needle)
    add = cli(
        db_url,
        "models",
        "add",
        "--provider",
        "compatible",
        "--name",
        "x",
        "--base-url",
        "http://127.0.0.1:9/v1",
        *args,
    )
    assert_user_error(add, needle)
    assert catalog.list_models(engine) == before


def test_rpm_abc_is_a_usage_error(db_url: str, engine: Engine) -> None:
    f.make_models(engine, 1)
    result = cli(db_url, "models", "update", "model-0", "--rpm", "abc")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "rpm" in result.stderr


def test_limits_are_set_listed_and_unset(db_url: str, engine: Engine) -> None:
    f.make_models(engine, 1)
    assert (
        cli(db_url, "models", "update", "model-0", "--rpm", "600", "--tpm", "1000000").returncode
        == 0
    )
    assert "rpm=600 tpm=1000000" in cli(db_url, "models", "list").stdout
    assert cli(db_url, "models", "update", "model-0", "--unset", "rpm").returncode == 0
    [m] = catalog.list_models(engine)
    assert (m.rpm, m.tpm) == (None, 1000000)
