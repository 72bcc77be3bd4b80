"""The simulator's provider limits (runner.simulator.limits), through the real openai client:
OpenAI's token buckets for requests and tokens, its 429 body and x-ratelimit-* headers, credits
that run out, a key revoked mid-batch, and a latency that spreads like real models'."""

from __future__ import annotations

import statistics
from collections.abc import Iterator

import openai
import pytest

from runner.simulator.faults import Faults
from runner.simulator.limits import Bucket, duration_text
from runner.simulator.server import SimulatorServer, latency_seconds
from tests.test_simulator import ask


@pytest.fixture
def client(sim: SimulatorServer) -> Iterator[openai.OpenAI]:
    """A client of the test's simulator, whose limits start fresh (reset_counters)."""
    with openai.OpenAI(base_url=sim.base_url, api_key="sim", max_retries=0, timeout=5) as c:
        yield c


def test_rpm_is_a_bucket_with_openais_429(client: openai.OpenAI, sim: SimulatorServer) -> None:
    model = "sim-gpt-4o-mini@rpm=3"
    raw = [
        client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": "best CRM?"}]
        )
        for _ in range(3)
    ]
    assert [r.headers["x-ratelimit-remaining-requests"] for r in raw] == ["2", "1", "0"]
    assert raw[0].headers["x-ratelimit-limit-requests"] == "3"
    with pytest.raises(openai.RateLimitError) as refused:
        ask(client, model)
    error = refused.value.body
    assert isinstance(error, dict) and error["code"] == "rate_limit_exceeded"
    assert error["type"] == "requests"
    assert "on requests per min (RPM): Limit 3, Used 3, Requested 1" in error["message"]
    headers = refused.value.response.headers
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert 19 <= float(headers["retry-after-ms"]) / 1000 <= 20  # 1 request at 3/min
    assert sim.limits.stats(model) == (3, 1, 0)


def test_a_429_may_come_without_retry_after(client: openai.OpenAI) -> None:
    model = "sim-gpt-4o-mini@rpm=1,no_retry_after"
    ask(client, model)
    with pytest.raises(openai.RateLimitError) as refused:
        ask(client, model)
    headers = refused.value.response.headers
    assert "retry-after" not in headers and "retry-after-ms" not in headers
    assert headers["x-ratelimit-reset-requests"].endswith("s")


def test_tokens_count_max_tokens_at_admission(client: openai.OpenAI) -> None:
    """OpenAI counts the prompt's estimate plus max_tokens when a request arrives."""
    model = "sim-gpt-4o-mini@tpm=5000"
    for _ in range(2):
        ask(client, model, max_tokens=2000)
    with pytest.raises(openai.RateLimitError) as refused:
        ask(client, model, max_tokens=2000)
    assert isinstance(refused.value.body, dict) and refused.value.body["type"] == "tokens"
    ask(client, "sim-gpt-4o-mini@tpm=5000,latency=1", max_tokens=100)  # another model's bucket


def test_credits_run_out(client: openai.OpenAI) -> None:
    model = "sim-gpt-4o-mini@credits=0.000001"
    ask(client, model)
    with pytest.raises(openai.APIStatusError) as refused:
        ask(client, model)
    assert refused.value.status_code == 402


def test_a_key_revoked_mid_batch(client: openai.OpenAI, sim: SimulatorServer) -> None:
    model = "sim-gpt-4o-mini@revoke_after=2"
    ask(client, model)
    ask(client, model)
    with pytest.raises(openai.AuthenticationError):
        ask(client, model)
    assert sim.limits.stats(model) == (2, 0, 1)


def test_most_admitted_in_any_window(client: openai.OpenAI, sim: SimulatorServer) -> None:
    model = "sim-gpt-4o-mini@rpm=100"
    for _ in range(5):
        ask(client, model)
    assert sim.limits.max_in_window(model) == 5
    assert sim.limits.max_in_window(model, window=0.000001) == 1


def test_bucket_refills_continuously() -> None:
    bucket = Bucket(60, at=0.0)
    bucket.level = 0.0
    assert bucket.wait_for(1) == pytest.approx(1.0)
    bucket.refill(30.0)
    assert bucket.level == pytest.approx(30.0) and bucket.reset_seconds() == pytest.approx(30.0)
    assert bucket.wait_for(1000) == pytest.approx(30.0)  # more than the bucket: wait for it full


def test_duration_text_is_openais() -> None:
    assert [duration_text(s) for s in (0.006, 1, 12.5, 360, 3723)] == [
        "6ms",
        "1s",
        "12.5s",
        "6m0s",
        "1h2m3s",
    ]


def test_latency_spreads_lognormally_with_a_long_tail() -> None:
    faults = Faults(latency_ms=2000, jitter=0.5)
    samples = [latency_seconds(faults) for _ in range(4000)]
    assert 1.8 < statistics.median(samples) < 2.2
    assert max(samples) > 5 and max(samples) <= 20
    assert latency_seconds(Faults(latency_ms=2000)) == 2.0
