"""`promptbatch`: the command line (typer). Every user error is one line on stderr and exit 2.

Each command imports the db and runner modules it uses in its body, so a command pays only for its
own: `enqueue` runs from cron and skips Alembic, the catalog and the CSV and brand parsing.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from db.errors import ConfigError, InvalidInput, PromptBatchError
from db.types import ErrorKind, JobStatus, pause_text

if TYPE_CHECKING:
    from db.engine import Engine
    from db.filters import JobQuery
    from runner.settings import Settings

log = logging.getLogger(__name__)

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="promptbatch: ask every tracked prompt of every model, daily, and count "
    "the brands the answers mention.",
)
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
prompts_app = typer.Typer(no_args_is_help=True, help="Tracked prompts.")
models_app = typer.Typer(no_args_is_help=True, help="Models to ask.")
entities_app = typer.Typer(no_args_is_help=True, help="The brand catalog.")
app.add_typer(db_app, name="db")
app.add_typer(prompts_app, name="prompts")
app.add_typer(models_app, name="models")
app.add_typer(entities_app, name="entities")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
BatchOpt = Annotated[str | None, typer.Option("--batch-key", help="YYYY-MM-DD (UTC date).")]

# --- shared plumbing ------------------------------------------------------------------------------


# Settings read without the PROMPTBATCH_ prefix (runner.settings' aliases).
_UNPREFIXED = frozenset(
    {
        "DATABASE_URL",
        "OPENAI_API_KEY",
        "OPENROUTER_API_KEY",
        "OPENAI_ORG_ID",
        "OPENAI_PROJECT_ID",
        "CONSOLE_PASSWORD",
        "CONSOLE_READ_ONLY",
    }
)


def load_settings(*, warn: bool = True, **overrides: object) -> Settings:
    """Settings from the environment plus CLI overrides; a bad value is a one-line ConfigError.
    Deprecated settings in use are printed as warnings (`warn=False`: the caller logs them, after
    configuring logging, so JSON logs stay JSON lines: `log_deprecations`)."""
    from pydantic import ValidationError

    from runner.settings import Settings

    try:
        base = Settings()
        settings = base.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        field = (".".join(str(p) for p in err["loc"]) or "settings").upper()
        name = (
            field
            if field in _UNPREFIXED or field.startswith("PROMPTBATCH_")
            else f"PROMPTBATCH_{field}"
        )
        raise ConfigError(f"invalid setting {name}: {err['msg']}") from exc
    if warn:
        for line in settings.deprecations:
            typer.echo(f"warning: {line}", err=True)
    return settings


def log_deprecations(lines: list[str]) -> None:
    """Each deprecation as a WARNING record (action setting_deprecated), for the commands that
    log: in the log's format, JSON included, not as a text line among JSON ones (issue 12)."""
    for line in lines:
        log.warning(line, extra={"action": "setting_deprecated"})


ConcurrencyOpt = Annotated[
    int | None,
    typer.Option("--concurrency", "-c", min=1, max=4096, help="Model calls in flight per process."),
]
ThreadsOpt = Annotated[int | None, typer.Option(hidden=True, help="Deprecated: --concurrency.")]


def _concurrency(concurrency: int | None, threads: int | None) -> tuple[int | None, list[str]]:
    """--concurrency, or the deprecated --threads (one release) and its warning line."""
    if threads is not None and concurrency is None:
        return threads, ["--threads is deprecated: use --concurrency"]
    return concurrency, []


# Engines a command opened; `main` disposes them when the command ends, so a command run in
# process (the tests) leaves no pooled connection behind.
_OPENED: list[Engine] = []


def open_engine(settings: Settings, *, require_schema: bool = True) -> Engine:
    """The engine for DATABASE_URL; SchemaOutOfDate unless migrated (with require_schema)."""
    from db import migrate
    from db.engine import make_engine

    engine = make_engine(settings.database_url)
    _OPENED.append(engine)
    if require_schema:
        migrate.require_current(engine)
    return engine


