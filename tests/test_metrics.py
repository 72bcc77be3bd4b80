"""Issue 10, item 6: Prometheus /metrics from the database (runner.worker.metrics), scraped over
real HTTP from prometheus_client's server, parsed with its own text parser. Both backends."""

from __future__ import annotations

import socket
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine

from db import catalog
from db.types import ErrorKind, FailureRecord
from runner.worker.metrics import serve_metrics
from tests import factories as f


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_come_from_the_database(engine: Engine) -> None:
    f.make_batch(engine, prompts=3, models=1)
    [model] = catalog.list_models(engine)
    catalog.update_model(engine, model.id, rpm=600)
    first, second, _ = f.claim_all(engine, "w")
    answer = f.answer(["HubSpot"])
    assert f.complete(engine, first, answer, 0.002)
    f.fail(engine, second, FailureRecord(ErrorKind.RATE_LIMITED, "429", latency_ms=1500), 0)
    catalog.pause_model(engine, model.id, reason="test", actor="t")
    port = free_port()
    serve_metrics(engine, port, host="127.0.0.1")
    got = scrape(port)
    key = (("model", model.name), ("provider", "compatible"))

    def value(name: str, **labels: str) -> float:
        return got[(name, tuple(sorted({**dict(key), **labels}.items())))]

    assert got[("promptbatch_database_up", ())] == 1
    assert value("promptbatch_jobs", status="succeeded") == 1
    assert value("promptbatch_jobs", status="queued") == 1
    assert value("promptbatch_in_flight") == 1
    assert value("promptbatch_attempts_total", outcome="deferred", error_kind="rate_limited") == 1
    assert value("promptbatch_attempts_total", outcome="succeeded", error_kind="") == 1
    assert value("promptbatch_cost_usd_total") == 0.002
    assert value("promptbatch_call_latency_seconds_bucket", le="2") == 2  # with the 429
    assert value("promptbatch_call_latency_seconds_count") == 2
    assert value("promptbatch_model_limit", limit="rpm") == 600
    assert value("promptbatch_model_limit", limit="concurrency") == 1  # halved by the 429
    assert value("promptbatch_model_paused") == 1
