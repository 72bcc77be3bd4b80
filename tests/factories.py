"""Fixture factories for queue tests: prompts, models, batches, answers, and multi-process helpers.

Everything goes through db's named operations except where a test must set up a state no operation
makes (an expired lease, a half-done earlier enqueue): `set_jobs` and `delete_jobs` write directly.
Process entry points (`*_main`) run in `spawn` children: they receive a URL string and build their
own engine (case C4), and send back only plain data.
"""

from __future__ import annotations

import multiprocessing
import queue as stdlib_queue
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, func, select, text, update

from db import catalog, queue, results
from db.catalog import NewPrompt
from db.engine import is_sqlite, make_engine, read_tx, write_tx
from db.models import JobAttempt, PromptJob, utcnow
from db.types import (
    AnswerRecord,
    CallUsage,
    ClaimedJob,
    Completion,
    CostSource,
    EnqueueResult,
    Failure,
    FailureRecord,
    MentionRecord,
    OutputMode,
    Recorded,
)

BATCH = "2026-11-30"
BRANDS = (
    "HubSpot",
    "Salesforce",
    "Pipedrive",
    "Zoho CRM",
    "Freshsales",
    "Monday",
    "Close",
    "Copper",
    "Attio",
    "Folk",
)
J = PromptJob


# --- catalog and batches ---------------------------------------------------------------------


def make_prompts(engine: Engine, n: int, *, runs: int = 1, prefix: str = "prompt") -> list[int]:
    """Create `n` active prompts with `runs` runs each; returns their ids, oldest first."""
    texts = [f"{prefix} {i}: which CRM is best for a team of {i + 2}?" for i in range(n)]
    catalog.import_prompts(engine, [NewPrompt(t, "crm", runs) for t in texts], actor="test")
    by_text = {p.text: p.id for p in catalog.list_prompts(engine)}
    return [by_text[t] for t in texts]


def make_models(
    engine: Engine, n: int, *, max_concurrency: int | None = None, prefix: str = "model"
) -> list[int]:
    """Create `n` active compatible models; returns their ids."""
    return [
        catalog.add_model(
            engine,
            provider="compatible",
            name=f"{prefix}-{i}",
            base_url="http://127.0.0.1:9/v1",
            max_concurrency=max_concurrency,
            actor="test",
        )
        for i in range(n)
    ]


def make_batch(
    engine: Engine,
    *,
    prompts: int,
    models: int,
    runs: int = 1,
    batch_key: str = BATCH,
    max_attempts: int = 3,
) -> EnqueueResult:
    """Create prompts x models and enqueue `runs` jobs each for `batch_key`."""
    make_prompts(engine, prompts, runs=runs)
    make_models(engine, models)
    return queue.enqueue_batch(engine, batch_key, max_attempts=max_attempts, actor="test")


def answer(mentions: Sequence[str] = (), *, text_: str | None = None) -> AnswerRecord:
    """A structured answer naming `mentions` in order (positions and offsets from the text)."""
    body = text_ or "Top picks: " + ", ".join(mentions) + "."
    records = tuple(
        MentionRecord(
            raw_name=name,
            display=name,
            key=brand_key(name),
            position=i,
            char_offset=body.index(name),
        )
        for i, name in enumerate(mentions, start=1)
    )
    return AnswerRecord(
        answer=body,
        raw_body="{}",
        output_mode=OutputMode.STRUCTURED,
        finish_reason="stop",
        prompt_tokens=12,
        completion_tokens=40,
        latency_ms=5,
        request_id="req-test",
        mentions=records,
    )


def brand_key(name: str) -> str:
    return "".join(ch for ch in name.casefold() if ch.isalnum())


# --- outcomes, written as a worker's group commit writes them --------------------------------