def batch_key_or_today(value: str | None) -> str:
    """A validated batch key (a real YYYY-MM-DD date), or today's UTC date."""
    if value is None:
        from runner.worker.scheduler import utc_batch_key

        return utc_batch_key()
    try:
        if len(value) != 10:
            raise ValueError(value)
        return date.fromisoformat(value).isoformat()
    except ValueError as exc:
        raise InvalidInput(f"batch key must be a date YYYY-MM-DD, got {value!r}") from exc


def echo_json(data: object) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


# --- db ---------------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the schema to the newest revision (Alembic)."""
    from db import migrate

    settings = load_settings()
    revision = migrate.upgrade(open_engine(settings, require_schema=False))
    typer.echo(f"database at revision {revision}")


# --- prompts, models, entities ----------------------------------------------------------------


@prompts_app.command("import")
def prompts_import(path: Path) -> None:
    """Import prompts from a CSV with header text,category,runs (all or nothing)."""
    from db import catalog
    from runner.cli import inputs

    rows = inputs.read_prompts_csv(path)
    created = catalog.import_prompts(open_engine(load_settings()), rows)
    typer.echo(f"{created} prompts created, {len(rows) - created} already present")


@prompts_app.command("list")
def prompts_list(json_out: JsonOpt = False) -> None:
    """List prompts."""
    from db import catalog

    rows = catalog.list_prompts(open_engine(load_settings()))
    if json_out:
        echo_json([r.__dict__ for r in rows])
        return
    for r in rows:
        state = "active" if r.is_active else "inactive"
        typer.echo(f"{r.id:>5}  {state:<8} runs={r.runs}  [{r.category or '-'}]  {r.text[:90]}")


MaxTokensOpt = Annotated[
    int | None,
    typer.Option(help="Output-token cap per call (default: PROMPTBATCH_DEFAULT_MAX_TOKENS)."),
]
TemperatureOpt = Annotated[
    float | None, typer.Option(help="Sampling temperature 0-2 (default: the provider's).")
]
SeedOpt = Annotated[int | None, typer.Option(help="Sampling seed (default: none sent).")]
CustomHostOpt = Annotated[
    bool | None,
    typer.Option(
        "--custom-host/--no-custom-host",
        help="Allow an openai/openrouter model's API key to go to --base-url's host "
        "(https, or loopback).",
    ),
]
CapOpt = Annotated[
    int | None, typer.Option(help="Jobs of this model in flight across all runners.")
]
RpmOpt = Annotated[
    int | None, typer.Option(help="Requests per minute for all runners together (paced).")
]
TpmOpt = Annotated[
    int | None,
    typer.Option(help="Tokens per minute for all runners together: prompt estimate + max tokens."),
]
BudgetOpt = Annotated[
    float | None,
    typer.Option(help="USD per UTC day for this model; needs its prices. At it, it pauses."),
]
InputPriceOpt = Annotated[float | None, typer.Option(help="USD per 1M prompt tokens.")]
OutputPriceOpt = Annotated[float | None, typer.Option(help="USD per 1M completion tokens.")]
# --unset NAME -> the catalog setting it clears
_UNSETTABLE = {
    "base-url": "base_url",
    "max-concurrency": "max_concurrency",
    "max-tokens": "max_tokens",
    "temperature": "temperature",
    "seed": "seed",
    "rpm": "rpm",
    "tpm": "tpm",
    "daily-budget-usd": "daily_budget_usd",
    "input-price": "input_usd_per_mtok",
    "output-price": "output_usd_per_mtok",
}


