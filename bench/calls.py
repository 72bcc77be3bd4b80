"""Item 7: the model call itself (issue 9), through the real client against `promptbatch
simulator` in its own process: CPU per call in the calling process (the request built, sent on
the call loop, the body read and parsed), sequentially and with CONCURRENT job threads; and how
close to its deadline a call against a server that trickles one byte a second is cut."""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from bench.concurrency import simulator_process
from db.types import ClaimedJob
from runner.llm.client import ModelClient
from runner.llm.errors import CallFailed
from runner.settings import Settings

CALLS = 2000
SEQUENTIAL = 400
CONCURRENT = 32
DEADLINE_S = 2.0
PROMPT = "What is the best CRM for a 10-person B2B startup?"


def _job(base_url: str, model: str) -> ClaimedJob:
    return ClaimedJob(
        id=1,
        prompt_id=1,
        model_id=1,
        run_index=0,
        batch_key="bench",
        attempt=1,
        max_attempts=1,
        worker_id="bench",
        prompt_text=PROMPT,
        provider="compatible",
        model_name=model,
        base_url=base_url,
        supports_json_schema=None,
        input_usd_per_mtok=0.15,
        output_usd_per_mtok=0.6,
        started_at=datetime.now(UTC),
    )


def _cpu_ms_per_call(client: ModelClient, job: ClaimedJob, calls: int, threads: int) -> float:
    started = time.process_time()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda _: client.ask(job), range(calls)))
    return (time.process_time() - started) / calls * 1000


def _deadline_overrun_s(base_url: str) -> float:
    client = ModelClient(Settings(request_timeout=DEADLINE_S))
    overruns = []
    try:
        for _ in range(3):
            started = time.monotonic()
            try:
                client.ask(_job(base_url, "sim-gpt-4o-mini@trickle=1000"))
            except CallFailed:
                overruns.append(time.monotonic() - started - DEADLINE_S)
    finally:
        client.close()
    return statistics.median(overruns)


def run() -> dict[str, Any]:
    with simulator_process(processes=1) as sim:
        base_url = sim.base_url
        client = ModelClient(Settings())
        try:
            job = _job(base_url, "sim-gpt-4o-mini@latency=200")
            client.ask(job)  # the client and its connection pool built
            sequential = _cpu_ms_per_call(client, _job(base_url, "sim-gpt-4o-mini"), SEQUENTIAL, 1)
            concurrent = _cpu_ms_per_call(client, job, CALLS, CONCURRENT)
        finally:
            client.close()
        overrun = _deadline_overrun_s(base_url)
    return {
        "cpu_ms_per_call_sequential": sequential,
        "cpu_ms_per_call_concurrent": concurrent,
        "concurrent_threads": CONCURRENT,
        "deadline_s": DEADLINE_S,
        "trickle_deadline_overrun_s": overrun,
    }
