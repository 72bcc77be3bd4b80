"""`promptbatch demo`: today's batch of the 30 demo prompts x 2 simulated models, end to end."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import typer

from db import catalog, insights, migrate, queue
from db.engine import Engine, make_engine
from runner.cli import inputs
from runner.settings import Settings
from runner.simulator.server import running_simulator
from runner.worker.scheduler import utc_batch_key

DEMO_MODELS = (
    ("sim-gpt-4o-mini", "GPT-4o mini (simulated)"),
    ("sim-claude-3.5-sonnet", "Claude 3.5 Sonnet (simulated)"),
)


def data_file(name: str) -> Path:
    return Path(str(resources.files("runner") / "data" / name))


def run_demo(settings: Settings) -> int:
    """Run the demo batch; returns the drain's exit code (0 = every job succeeded)."""
    from runner.cli.probe import check_models
    from runner.worker.supervisor import Supervisor

    engine = make_engine(settings.database_url)
    typer.echo(f"database: {engine.url.render_as_string(hide_password=True)}")
    typer.echo(f"schema at revision {migrate.upgrade(engine)}")
    created = catalog.import_prompts(
        engine, inputs.read_prompts_csv(data_file("demo_prompts.csv")), actor="demo"
    )
    catalog.add_entities(engine, inputs.read_entities_tsv(data_file("entities.tsv")))
    typer.echo(f"demo prompts: {created} created; brand catalog loaded")
    with running_simulator() as sim:
        for name, label in DEMO_MODELS:
            catalog.add_model(
                engine,
                provider="compatible",
                name=name,
                label=label,
                base_url=sim.base_url,
                actor="demo",
            )
        typer.echo(f"simulator (simulated models, no real LLM is called): {sim.base_url}")
        # The first step against a real provider, shown here: one call per model, a verdict each.
        for name, report in check_models(engine, settings, None):
            typer.echo(f"models check: {name}: {report.verdict} ({report.latency_ms} ms)")
        key = utc_batch_key()
        result = queue.enqueue_batch(
            engine,
            key,
            max_attempts=settings.max_attempts,
            deadline_at=settings.batch_deadline(datetime.now(UTC)),
            actor="demo",
        )
        typer.echo(f"batch {key}: {result.created} jobs created, {result.existing} existing")
        code = Supervisor(settings, engine, drain=True).run()
    sys.stderr.write("\n")
    print_summary(engine, key)
    return code


def print_summary(engine: Engine, batch_key: str) -> None:
    """The batch's counts and its ten most mentioned brands over all models (the console's
    Overview and Mentions reads)."""
    overview = insights.batch_overview(engine, batch_key)
    typer.echo(
        f"\nbatch {batch_key}: "
        + ", ".join(f"{n} {s}" for s, n in overview.counts.items() if n)
        + f" (total {overview.total})"
    )
    typer.echo("top brands (answers mentioning / mention rate / share of voice / avg position):")
    brands = insights.brand_visibility(engine, batch_key, batch_key, limit=10)
    for b in (b for b in brands if b.model_id is None):
        typer.echo(
            f"  {b.brand:<18} {b.answers_mentioning:>4}  {b.mention_rate:6.1%}  "
            f"{b.share_of_voice:6.1%}  {b.avg_position:4.1f}"
        )