@models_app.command("add")
def models_add(
    provider: Annotated[str, typer.Option(help="openai | openrouter | compatible")],
    name: Annotated[str, typer.Option(help="The API model id, e.g. gpt-4o-mini.")],
    label: Annotated[str | None, typer.Option(help="Display name.")] = None,
    base_url: Annotated[
        str | None, typer.Option(help="A compatible server's URL, or a custom host.")
    ] = None,
    custom_host: CustomHostOpt = None,
    max_concurrency: CapOpt = None,
    max_tokens: MaxTokensOpt = None,
    temperature: TemperatureOpt = None,
    seed: SeedOpt = None,
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    daily_budget_usd: BudgetOpt = None,
    input_price: InputPriceOpt = None,
    output_price: OutputPriceOpt = None,
) -> None:
    """Add a model (or update the one with the same provider and name)."""
    from db import catalog

    model_id = catalog.add_model(
        open_engine(load_settings()),
        provider=provider,
        name=name,
        label=label,
        base_url=base_url,
        custom_host=bool(custom_host),
        max_concurrency=max_concurrency,
        max_tokens=max_tokens,
        temperature=temperature,
        seed=seed,
        rpm=rpm,
        tpm=tpm,
        daily_budget_usd=daily_budget_usd,
        input_usd_per_mtok=input_price,
        output_usd_per_mtok=output_price,
    )
    typer.echo(f"model {model_id}: {provider} {name}")


@models_app.command("update")
def models_update(
    model: Annotated[str, typer.Argument(help="The model's id, name or label.")],
    label: Annotated[str | None, typer.Option(help="Display name.")] = None,
    base_url: Annotated[str | None, typer.Option(help="New base URL.")] = None,
    custom_host: CustomHostOpt = None,
    active: Annotated[
        bool | None, typer.Option("--active/--inactive", help="Ask this model or not.")
    ] = None,
    max_concurrency: CapOpt = None,
    max_tokens: MaxTokensOpt = None,
    temperature: TemperatureOpt = None,
    seed: SeedOpt = None,
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    daily_budget_usd: BudgetOpt = None,
    input_price: InputPriceOpt = None,
    output_price: OutputPriceOpt = None,
    unset: Annotated[
        list[str] | None,
        typer.Option(help=f"Clear a setting (repeatable): {', '.join(_UNSETTABLE)}."),
    ] = None,
) -> None:
    """Change a model's settings; what is not given is kept."""
    from db import catalog

    engine = open_engine(load_settings())
    target = catalog.resolve_model(engine, model)
    given = {
        "label": label,
        "base_url": base_url,
        "custom_host": custom_host,
        "is_active": active,
        "max_concurrency": max_concurrency,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "seed": seed,
        "rpm": rpm,
        "tpm": tpm,
        "daily_budget_usd": daily_budget_usd,
        "input_usd_per_mtok": input_price,
        "output_usd_per_mtok": output_price,
    }
    changes: dict[str, object] = {k: v for k, v in given.items() if v is not None}
    for name in unset or ():
        if name not in _UNSETTABLE:
            raise InvalidInput(f"--unset takes one of {', '.join(_UNSETTABLE)}, got {name!r}")
        changes[_UNSETTABLE[name]] = None
    if not changes:
        raise InvalidInput("nothing to change: give a setting to change or --unset NAME")
    catalog.update_model(engine, target.id, actor="cli", **changes)
    typer.echo(f"model {target.id}: {target.provider} {target.name} updated")


@models_app.command("list")
def models_list(json_out: JsonOpt = False) -> None:
    """List models: state, provider, name, the call settings and where the key goes."""
    from db import catalog

    rows = catalog.list_models(open_engine(load_settings()))
    if json_out:
        echo_json([r.__dict__ for r in rows])
        return
    for r in rows:
        settings = " ".join(
            f"{k}={v}"
            for k, v in (
                ("max_concurrency", r.max_concurrency),
                ("max_tokens", r.max_tokens or "default"),
                ("temperature", r.temperature),
                ("seed", r.seed),
                ("rpm", r.rpm),
                ("tpm", r.tpm),
                ("daily_budget_usd", r.daily_budget_usd),
                ("learned_rpm", r.learned_rpm),
                ("learned_tpm", r.learned_tpm),
                ("concurrency", None if r.concurrency is None else f"{r.concurrency:.1f}"),
                (
                    "json_schema",
                    {None: "unknown", True: "yes", False: "no"}[r.supports_json_schema],
                ),
            )
            if v is not None
        )
        host = f"{r.base_url or ''}{' (custom host)' if r.custom_host else ''}"
        typer.echo(
            f"{r.id:>4}  {r.state:<8} {r.provider:<10} {r.name:<32} {settings} {host}".rstrip()
        )
        if r.paused_at is not None:
            typer.echo(f"      {pause_text(r.paused_reason, r.paused_at)}")