def completion(job: ClaimedJob, answer_: AnswerRecord, cost: float | None = None) -> Completion:
    """A success of one paid call costing `cost` USD (an estimate; None: unpriced), as the worker
    builds it: the answer's call and the attempt's usage agree."""
    source = CostSource.ESTIMATE if cost is not None else None
    usage = CallUsage(
        calls=1,
        prompt_tokens=answer_.prompt_tokens,
        completion_tokens=answer_.completion_tokens,
        cost_usd=cost,
        cost_source=source,
        request_ids=(answer_.request_id,) if answer_.request_id else (),
    )
    return Completion(job, replace(answer_, cost_usd=cost, cost_source=source), usage)


def complete(engine: Engine, job: ClaimedJob, answer_: AnswerRecord, cost: float | None) -> bool:
    """Record one success in its own transaction; False when the fence matched nothing."""
    return complete_all(engine, [completion(job, answer_, cost)])[0]


def complete_all(engine: Engine, done: Sequence[Completion]) -> list[bool]:
    """Record successes in ONE transaction; per completion, whether it was saved."""
    return [r is Recorded.SUCCEEDED for r in results.write_outcomes(engine, done)]


def fail(engine: Engine, job: ClaimedJob, failure: FailureRecord, retry_in: float) -> Recorded:
    """Record one failed attempt (retried after `retry_in` seconds when transient)."""
    return results.write_outcomes(engine, [Failure(job, failure, retry_in)])[0]


# --- direct reads and writes -----------------------------------------------------------------


def job(engine: Engine, job_id: int) -> Any:
    """The job's row (all columns)."""
    with read_tx(engine) as conn:
        return conn.execute(select(J).where(J.id == job_id)).one()


def job_ids(engine: Engine, **where: Any) -> list[int]:
    """Ids of jobs whose columns equal `where`, in id order."""
    with read_tx(engine) as conn:
        return list(conn.scalars(select(J.id).filter_by(**where).order_by(J.id)))


def count(engine: Engine, table: Any, **where: Any) -> int:
    """Rows of `table` (a model class) whose columns equal `where`."""
    with read_tx(engine) as conn:
        return int(conn.scalar(select(func.count()).select_from(table).filter_by(**where)) or 0)


def attempts(engine: Engine, job_id: int) -> list[Any]:
    """The job's job_attempts rows, oldest first."""
    with read_tx(engine) as conn:
        return list(
            conn.execute(
                select(JobAttempt).where(JobAttempt.job_id == job_id).order_by(JobAttempt.attempt)
            ).all()
        )


def set_jobs(engine: Engine, ids: Sequence[int], **values: Any) -> None:
    """Overwrite columns of jobs: for states no named operation makes (an expired lease)."""
    with write_tx(engine) as conn:
        conn.execute(update(J).where(J.id.in_(list(ids))).values(**values))


def delete_jobs(engine: Engine, ids: Sequence[int]) -> None:
    with write_tx(engine) as conn:
        conn.execute(delete(J).where(J.id.in_(list(ids))))


def expire_lease(engine: Engine, ids: Sequence[int]) -> None:
    """Make the jobs' leases lapse as if their worker died a minute ago."""
    set_jobs(engine, ids, lease_expires_at=utcnow() - timedelta(minutes=1))


def claim_all(
    engine: Engine, worker_id: str, *, lease_seconds: float = 60, now: datetime | None = None
) -> list[ClaimedJob]:
    """Claim every due job for one worker."""
    return queue.claim_jobs(engine, worker_id, 100_000, lease_seconds=lease_seconds, now=now)


# --- processes -------------------------------------------------------------------------------


def run_processes(
    target: Callable[..., Any], args: Sequence[tuple[Any, ...]], *, timeout: float = 120
) -> list[Any]:
    """Run target(*a) in one spawn child per `a`, all released at once; returns their results.

    A child's exception is re-raised here with the child's traceback.
    """
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(args))
    out = ctx.Queue()
    children = [
        ctx.Process(target=_child, args=(target, barrier, out, i, a)) for i, a in enumerate(args)
    ]
    for child in children:
        child.start()
    try:
        found = [out.get(timeout=timeout) for _ in children]
    except stdlib_queue.Empty:
        raise AssertionError(f"children did not report within {timeout}s") from None
    finally:
        for child in children:
            child.join(timeout=30)
            if child.is_alive():
                child.kill()
                child.join()
        out.close()
        out.join_thread()
    failed = [err for _, ok, err in found if not ok]
    assert not failed, "child failed:\n" + "\n".join(failed)
    return [value for _, value, _ in sorted(found, key=lambda r: r[0])]


