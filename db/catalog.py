"""Prompts, models and the entity catalog: the named operations the CLI and console call."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlsplit

from sqlalchemy import Connection, Engine, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from db.engine import read_tx, write_operation
from db.errors import InvalidInput, NotFound
from db.models import Entity, EntityAlias, Model, Prompt, utcnow
from db.queue import write_audit
from db.results import ensure_entities
from db.types import AuditAction, Provider

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
    base_url: str | None = None,
    max_concurrency: int | None = None,
    input_usd_per_mtok: float | None = None,
    output_usd_per_mtok: float | None = None,
    actor: str = "cli",
) -> int:
    """Add a model (or update the existing one with the same provider and name); returns its id.

    Raises InvalidInput for an unknown provider, a compatible model without base_url, or a bad cap.
    """
    _check_model(provider, name, base_url, max_concurrency)
    _check_price("input price", input_usd_per_mtok)
    _check_price("output price", output_usd_per_mtok)
    values = {
        "label": label or name,
        "base_url": base_url,
        "max_concurrency": max_concurrency,
        "input_usd_per_mtok": input_usd_per_mtok,
        "output_usd_per_mtok": output_usd_per_mtok,
        "is_active": True,
    }

    return _upsert_model(engine, provider, name, values, actor)


@write_operation
def _upsert_model(
    conn: Connection, provider: str, name: str, values: Mapping[str, object], actor: str
) -> int:
    now = utcnow()
    existing = conn.scalar(select(Model.id).where(Model.provider == provider, Model.name == name))
    if existing is not None:
        conn.execute(update(Model).where(Model.id == existing).values(**values, updated_at=now))
        return int(existing)
    new_id = conn.execute(
        insert(Model)
        .values(provider=provider, name=name, created_at=now, updated_at=now, **values)
        .returning(Model.id)
    ).scalar_one()
    audit = {"provider": provider, "name": name}
    write_audit(conn, actor, AuditAction.MODEL_ADD, audit, 1, now)
    return int(new_id)


def _check_model(
    provider: str, name: str, base_url: str | None, max_concurrency: int | None
) -> None:
    if provider not in {p.value for p in Provider}:
        raise InvalidInput(f"unknown provider {provider!r}: use openai, openrouter or compatible")
    if not name.strip():
        raise InvalidInput("model name is empty")
    if provider == Provider.COMPATIBLE and not base_url:
        raise InvalidInput("a compatible model needs --base-url (e.g. http://127.0.0.1:8000/v1)")
    if base_url is not None:
        _check_base_url(base_url)
    _check_max_concurrency(max_concurrency)


def _check_base_url(base_url: str) -> None:
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname or " " in base_url:
        raise InvalidInput(
            f"base URL must be an http:// or https:// URL with a host, got {base_url!r}"
        )


def _check_max_concurrency(value: int | None) -> None:
    if value is not None and not 1 <= value <= MAX_CONCURRENCY:
        raise InvalidInput(f"max concurrency must be from 1 to {MAX_CONCURRENCY}, got {value}")


def _check_price(name: str, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and 0 <= value <= MAX_USD_PER_MTOK):
        raise InvalidInput(
            f"{name} must be a USD amount per million tokens from 0 to "
            f"{MAX_USD_PER_MTOK:,}, got {value}"
        )


def list_models(engine: Engine, *, active_only: bool = False) -> list[ModelRow]:
    """All models (or the active ones), oldest first."""
    query = select(
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
    ).order_by(Model.id)
    if active_only:
        query = query.where(Model.is_active)
    with read_tx(engine) as conn:
        return [ModelRow(**row._mapping) for row in conn.execute(query)]


def update_model(
    engine: Engine,
    model_id: int,
    *,
    label: str | None = None,
    base_url: str | None = None,
    is_active: bool | None = None,
    max_concurrency: int | None = None,
    clear_max_concurrency: bool = False,
    actor: str = "console",
) -> None:
    """Edit a model. Raises NotFound, or InvalidInput for a bad value."""
    _check_max_concurrency(max_concurrency)
    if base_url is not None:
        _check_base_url(base_url)
    values: dict[str, object] = {
        k: v
        for k, v in {
            "label": label,
            "base_url": base_url,
            "is_active": is_active,
            "max_concurrency": max_concurrency,
        }.items()
        if v is not None
    }
    if clear_max_concurrency:
        values["max_concurrency"] = None
    _update_row(engine, Model, model_id, values, actor, AuditAction.MODEL_UPDATE)


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