@models_app.command("pause")
def models_pause(
    model: Annotated[str, typer.Argument(help="The model's id, name or label.")],
    reason: Annotated[str, typer.Option(help="Why, for the audit log and the console.")] = (
        "paused by an operator"
    ),
) -> None:
    """Pause a model: its jobs stay queued and none is claimed until `models resume`."""
    from db import catalog

    engine = open_engine(load_settings())
    target = catalog.resolve_model(engine, model)
    done = catalog.pause_model(engine, target.id, reason=reason, actor="cli")
    typer.echo(f"model {target.id}: {target.name} {'paused' if done else 'was paused already'}")


@models_app.command("resume")
def models_resume(
    model: Annotated[str, typer.Argument(help="The model's id, name or label.")],
) -> None:
    """Resume a paused model: its queued jobs are claimed again (audited)."""
    from db import catalog

    engine = open_engine(load_settings())
    target = catalog.resolve_model(engine, model)
    done = catalog.resume_model(engine, target.id, actor="cli")
    typer.echo(f"model {target.id}: {target.name} {'resumed' if done else 'was not paused'}")


@models_app.command("check")
def models_check(
    model: Annotated[
        str | None, typer.Argument(help="A model's id, name or label (default: every active).")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """One real call per model: reachable, key accepted, json_schema honoured, latency and the
    rate-limit headers seen, then a one-line verdict. Exit 1 when a model cannot be used."""
    from runner.cli.probe import check_models

    settings = load_settings()
    reports = check_models(open_engine(settings), settings, model)
    if json_out:
        echo_json([{"model": name, **report.__dict__} for name, report in reports])
    else:
        for name, report in reports:
            typer.echo(f"{name}: {report.verdict}")
            typer.echo(
                f"    reachable={_yes(report.reachable)} key={_yes(report.key_accepted)} "
                f"json_schema={_yes(report.json_schema)} latency={report.latency_ms} ms "
                f"rate-limit headers={','.join(report.rate_limit_headers) or 'none'}"
            )
    raise typer.Exit(0 if all(r.usable for _, r in reports) else 1)


def _yes(value: bool | None) -> str:
    return "unknown" if value is None else ("yes" if value else "no")


@entities_app.command("import")
def entities_import(path: Path) -> None:
    """Import brands from a TSV with header name<TAB>aliases (aliases comma-separated)."""
    from db import catalog
    from runner.cli import inputs

    rows = inputs.read_entities_tsv(path)
    catalog.add_entities(open_engine(load_settings()), rows)
    typer.echo(f"{len(rows)} brands in the catalog file imported")


# --- the batch --------------------------------------------------------------------------------


@app.command()
def enqueue(batch_key: BatchOpt = None, json_out: JsonOpt = False) -> None:
    """Create today's (or --batch-key's) jobs: active prompts x active models x runs. Idempotent."""
    from db import queue

    settings = load_settings()
    key = batch_key_or_today(batch_key)
    result = queue.enqueue_batch(
        open_engine(settings),
        key,
        max_attempts=settings.max_attempts,
        deadline_at=settings.batch_deadline(datetime.now(UTC)),
        actor="cli",
    )
    data = {"batch_key": result.batch_key, "created": result.created, "existing": result.existing}
    if json_out:
        echo_json(data)
    else:
        typer.echo(f"batch {key}: {result.created} jobs created, {result.existing} existing")


@app.command()
def run(
    drain: Annotated[bool, typer.Option(help="Exit when nothing is due (cron mode).")] = False,
    processes: Annotated[int | None, typer.Option(help="Worker processes.")] = None,
    concurrency: ConcurrencyOpt = None,
    threads: ThreadsOpt = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="Serve Prometheus /metrics on this port."),
    ] = None,
) -> None:
    """Run the scheduler and workers (long-lived), or drain what is due and exit (--drain).

    Exit code with --drain: 0 when every job ended well, 1 when some failed or are left queued
    (behind a paused model, or waiting past the drain's horizon), over today's batch and every
    batch with work when the drain started.
    """
    from runner.logs import configure_logging
    from runner.worker.supervisor import Supervisor

    calls, notes = _concurrency(concurrency, threads)
    settings = load_settings(warn=False, processes=processes, concurrency=calls)
    configure_logging(settings)
    log_deprecations([*notes, *settings.deprecations])
    engine = open_engine(settings)
    check_api_keys(engine, settings)
    if metrics_port is not None:
        from runner.worker.metrics import serve_metrics

        try:
            serve_metrics(engine, metrics_port)
        except OSError as exc:
            raise ConfigError(f"--metrics-port {metrics_port}: {exc.strerror or exc}") from exc
    code = Supervisor(settings, engine, drain=drain).run()
    raise typer.Exit(code)


