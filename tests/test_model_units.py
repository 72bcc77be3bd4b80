"""Pure pieces of the model path: JSON unwrapping, Retry-After, error kinds, backoff, SQLite."""

from __future__ import annotations

import json
import random
import sqlite3
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from types import SimpleNamespace

import pytest

from db.errors import ConfigError
from db.types import ErrorKind
from runner.llm.answers import parse_answer_json
from runner.llm.errors import CallFailed, kind_for_status, retry_after_seconds, status_failure
from runner.worker.backoff import backoff_seconds


def test_fenced_json_is_unwrapped():
    """C18: JSON inside ```json fences parses, and says it was not the exact content."""
    body = json.dumps({"answer": "Try **HubSpot**.", "mentions": ["HubSpot"]})
    parsed = parse_answer_json(f"```json\n{body}\n```")
    assert parsed is not None
    answer, exact = parsed
    assert (answer.answer, answer.mentions, exact) == ("Try **HubSpot**.", ["HubSpot"], False)
    assert parse_answer_json(body) == (answer, True)


def test_backticks_inside_json_strings_are_untouched():
    """C18: JSON whose strings contain backticks (even a fence) is left as it is."""
    text = "Run `pip install x`, then:\n```json\n{}\n```"
    body = json.dumps({"answer": text, "mentions": []})
    parsed = parse_answer_json(body)
    assert parsed is not None and parsed[0].answer == text and parsed[1] is True
    fenced = parse_answer_json(f"```json\n{body}\n```")
    assert fenced is not None and fenced[0].answer == text


@pytest.mark.parametrize(
    "content",
    [
        "",
        "not json",
        '{"answer": "x"}',
        '{"mentions":[{"name":"Ac',
        '{"answer": "x", "mentions": [], "extra": 1}',
    ],
)
def test_invalid_answers_are_rejected(content):
    assert parse_answer_json(content) is None


def test_retry_after_forms():
    assert retry_after_seconds({"retry-after-ms": "250"}) == 0.25
    assert retry_after_seconds({"retry-after": "7"}) == 7.0
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 28 <= (retry_after_seconds({"retry-after": when}) or 0) <= 31
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, ErrorKind.BAD_REQUEST),
        (401, ErrorKind.AUTH),
        (402, ErrorKind.PAYMENT_REQUIRED),
        (403, ErrorKind.FORBIDDEN),
        (404, ErrorKind.NOT_FOUND),
        (408, ErrorKind.TIMEOUT),
        (409, ErrorKind.SERVER_ERROR),
        (429, ErrorKind.RATE_LIMITED),
        (500, ErrorKind.SERVER_ERROR),
        (502, ErrorKind.UNAVAILABLE),
        (503, ErrorKind.UNAVAILABLE),
        (504, ErrorKind.SERVER_ERROR),
        (529, ErrorKind.UNAVAILABLE),
        (418, ErrorKind.BAD_REQUEST),
    ],
)
def test_status_kinds(status, kind):
    """OpenAI's and OpenRouter's error codes: which statuses retry (an attempt), which defer
    (not served: 429, 502, 503, 529) and which are the account's (401, 402, 403, 404)."""
    assert kind_for_status(status) is kind
    transient = status in (408, 409, 429) or status >= 500
    assert kind.transient is transient
    assert kind.deferred is (status in (429, 502, 503, 529))
    assert kind.model_level is (status in (401, 402, 403, 404))


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (  # OpenRouter "Errors": moderation carries metadata reasons / flagged_input
            {"error": {"code": 403, "message": "input was flagged", "metadata": {"reasons": []}}},
            ErrorKind.FLAGGED,
        ),
        (
            {"error": {"message": "blocked", "type": "x", "code": "content_policy_violation"}},
            ErrorKind.FLAGGED,
        ),
        (
            {
                "error": {
                    "message": "Country, region, or territory not supported",
                    "type": "x",
                    "code": "unsupported_country_region_territory",
                }
            },
            ErrorKind.FORBIDDEN,
        ),
        (
            {"error": {"message": "You are not allowed to sample from this model"}},
            ErrorKind.FORBIDDEN,
        ),
    ],
)
def test_a_403_is_the_prompts_only_when_moderation_flagged_it(body, kind):
    # status_failure reads what openai.APIStatusError carries: status, body, response headers
    exc = SimpleNamespace(status_code=403, body=body, response=SimpleNamespace(headers={}))
    failure = status_failure(exc, structured=False)  # type: ignore[arg-type]
    assert isinstance(failure, CallFailed) and failure.kind is kind


def test_backoff_full_jitter_bounds_and_retry_after():
    rng = random.Random(7)
    delays = [backoff_seconds(3, base=2, cap=300, rng=rng) for _ in range(500)]
    assert 0 <= min(delays) < 1 and 7 < max(delays) <= 8  # uniform over [0, 2 * 2^2]
    assert max(backoff_seconds(20, base=2, cap=60, rng=rng) for _ in range(200)) <= 60
    assert backoff_seconds(1, base=2, cap=300, retry_after=45, rng=rng) == 45


def test_old_sqlite_is_refused_at_start(monkeypatch, tmp_path):
    """C14: an SQLite older than 3.35 (no RETURNING) gets a clear start-up error."""
    from db.engine import make_engine

    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 31, 1))
    monkeypatch.setattr(sqlite3, "sqlite_version", "3.31.1")
    with pytest.raises(ConfigError, match=r"SQLite 3\.31\.1 is too old"):
        make_engine(f"sqlite:///{tmp_path}/x.db")


def test_a_429_without_retry_after_waits_for_the_spent_limits_reset():
    """OpenAI's x-ratelimit-reset-* of the exhausted limit stands in for a missing Retry-After."""
    headers = {
        "x-ratelimit-limit-requests": "600",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "2.5s",
        "x-ratelimit-remaining-tokens": "5000",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    body = {"error": {"message": "Rate limit reached", "type": "requests"}}
    exc = SimpleNamespace(status_code=429, body=body, response=SimpleNamespace(headers=headers))
    failure = status_failure(exc, structured=False)  # type: ignore[arg-type]
    assert isinstance(failure, CallFailed) and failure.kind is ErrorKind.RATE_LIMITED
    assert failure.retry_after == 2.5
    assert failure.limits is not None and failure.limits.limit_requests == 600
