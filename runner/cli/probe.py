"""`promptbatch models check`: the models to check, one check call each (runner.llm.check)."""

from __future__ import annotations

from db import catalog, results
from db.engine import Engine
from db.errors import InvalidInput
from db.models import utcnow
from db.types import ClaimedJob
from runner.llm.check import CHECK_PROMPT, ModelCheck, check_model
from runner.llm.client import ModelClient
from runner.settings import Settings


def check_models(
    engine: Engine, settings: Settings, ref: str | None
) -> list[tuple[str, ModelCheck]]:
    """(model name, report) for `ref` (id, name or label) or every active model. A model found
    not to honour json_schema is marked, so its jobs make one call each. Raises NotFound for an
    unknown `ref`, InvalidInput when there is no active model."""
    rows = (
        [catalog.resolve_model(engine, ref)]
        if ref
        else catalog.list_models(engine, active_only=True)
    )
    if not rows:
        raise InvalidInput("no active model to check: add one with `promptbatch models add`")
    client = ModelClient(settings)
    try:
        reports = [(row.name, check_model(client, probe_job(row))) for row in rows]
    finally:
        client.close()
    for row, (_, report) in zip(rows, reports, strict=True):
        if report.json_schema is False and row.supports_json_schema is not False:
            results.mark_json_schema_unsupported(engine, row.id)
    return reports


def probe_job(row: catalog.ModelRow) -> ClaimedJob:
    """A job-shaped request for `row` that no queue holds (ids 0), asking CHECK_PROMPT."""
    return ClaimedJob(
        id=0,
        prompt_id=0,
        model_id=row.id,
        run_index=0,
        batch_key="check",
        attempt=1,
        max_attempts=1,
        worker_id="models-check",
        prompt_text=CHECK_PROMPT,
        provider=row.provider,
        model_name=row.name,
        base_url=row.base_url,
        supports_json_schema=None,
        input_usd_per_mtok=row.input_usd_per_mtok,
        output_usd_per_mtok=row.output_usd_per_mtok,
        started_at=utcnow(),
        max_tokens=row.max_tokens,
        temperature=row.temperature,
        seed=row.seed,
        custom_host=row.custom_host,
    )