def check_api_keys(engine: Engine, settings: Settings) -> None:
    """Refuse to start when an active model's provider has no API key configured."""
    from db import catalog

    for model in catalog.list_models(engine, active_only=True):
        if model.provider != "compatible" and settings.api_key(model.provider) is None:
            env = "OPENAI_API_KEY" if model.provider == "openai" else "OPENROUTER_API_KEY"
            raise ConfigError(
                f"{env} is not set but active model {model.name!r} "
                f"(provider {model.provider}) needs it"
            )


@app.command()
def status(batch_key: BatchOpt = None, json_out: JsonOpt = False) -> None:
    """Jobs per status for a batch (default: today's UTC batch), as the console's Overview."""
    from db import insights

    engine = open_engine(load_settings())
    overview = insights.batch_overview(engine, batch_key_or_today(batch_key))
    missed = insights.missed_batches(engine)
    paused = insights.paused_models(engine)
    if json_out:
        echo_json(
            {
                "batch_key": overview.batch_key,
                "counts": overview.counts,
                "total": overview.total,
                "deferred": overview.deferred,
                "deferrals": overview.deferrals,
                "interruptions": overview.interruptions,
                "paused_models": [p.__dict__ for p in paused],
                "missed_batches": missed,
            }
        )
        return
    typer.echo(f"batch {overview.batch_key}: {overview.total} jobs")
    for name, n in overview.counts.items():
        waiting = (
            f" ({overview.deferred} deferred)" if name == "queued" and overview.deferred else ""
        )
        typer.echo(f"  {name:<11} {n}{waiting}")
    typer.echo(
        f"deferrals {overview.deferrals}, lost leases {overview.interruptions} "
        "(neither spends an attempt)"
    )
    for p in paused:
        typer.echo(f"model {p.name}: {pause_text(p.reason, p.since)}; queued: {p.queued}")
    if missed:
        typer.echo(f"missed batches (runner was down): {', '.join(missed)}")


