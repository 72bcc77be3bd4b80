"""Prompts, models and the entity catalog: the named operations the CLI and console call."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Connection, Engine, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from db.endpoints import check_endpoint
from db.engine import read_tx, write_operation
from db.errors import InvalidInput, NotFound
from db.models import Entity, EntityAlias, Model, ModelPacing, Prompt, utcnow
from db.queue import write_audit
from db.results import ensure_entities
from db.types import AuditAction

MAX_PROMPT_CHARS = 4000
MAX_CONCURRENCY = 10_000  # jobs of one model in flight across all runners
MAX_USD_PER_MTOK = 10_000.0  # a sanity ceiling; the dearest models cost well under $1,000/Mtok


@dataclass(frozen=True)
class PromptRow:
    id: int
    text: str
    category: str | None
    runs: int
    is_active: bool
    last_run_at: datetime | None


@dataclass(frozen=True)
class ModelRow:
    id: int
    provider: str
    name: str
    label: str
    base_url: str | None
    is_active: bool
    max_concurrency: int | None
    supports_json_schema: bool | None
    input_usd_per_mtok: float | None
    output_usd_per_mtok: float | None
    max_tokens: int | None
    temperature: float | None
    seed: int | None
    custom_host: bool
    rpm: int | None = None
    tpm: int | None = None
    daily_budget_usd: float | None = None
    learned_rpm: int | None = None  # the provider's limits, as its headers last stated them
    learned_tpm: int | None = None
    concurrency: float | None = None  # jobs in flight adapted to its 429s (AIMD); None: not
    paused_at: datetime | None = None  # set: no job of it is claimed until resumed
    paused_reason: str | None = None  # the error that paused it, "budget", or the operator's
    failure_streak: int = 0  # model-level failures since its last answer

    @property
    def state(self) -> str:
        """'inactive', 'paused' or 'active'."""
        return "inactive" if not self.is_active else ("paused" if self.paused_at else "active")


@dataclass(frozen=True)
class NewPrompt:
    """A prompt to import: text 1..4000 chars, runs >= 1 per day."""

    text: str
    category: str | None
    runs: int


# --- prompts -----------------------------------------------------------------------------------


def import_prompts(engine: Engine, prompts: Sequence[NewPrompt], *, actor: str = "cli") -> int:
    """Insert prompts, all or nothing; an already-active identical text is left alone.

    Returns how many were created. Raises InvalidInput (nothing written) for a bad row.
    """
    for i, p in enumerate(prompts, start=1):
        _check_prompt(p, f"row {i}")

    return _insert_prompts(engine, prompts, actor)


@write_operation
def _insert_prompts(conn: Connection, prompts: Sequence[NewPrompt], actor: str) -> int:
    now = utcnow()
    active = set(conn.scalars(select(Prompt.text).where(Prompt.is_active)))
    rows = [
        {
            "text": p.text,
            "category": p.category,
            "runs": p.runs,
            "is_active": True,
            "created_at": now,
            "updated_at": now,
        }
        for p in prompts
        if p.text not in active
    ]
    if rows:
        conn.execute(insert(Prompt), rows)
    write_audit(conn, actor, AuditAction.PROMPTS_IMPORT, {"rows": len(prompts)}, len(rows), now)
    return len(rows)


def _check_prompt(p: NewPrompt, where: str) -> None:
    if not p.text.strip():
        raise InvalidInput(f"{where}: prompt text is empty")
    if bad := next((c for c in p.text if ord(c) < 32 and c not in "\t\n\r"), None):
        # PostgreSQL refuses NUL in text and SQLite would silently cut the prompt there.
        raise InvalidInput(f"{where}: prompt text contains control character U+{ord(bad):04X}")
    if len(p.text) > MAX_PROMPT_CHARS:
        raise InvalidInput(
            f"{where}: prompt text is {len(p.text)} characters (at most {MAX_PROMPT_CHARS})"
        )
    if p.runs < 1:
        raise InvalidInput(f"{where}: runs must be a whole number >= 1, got {p.runs}")


def list_prompts(engine: Engine, *, active_only: bool = False) -> list[PromptRow]:
    """All prompts (or the active ones), oldest first."""
    query = select(
        Prompt.id, Prompt.text, Prompt.category, Prompt.runs, Prompt.is_active, Prompt.last_run_at
    ).order_by(Prompt.id)
    if active_only:
        query = query.where(Prompt.is_active)
    with read_tx(engine) as conn:
        return [PromptRow(**row._mapping) for row in conn.execute(query)]


def update_prompt(
    engine: Engine,
    prompt_id: int,
    *,
    text: str | None = None,
    category: str | None = None,
    runs: int | None = None,
    is_active: bool | None = None,
    actor: str = "console",
) -> None:
    """Edit a prompt. Raises NotFound, or InvalidInput for a bad value or a duplicate text."""
    values: dict[str, object] = {
        k: v
        for k, v in {
            "text": text,
            "category": category,
            "runs": runs,
            "is_active": is_active,
        }.items()
        if v is not None
    }
    if text is not None or runs is not None:
        _check_prompt(
            NewPrompt(text if text is not None else "x", None, runs if runs is not None else 1),
            f"prompt {prompt_id}",
        )
    _update_row(engine, Prompt, prompt_id, values, actor, AuditAction.PROMPT_UPDATE)


# --- models ------------------------------------------------------------------------------------


def add_model(
    engine: Engine,
    *,
    provider: str,
    name: str,
    label: str | None = None,
    actor: str = "cli",
    **settings: object,
) -> int:
    """Add a model (or update the existing one with the same provider and name); returns its id.

    `settings` are MODEL_SETTINGS (base_url, max_concurrency, input/output_usd_per_mtok,
    max_tokens, temperature, seed, custom_host, rpm, tpm); a missing one takes its default. Raises
    InvalidInput (nothing written) for an unknown provider or setting, a bad value, or a base URL
    its provider's key may not go to (db.endpoints).
    """
    if not name.strip():
        raise InvalidInput("model name is empty")
    values = {**_MODEL_DEFAULTS, **_checked(settings)}
    check_endpoint(provider, _str(values["base_url"]), bool(values["custom_host"]))
    _check_budget_priced(values)
    values.update(label=label or name, is_active=True)
    return _upsert_model(engine, provider, name, values, actor)


# name -> default; None means "not set": the runner's default (max_tokens) or the provider's.
_MODEL_DEFAULTS: dict[str, object] = {
    "base_url": None,
    "max_concurrency": None,
    "input_usd_per_mtok": None,
    "output_usd_per_mtok": None,
    "max_tokens": None,
    "temperature": None,
    "seed": None,
    "custom_host": False,
    "rpm": None,
    "tpm": None,
    "daily_budget_usd": None,
}
MODEL_SETTINGS = frozenset(_MODEL_DEFAULTS)
MAX_TOKENS = 1_000_000  # max_tokens ceiling; the longest outputs models offer are well below
MAX_RPM = 10_000_000  # requests per minute; OpenAI's highest tiers are far below
MAX_TPM = 10_000_000_000  # tokens per minute
SEED_RANGE = (-(2**63), 2**63 - 1)  # a BIGINT, as OpenAI's `seed` is an integer


def _checked(settings: Mapping[str, object]) -> dict[str, object]:
    """`settings` validated one by one (the base URL's destination is checked with the rest)."""
    unknown = sorted(set(settings) - MODEL_SETTINGS)
    if unknown:
        raise InvalidInput(f"unknown model setting {unknown[0]!r}")
    for key, value in settings.items():
        if value is not None:
            _CHECKS.get(key, lambda _v: None)(value)
    return dict(settings)


def _check_range(what: str, low: float, high: float, whole: bool) -> Callable[[object], None]:
    def check(value: object) -> None:
        kind = int if whole else (int, float)
        if isinstance(value, bool) or not isinstance(value, kind):
            raise InvalidInput(f"{what} must be a {'whole ' if whole else ''}number, got {value!r}")
        if not (math.isfinite(value) and low <= value <= high):
            raise InvalidInput(f"{what} must be from {low:g} to {high:g}, got {value}")

    return check


_CHECKS: dict[str, Callable[[object], None]] = {
    "max_concurrency": _check_range("max concurrency", 1, MAX_CONCURRENCY, True),
    "input_usd_per_mtok": _check_range(
        "input price (USD per 1M tokens)", 0, MAX_USD_PER_MTOK, False
    ),
    "output_usd_per_mtok": _check_range(
        "output price (USD per 1M tokens)", 0, MAX_USD_PER_MTOK, False
    ),
    "max_tokens": _check_range("max tokens", 1, MAX_TOKENS, True),
    "temperature": _check_range("temperature", 0, 2, False),
    "seed": _check_range("seed", SEED_RANGE[0], SEED_RANGE[1], True),
    "rpm": _check_range("rpm (requests per minute)", 1, MAX_RPM, True),
    "tpm": _check_range("tpm (tokens per minute)", 1, MAX_TPM, True),
    "daily_budget_usd": _check_range("daily budget (USD)", 0.000001, 1e9, False),
}


def _check_budget_priced(values: Mapping[str, object]) -> None:
    """A daily budget is kept at each job's worst case, which needs the model's prices."""
    if values.get("daily_budget_usd") is not None and (
        values.get("input_usd_per_mtok") is None or values.get("output_usd_per_mtok") is None
    ):
        raise InvalidInput(
            "a daily budget needs the model's prices: set --input-price and --output-price"
        )


def _str(value: object) -> str | None:
    return str(value) if value is not None else None


@write_operation
def _upsert_model(
    conn: Connection, provider: str, name: str, values: Mapping[str, object], actor: str
) -> int:
    now = utcnow()
    existing = conn.scalar(select(Model.id).where(Model.provider == provider, Model.name == name))
    if existing is not None:
        conn.execute(update(Model).where(Model.id == existing).values(**values, updated_at=now))
        write_audit(conn, actor, AuditAction.MODEL_UPDATE, {"id": existing, **values}, 1, now)
        return int(existing)
    new_id = conn.execute(
        insert(Model)
        .values(provider=provider, name=name, created_at=now, updated_at=now, **values)
        .returning(Model.id)
    ).scalar_one()
    audit = {"provider": provider, "name": name, **values}
    write_audit(conn, actor, AuditAction.MODEL_ADD, audit, 1, now)
    return int(new_id)


def list_models(engine: Engine, *, active_only: bool = False) -> list[ModelRow]:
    """All models (or the active ones), oldest first."""
    query = (
        select(
            Model.id,
            Model.provider,
            Model.name,
            Model.label,
            Model.base_url,
            Model.is_active,
            Model.max_concurrency,
            Model.supports_json_schema,
            Model.input_usd_per_mtok,
            Model.output_usd_per_mtok,
            Model.max_tokens,
            Model.temperature,
            Model.seed,
            Model.custom_host,
            Model.rpm,
            Model.tpm,
            Model.daily_budget_usd,
            ModelPacing.learned_rpm,
            ModelPacing.learned_tpm,
            ModelPacing.concurrency,
            Model.paused_at,
            Model.paused_reason,
            Model.failure_streak,
        )
        .outerjoin(ModelPacing, ModelPacing.model_id == Model.id)
        .order_by(Model.id)
    )
    if active_only:
        query = query.where(Model.is_active)
    with read_tx(engine) as conn:
        return [ModelRow(**row._mapping) for row in conn.execute(query)]


def update_model(
    engine: Engine, model_id: int, *, actor: str = "console", **changes: object
) -> None:
    """Edit a model: `changes` are label, is_active and MODEL_SETTINGS; a setting given as None is
    cleared (back to its default). Raises NotFound, or InvalidInput (nothing written) for an
    unknown setting, a bad value, or a base URL the model's key may not go to."""
    editable = {k: v for k, v in changes.items() if k not in ("label", "is_active")}
    values: dict[str, object] = {
        **_checked(editable),
        **{k: changes[k] for k in ("label", "is_active") if k in changes},
    }
    if "custom_host" in values and values["custom_host"] is None:
        values["custom_host"] = False
    if "label" in values and not str(values["label"] or "").strip():
        raise InvalidInput("model label is empty")
    if values:
        _write_model(engine, model_id, values, actor)


@write_operation
def _write_model(conn: Connection, model_id: int, values: dict[str, object], actor: str) -> None:
    row = conn.execute(
        select(
            Model.provider,
            Model.base_url,
            Model.custom_host,
            Model.daily_budget_usd,
            Model.input_usd_per_mtok,
            Model.output_usd_per_mtok,
        ).where(Model.id == model_id)
    ).one_or_none()
    if row is None:
        raise NotFound(f"no model with id {model_id}")
    merged = {**row._asdict(), **values}
    check_endpoint(row.provider, _str(merged["base_url"]), bool(merged["custom_host"]))
    _check_budget_priced(merged)
    if merged["base_url"] != row.base_url:  # another server: what it takes is not known yet
        values = {**values, "supports_json_schema": None}
    now = utcnow()
    conn.execute(update(Model).where(Model.id == model_id).values(**values, updated_at=now))
    write_audit(conn, actor, AuditAction.MODEL_UPDATE, {"id": model_id, **values}, 1, now)


def _update_row(
    engine: Engine,
    table: type[Prompt] | type[Model],
    row_id: int,
    values: dict[str, object],
    actor: str,
    action: AuditAction,
) -> None:
    if values:
        _write_row(engine, table, row_id, values, actor, action)


@write_operation
def _write_row(
    conn: Connection,
    table: type[Prompt] | type[Model],
    row_id: int,
    values: dict[str, object],
    actor: str,
    action: AuditAction,
) -> None:
    now = utcnow()
    try:
        done = conn.execute(
            update(table).where(table.id == row_id).values(**values, updated_at=now)
        )
    except IntegrityError as exc:
        raise InvalidInput(
            f"{table.__tablename__} {row_id}: {values} conflicts with an existing row"
        ) from exc
    if done.rowcount != 1:
        raise NotFound(f"no {table.__tablename__[:-1]} with id {row_id}")
    write_audit(conn, actor, action, {"id": row_id, **values}, 1, now)


def pause_model(engine: Engine, model_id: int, *, reason: str, actor: str) -> bool:
    """Pause a model: no more of its jobs are claimed, they stay queued (until their deadline).
    False when it was paused already (nothing written); raises NotFound."""
    return _set_paused(engine, model_id, (utcnow(), reason.strip()[:500] or "paused"), actor)


def resume_model(engine: Engine, model_id: int, *, actor: str) -> bool:
    """Resume a paused model (its failure streak restarts); its queued jobs are claimed again.
    False when it was not paused (nothing written); raises NotFound."""
    return _set_paused(engine, model_id, None, actor)


@write_operation
def _set_paused(
    conn: Connection, model_id: int, pause: tuple[datetime, str] | None, actor: str
) -> bool:
    """Pause (`pause` = (when, reason)) or resume a model; audited."""
    row = conn.execute(
        select(Model.paused_at).where(Model.id == model_id).with_for_update()
    ).one_or_none()
    if row is None:
        raise NotFound(f"no model with id {model_id}")
    if (row.paused_at is not None) == (pause is not None):
        return False
    now = utcnow()
    at, reason = pause or (None, None)
    conn.execute(
        update(Model)
        .where(Model.id == model_id)
        .values(paused_at=at, paused_reason=reason, failure_streak=0, updated_at=now)
    )
    action = AuditAction.MODEL_PAUSE if pause else AuditAction.MODEL_RESUME
    write_audit(conn, actor, action, {"id": model_id, "reason": reason}, 1, now)
    return True


def resolve_model(engine: Engine, ref: str) -> ModelRow:
    """A model by id or by name. Raises NotFound naming the known models."""
    models = list_models(engine)
    for m in models:
        if ref in (str(m.id), m.name, m.label):
            return m
    known = ", ".join(m.name for m in models) or "none"
    raise NotFound(f"unknown model {ref!r} (known: {known})")


# --- entity catalog ----------------------------------------------------------------------------


@dataclass(frozen=True)
class EntityRow:
    id: int
    name: str
    key: str
    aliases: tuple[str, ...]


def load_entities(engine: Engine) -> list[EntityRow]:
    """The whole entity catalog with aliases (for mention extraction)."""
    with read_tx(engine) as conn:
        entities = conn.execute(select(Entity.id, Entity.name, Entity.key)).all()
        aliases: dict[int, list[str]] = {}
        for entity_id, alias in conn.execute(select(EntityAlias.entity_id, EntityAlias.alias)):
            aliases.setdefault(entity_id, []).append(alias)
    return [EntityRow(e.id, e.name, e.key, tuple(aliases.get(e.id, ()))) for e in entities]


@dataclass(frozen=True)
class NewEntity:
    """A canonical brand to add: display name, matching key, and {alias: alias matching key}."""

    name: str
    key: str
    aliases: dict[str, str] = field(default_factory=dict)


@write_operation
def add_entities(conn: Connection, entities: Sequence[NewEntity]) -> None:
    """Add brands and their aliases in one transaction; existing keys (entity or alias) are kept."""
    ids = ensure_entities(conn, {e.key: e.name for e in entities}, utcnow())
    wanted = {k: (ids[e.key], a) for e in entities for a, k in e.aliases.items()}
    known = set(conn.scalars(select(EntityAlias.key).where(EntityAlias.key.in_(wanted))))
    rows = [
        {"entity_id": entity_id, "alias": alias, "key": key}
        for key, (entity_id, alias) in wanted.items()
        if key not in known
    ]
    if rows:
        conn.execute(insert(EntityAlias), rows)


def count_rows(engine: Engine, table: type[Prompt] | type[Model] | type[Entity]) -> int:
    with read_tx(engine) as conn:
        return int(conn.scalar(select(func.count()).select_from(table)) or 0)
