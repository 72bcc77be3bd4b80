"""`promptbatch run --metrics-port P`: Prometheus /metrics from the database, as pgqueuer's and the
Sidekiq exporter's do: every scrape reads the queue's own tables, so the figures are the same for
every runner on one database and nothing is lost when a worker dies.

Names `promptbatch_*`, labels `model` and `provider`: jobs by status, attempts by outcome and
error kind, call latency (seconds, a histogram of job_attempts.latency_ms), tokens and USD spent,
jobs in flight, each model's limits (configured, learned, adapted) and whether it is paused.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from db import insights
from db.engine import Engine
from db.errors import DatabaseUnavailable

log = logging.getLogger(__name__)

_LABELS = ["model", "provider"]


class QueueCollector(Collector):
    """Collects promptbatch_* from the database at each scrape (one read transaction)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def collect(self) -> Iterator[Metric]:
        try:
            models = insights.metrics_snapshot(self._engine)
        except DatabaseUnavailable as exc:  # the scrape shows the outage, the runner lives on
            log.warning("metrics scrape failed: %s", exc, extra={"action": "metrics_failed"})
            yield GaugeMetricFamily("promptbatch_database_up", "1: the database answered", 0)
            return
        yield GaugeMetricFamily("promptbatch_database_up", "1: the database answered", 1)
        yield from _families(models)


def _families(models: list[insights.ModelMetrics]) -> Iterator[Metric]:
    jobs = GaugeMetricFamily("promptbatch_jobs", "Jobs by status", labels=[*_LABELS, "status"])
    attempts = CounterMetricFamily(
        "promptbatch_attempts",
        "Claims by outcome (succeeded, retry, deferred, failed, lost) and error kind",
        labels=[*_LABELS, "outcome", "error_kind"],
    )
    latency = HistogramMetricFamily(
        "promptbatch_call_latency_seconds", "Model call latency per attempt", labels=_LABELS
    )
    tokens = CounterMetricFamily(
        "promptbatch_tokens", "Tokens the attempts' calls used", labels=[*_LABELS, "kind"]
    )
    cost = CounterMetricFamily(
        "promptbatch_cost_usd", "USD the attempts' calls cost", labels=_LABELS
    )
    in_flight = GaugeMetricFamily("promptbatch_in_flight", "Jobs being processed", labels=_LABELS)
    limit = GaugeMetricFamily(
        "promptbatch_model_limit",
        "A model's limits: max_concurrency, rpm, tpm, learned_rpm, learned_tpm, concurrency, and "
        "the provider's remaining_requests / remaining_tokens",
        labels=[*_LABELS, "limit"],
    )
    paused = GaugeMetricFamily("promptbatch_model_paused", "1: the model is paused", labels=_LABELS)
    for m in models:
        key = [m.model, m.provider]
        for status, n in m.jobs.items():
            jobs.add_metric([*key, status], n)
        for (outcome, kind), n in m.attempts.items():
            attempts.add_metric([*key, outcome, kind], n)
        if m.latency_buckets:
            bounds = [*(f"{b:g}" for b in insights.LATENCY_BUCKETS_S), "+Inf"]
            latency.add_metric(
                key, list(zip(bounds, m.latency_buckets, strict=True)), m.latency_sum_s
            )
        tokens.add_metric([*key, "prompt"], m.prompt_tokens)
        tokens.add_metric([*key, "completion"], m.completion_tokens)
        cost.add_metric(key, m.cost_usd)
        in_flight.add_metric(key, m.in_flight)
        for name, value in m.limits.items():
            limit.add_metric([*key, name], value)
        paused.add_metric(key, 1 if m.paused else 0)
    yield from (jobs, attempts, latency, tokens, cost, in_flight, limit, paused)


def serve_metrics(engine: Engine, port: int, host: str = "0.0.0.0") -> None:
    """Serve /metrics on `host`:`port` from a daemon thread (prometheus_client's server)."""
    registry = CollectorRegistry()
    registry.register(QueueCollector(engine))
    start_http_server(port, addr=host, registry=registry)
    log.info("metrics on http://%s:%d/metrics", host, port, extra={"action": "metrics_started"})