@app.command()
def estimate(batch_key: BatchOpt = None, json_out: JsonOpt = False) -> None:
    """A batch's expected cost per model before anything is spent: its jobs x the mean tokens of
    the model's answers in the last batches (else max_tokens) x its prices."""
    from db import insights

    settings = load_settings()
    key = batch_key_or_today(batch_key)
    rows = insights.estimate_batch(
        open_engine(settings), key, default_max_tokens=settings.default_max_tokens
    )
    total = sum(r.usd or 0.0 for r in rows)
    if json_out:
        echo_json({"batch_key": key, "models": [r.__dict__ for r in rows], "total_usd": total})
        return
    typer.echo(f"batch {key}: expected ${total:.4f} (models without prices not counted)")
    for r in rows:
        usd = "unpriced" if r.usd is None else f"${r.usd:.4f} (${r.usd_per_job:.6f}/job)"
        over = r.usd is not None and r.daily_budget_usd is not None and r.usd > r.daily_budget_usd
        budget = (
            f", budget ${r.daily_budget_usd:g}/day{' (over it: it pauses there)' if over else ''}"
            if r.daily_budget_usd
            else ""
        )
        typer.echo(
            f"  {r.model}: {r.jobs} jobs x {r.prompt_tokens_per_job:.0f}+"
            f"{r.completion_tokens_per_job:.0f} tokens = {usd} [{r.basis}]{budget}"
        )
    if settings.daily_budget_usd is not None:
        typer.echo(f"global budget: ${settings.daily_budget_usd:g} per UTC day")


StatusOpt = Annotated[
    list[str] | None, typer.Option("--status", help="queued, failed, ... (repeatable).")
]
ModelIdOpt = Annotated[list[int] | None, typer.Option("--model-id", help="Repeatable.")]
ModelOpt = Annotated[
    list[str] | None, typer.Option("--model", help="A model's name, label or id (repeatable).")
]
PromptOpt = Annotated[list[int] | None, typer.Option("--prompt-id", help="Repeatable.")]
ErrorKindOpt = Annotated[
    str | None, typer.Option("--error-kind", help="rate_limited, timeout, auth, ...")
]
ErrorTextOpt = Annotated[str | None, typer.Option("--error-text", help="Error contains this.")]
PromptTextOpt = Annotated[str | None, typer.Option("--prompt-text", help="Prompt contains this.")]
SinceOpt = Annotated[
    str | None,
    typer.Option(
        "--since", help="Changed since: 30m, 2h, 1d, or a UTC date or time (2026-12-01T06:00)."
    ),
]
JobIdsOpt = Annotated[list[int] | None, typer.Option("--job-id", help="Repeatable.")]


@dataclass(frozen=True)
class FilterArgs:
    """The job filter options as given (the console's Jobs filters, plus --since)."""

    statuses: list[str] | None = None
    batch_key: str | None = None
    model_ids: list[int] | None = None
    models: list[str] | None = None
    prompt_ids: list[int] | None = None
    error_kind: str | None = None
    error_text: str | None = None
    prompt_text: str | None = None
    since: str | None = None

    def query(self, engine: Engine) -> JobQuery:
        """The JobQuery these options mean; InvalidInput / NotFound for a bad value."""
        from db import catalog
        from db.filters import JobQuery
        from runner.cli.inputs import parse_since

        known = [s.value for s in JobStatus]
        for status_ in self.statuses or ():
            if status_ not in known:
                raise InvalidInput(f"unknown status {status_!r}: use one of {', '.join(known)}")
        if self.error_kind is not None and self.error_kind not in {k.value for k in ErrorKind}:
            raise InvalidInput(
                f"unknown error kind {self.error_kind!r}: use one of "
                f"{', '.join(k.value for k in ErrorKind)}"
            )
        model_ids = [
            *(self.model_ids or ()),
            *(catalog.resolve_model(engine, m).id for m in self.models or ()),
        ]
        return JobQuery(
            batch_key=batch_key_or_today(self.batch_key) if self.batch_key is not None else None,
            statuses=tuple(self.statuses or ()),
            model_ids=tuple(model_ids),
            prompt_ids=tuple(self.prompt_ids or ()),
            prompt_text=self.prompt_text or "",
            error_kind=self.error_kind,
            error_text=self.error_text or "",
            updated_since=parse_since(self.since) if self.since is not None else None,
        )