def run_threads(
    target: Callable[..., Any], args: Sequence[tuple[Any, ...]], *, timeout: float = 120
) -> list[Any]:
    """Run target(*a) in one thread per `a`, all released at once; returns their results.

    Each target builds its own engine from the URL it is given, like a process would.
    """
    barrier = threading.Barrier(len(args))
    found: dict[int, Any] = {}
    failed: list[BaseException] = []

    def run(index: int, a: tuple[Any, ...]) -> None:
        try:
            barrier.wait(timeout=60)
            found[index] = target(*a)
        except BaseException as exc:
            failed.append(exc)

    threads = [threading.Thread(target=run, args=(i, a)) for i, a in enumerate(args)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    assert not any(t.is_alive() for t in threads), f"threads still running after {timeout}s"
    if failed:
        raise failed[0]
    return [found[i] for i in range(len(args))]


def _child(
    target: Callable[..., Any], barrier: Any, out: Any, index: int, args: tuple[Any, ...]
) -> None:
    try:
        barrier.wait(timeout=60)
        out.put((index, target(*args), ""))
    except BaseException:
        out.put((index, None, traceback.format_exc()))


def enqueue_main(url: str, batch_key: str) -> tuple[int, int]:
    """Child: enqueue the batch once; returns (created, existing)."""
    engine = make_engine(url)
    try:
        result = queue.enqueue_batch(engine, batch_key, max_attempts=3, actor="child")
        return result.created, result.existing
    finally:
        engine.dispose()


def claim_main(url: str, worker_id: str, limit: int) -> tuple[list[int], int]:
    """Child: claim `limit` at a time until none is due, completing each claimed job.

    Returns (claimed ids in order, the largest single claim).
    """
    engine = make_engine(url)
    claimed: list[int] = []
    largest = 0
    try:
        while jobs := queue.claim_jobs(engine, worker_id, limit, lease_seconds=60):
            largest = max(largest, len(jobs))
            claimed += [j.id for j in jobs]
            for j in jobs:
                assert complete(engine, j, answer(), None)
        return claimed, largest
    finally:
        engine.dispose()


def work_main(url: str, worker_id: str) -> dict[str, Any]:
    """Child (case C14): claim and complete jobs until none is due, each with 5 mentions.

    Returns the completed ids, the errors met, and each connection's journal mode (SQLite).
    """
    engine = make_engine(url, pool_size=2)
    done: list[int] = []
    errors: list[str] = []
    try:
        while jobs := queue.claim_jobs(engine, worker_id, 5, lease_seconds=60):
            for j in jobs:
                names = [BRANDS[(j.id + k) % len(BRANDS)] for k in range(5)]
                try:
                    if complete(engine, j, answer(names), 0.001):
                        done.append(j.id)
                except Exception as exc:  # reported to the parent, which fails the test
                    errors.append(f"{type(exc).__name__}: {exc}")
        return {"done": done, "errors": errors, "journal": journal_modes(engine)}
    finally:
        engine.dispose()


def journal_modes(engine: Engine) -> set[str]:
    """The journal mode of two simultaneously open connections ({'n/a'} on PostgreSQL)."""
    if not is_sqlite(engine):
        return {"n/a"}
    with engine.connect() as a, engine.connect() as b:
        return {str(c.execute(text("PRAGMA journal_mode")).scalar()) for c in (a, b)}


def set_models_paused_at(engine: Engine, model_id: int, at: datetime) -> None:
    """Backdate a model's pause (a budget pause from an earlier day)."""
    from db.models import Model

    with write_tx(engine) as conn:
        conn.execute(update(Model).where(Model.id == model_id).values(paused_at=at))