@app.command()
def jobs(
    status_: StatusOpt = None,
    batch_key: BatchOpt = None,
    model_id: ModelIdOpt = None,
    model: ModelOpt = None,
    prompt_id: PromptOpt = None,
    error_kind: ErrorKindOpt = None,
    error_text: ErrorTextOpt = None,
    prompt_text: PromptTextOpt = None,
    since: SinceOpt = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    json_out: JsonOpt = False,
) -> None:
    """List jobs, newest first, filtered as on the console's Jobs page."""
    from db import insights

    engine = open_engine(load_settings())
    where = FilterArgs(
        statuses=status_,
        batch_key=batch_key,
        model_ids=model_id,
        models=model,
        prompt_ids=prompt_id,
        error_kind=error_kind,
        error_text=error_text,
        prompt_text=prompt_text,
        since=since,
    ).query(engine)
    page = insights.list_jobs_page(engine, where, limit=limit)
    if json_out:
        echo_json([r.__dict__ for r in page.rows])
        return
    for r in page.rows:
        error = f" {r.error_kind}: {(r.error_message or '')[:60]}" if r.error_kind else ""
        typer.echo(
            f"{r.id:>7} {r.batch_key} {r.status:<10} {r.model:<24} run={r.run_index} "
            f"attempt {r.attempt_count}/{r.max_attempts}{error}  {r.prompt[:50]}"
        )
    more = "+" if page.total_capped else ""
    typer.echo(f"{len(page.rows)} of {page.total:,}{more} matching jobs shown", err=True)


def _targets(
    engine: Engine, job_id: list[int] | None, args: FilterArgs
) -> tuple[list[int] | None, JobQuery | None]:
    """(job ids, None) or (None, filter): what an action acts on. InvalidInput when neither."""
    if job_id:
        return job_id, None
    where = args.query(engine)
    if not where.describe():
        raise InvalidInput(
            "give --job-id or at least one filter (--status, --batch-key, "
            "--model, --model-id, --prompt-id, --error-kind, --since, ...)"
        )
    return None, where


@app.command()
def requeue(
    job_id: JobIdsOpt = None,
    status_: StatusOpt = None,
    batch_key: BatchOpt = None,
    model_id: ModelIdOpt = None,
    model: ModelOpt = None,
    prompt_id: PromptOpt = None,
    error_kind: ErrorKindOpt = None,
    error_text: ErrorTextOpt = None,
    prompt_text: PromptTextOpt = None,
    since: SinceOpt = None,
) -> None:
    """Re-queue failed, cancelled or skipped jobs with a fresh attempt budget."""
    from db import operations

    settings = load_settings()
    engine = open_engine(settings)
    args = FilterArgs(
        statuses=status_,
        batch_key=batch_key,
        model_ids=model_id,
        models=model,
        prompt_ids=prompt_id,
        error_kind=error_kind,
        error_text=error_text,
        prompt_text=prompt_text,
        since=since,
    )
    ids, where = _targets(engine, job_id, args)
    changed = operations.requeue_jobs(
        engine,
        job_ids=ids,
        where=where,
        fresh_attempts=settings.max_attempts,
        deadline_at=settings.batch_deadline(datetime.now(UTC)),
        actor="cli",
    )
    typer.echo(f"{len(changed)} re-queued")


@app.command()
def cancel(
    job_id: JobIdsOpt = None,
    status_: StatusOpt = None,
    batch_key: BatchOpt = None,
    model_id: ModelIdOpt = None,
    model: ModelOpt = None,
    prompt_id: PromptOpt = None,
    error_kind: ErrorKindOpt = None,
    error_text: ErrorTextOpt = None,
    prompt_text: PromptTextOpt = None,
    since: SinceOpt = None,
) -> None:
    """Cancel queued or processing jobs (a late result of a processing job is dropped)."""
    from db import operations

    engine = open_engine(load_settings())
    args = FilterArgs(
        statuses=status_,
        batch_key=batch_key,
        model_ids=model_id,
        models=model,
        prompt_ids=prompt_id,
        error_kind=error_kind,
        error_text=error_text,
        prompt_text=prompt_text,
        since=since,
    )
    ids, where = _targets(engine, job_id, args)
    changed = operations.cancel_jobs(engine, job_ids=ids, where=where, actor="cli")
    typer.echo(f"{len(changed)} cancelled")


@app.command()
def simulator(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535)] = 8787,
    processes: Annotated[
        int,
        typer.Option(
            min=1, max=64, help="Processes serving the port (SO_REUSEPORT); state is per process."
        ),
    ] = 1,
    reuse_port: Annotated[bool, typer.Option(hidden=True)] = False,
) -> None:
    """Serve the OpenAI-compatible model simulator (realistic answers, fault injection)."""
    from runner.logs import configure_logging
    from runner.simulator.server import serve

    configure_logging(load_settings())
    serve(host, port, processes=processes, reuse_port=reuse_port)


@app.command()
def demo(
    processes: Annotated[int | None, typer.Option(help="Worker processes.")] = None,
    concurrency: ConcurrencyOpt = None,
    threads: ThreadsOpt = None,
    open_console: Annotated[
        bool,
        typer.Option(
            "--console/--no-console", help="Serve the console on the demo database afterwards."
        ),
    ] = False,
) -> None:
    """Migrate, load demo prompts and brands, start the simulator, run today's batch, summarize."""
    from runner.cli.demo import run_demo
    from runner.logs import configure_logging

    # Job-by-job INFO lines would bury the progress line and the summary: warnings only.
    calls, notes = _concurrency(concurrency, threads)
    settings = load_settings(
        warn=False, processes=processes, concurrency=calls, log_level="WARNING"
    )
    configure_logging(settings)
    log_deprecations([*notes, *settings.deprecations])
    code = run_demo(settings)
    if open_console:
        typer.echo("\nopening the console on the demo database (Ctrl-C to stop)")
        console()
    raise typer.Exit(code)


@app.command()
def console(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8501,
) -> None:
    """Serve the operations console (Streamlit) at http://HOST:PORT.

    Streamlit replaces this process (exec), so SIGTERM and SIGINT (Ctrl-C, `docker stop`) reach
    it directly and nothing is left running when it stops: as a child, it outlived a terminated
    `promptbatch console` (every browser-test run left one behind).
    """
    import os
    from importlib import resources

    settings = load_settings()
    open_engine(settings)  # fail here, in one line, rather than on the first page
    if host not in ("127.0.0.1", "localhost", "::1") and settings.console_password is None:
        typer.echo(
            f"warning: the console listens on {host} without CONSOLE_PASSWORD; anyone who "
            "can reach it can re-queue and cancel jobs",
            err=True,
        )
    app_path = str(resources.files("console") / "app.py")
    typer.echo(f"console: http://{host}:{port}")
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        app_path,
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--client.toolbarMode",
        "minimal",
    ]
    _close_opened()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, cmd)


def _close_opened() -> None:
    while _OPENED:
        _OPENED.pop().dispose()


def main(argv: list[str] | None = None) -> None:
    """Console entry point (`argv`: the arguments, default sys.argv[1:]): user errors become one
    line on stderr and exit code 2. Always ends in SystemExit."""
    try:
        code = app(args=argv, standalone_mode=False)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except typer.TyperException as exc:  # usage errors (typer vendors its own click)
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            typer.echo(f"promptbatch: error: {exc}", err=True)
        sys.exit(getattr(exc, "exit_code", 2))
    except PromptBatchError as exc:
        typer.echo(f"promptbatch: error: {exc}", err=True)
        sys.exit(2)
    finally:
        _close_opened()
    sys.exit(code if isinstance(code, int) else 0)
