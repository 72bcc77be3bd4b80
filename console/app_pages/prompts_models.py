"""Prompts & models: list, add, edit, (de)activate; per model max_concurrency, max_tokens,
temperature, seed and the custom-host opt-in; enqueue today's batch now (idempotent: shows
created / existing)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pandas as pd
import streamlit as st

from console import context, data
from console.text import md_escape
from db import catalog, queue
from db.errors import DatabaseUnavailable, InvalidInput, NotFound
from db.types import Provider, pause_text

PAGE = "prompts_models"
_FLASH = "catalog_flash"
TIME = st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm")


def attempt(action: str, run: Callable[[], str]) -> None:
    """Run a catalog write; its message (or the refusal) shows as this page's flash."""
    if not context.current().can_act:
        st.session_state[_FLASH] = ("error", "Actions are disabled in this console session.")
        st.rerun()
    try:
        message = run()
    except (InvalidInput, NotFound, DatabaseUnavailable) as exc:
        st.session_state[_FLASH] = ("error", f"{action} failed: {exc}")
        st.rerun()
    data.clear()
    st.session_state[_FLASH] = ("success", message)
    st.rerun()  # show the outcome and the changed tables


def flash() -> None:
    shown = st.session_state.pop(_FLASH, None)
    if shown:
        level, message = shown
        (st.success if level == "success" else st.error)(md_escape(message))


def enqueue_now(ctx: context.ConsoleContext) -> None:
    key = context.today_batch_key()
    if st.button(
        f"Enqueue today's batch now ({key})",
        type="primary",
        disabled=not ctx.can_act,
        help="Idempotent: jobs that already exist are left alone",
    ):

        def run() -> str:
            result = queue.enqueue_batch(
                data.engine_for(ctx.database_url),
                key,
                max_attempts=ctx.max_attempts,
                deadline_at=ctx.batch_deadline(datetime.now(UTC)),
                actor=context.ACTOR,
            )
            return f"batch {key}: {result.created} created, {result.existing} existing"

        attempt("Enqueue", run)


def prompts_section(ctx: context.ConsoleContext) -> None:
    st.subheader("Prompts")
    rows = data.prompts(ctx.database_url)
    st.dataframe(
        pd.DataFrame(
            [r.__dict__ for r in rows],
            columns=["id", "is_active", "runs", "category", "text", "last_run_at"],
        ),
        hide_index=True,
        column_config={"last_run_at": TIME, "is_active": st.column_config.CheckboxColumn("active")},
    )
    if not ctx.can_act:
        return
    left, right = st.columns(2)
    with left.form("prompt_add", clear_on_submit=True):
        st.markdown("**Add a prompt**")
        text = st.text_area("Prompt text", max_chars=catalog.MAX_PROMPT_CHARS)
        category = st.text_input("Category")
        runs = st.number_input("Runs per day", min_value=1, max_value=100, value=1, step=1)
        if st.form_submit_button("Add prompt"):
            new = catalog.NewPrompt(text, category.strip() or None, int(runs))

            def add() -> str:
                created = catalog.import_prompts(
                    data.engine_for(ctx.database_url), [new], actor=context.ACTOR
                )
                return "prompt added" if created else "an identical active prompt exists"

            attempt("Add prompt", add)
    with right:
        edit_prompt(ctx, rows)


def edit_prompt(ctx: context.ConsoleContext, rows: list[catalog.PromptRow]) -> None:
    by_id = {r.id: r for r in rows}
    chosen = st.selectbox(
        "Edit prompt",
        list(by_id),
        index=None,
        placeholder="choose a prompt",
        format_func=lambda i: f"#{i} {by_id[i].text[:70]}",
        key="prompt_pick",
    )
    if chosen is None:
        return
    row = by_id[chosen]
    with st.form(f"prompt_edit_{chosen}"):
        text = st.text_area("Prompt text", value=row.text, max_chars=catalog.MAX_PROMPT_CHARS)
        category = st.text_input("Category", value=row.category or "")
        runs = st.number_input("Runs per day", min_value=1, max_value=100, value=row.runs)
        active = st.toggle("Active", value=row.is_active)
        if st.form_submit_button("Save prompt"):

            def save() -> str:
                catalog.update_prompt(
                    data.engine_for(ctx.database_url),
                    chosen,
                    text=text,
                    category=category.strip() or None,
                    runs=int(runs),
                    is_active=active,
                    actor=context.ACTOR,
                )
                return f"prompt #{chosen} saved"

            attempt("Save prompt", save)


def models_section(ctx: context.ConsoleContext) -> None:
    st.subheader("Models")
    rows = data.models(ctx.database_url)
    paused_section(ctx, rows)
    st.dataframe(
        pd.DataFrame(
            [{**r.__dict__, "state": r.state} for r in rows],
            columns=[
                "id",
                "is_active",
                "state",
                "failure_streak",
                "provider",
                "name",
                "label",
                "base_url",
                "custom_host",
                "max_concurrency",
                "max_tokens",
                "temperature",
                "seed",
                "rpm",
                "tpm",
                "learned_rpm",
                "learned_tpm",
                "concurrency",
                "daily_budget_usd",
                "supports_json_schema",
                "input_usd_per_mtok",
                "output_usd_per_mtok",
            ],
        ),
        hide_index=True,
    )
    if not ctx.can_act:
        return
    left, right = st.columns(2)
    with left.form("model_add", clear_on_submit=True):
        st.markdown("**Add a model**")
        provider = st.selectbox("Provider", [p.value for p in Provider])
        name = st.text_input("API model id", placeholder="gpt-4o-mini")
        label = st.text_input("Label")
        base_url = st.text_input("Base URL (compatible providers, or a custom host)")
        custom_host = st.toggle("Send the key to this custom host (openai/openrouter)")
        cap = st.number_input("Max concurrency (0 = unlimited)", min_value=0, value=0, step=1)
        max_tokens = st.number_input("Max tokens (0 = the runner's default)", min_value=0, step=1)
        rpm = st.number_input("Requests per minute, all runners (0 = no limit)", min_value=0)
        tpm = st.number_input("Tokens per minute, all runners (0 = no limit)", min_value=0)
        if st.form_submit_button("Add model"):

            def add() -> str:
                model_id = catalog.add_model(
                    data.engine_for(ctx.database_url),
                    provider=provider,
                    name=name.strip(),
                    label=label.strip() or None,
                    base_url=base_url.strip() or None,
                    custom_host=custom_host,
                    max_concurrency=int(cap) or None,
                    max_tokens=int(max_tokens) or None,
                    rpm=int(rpm) or None,
                    tpm=int(tpm) or None,
                    actor=context.ACTOR,
                )
                return f"model #{model_id} saved"

            attempt("Add model", add)
    with right:
        edit_model(ctx, rows)


def paused_section(ctx: context.ConsoleContext, rows: list[catalog.ModelRow]) -> None:
    """Each paused model with why and since when, and a Resume button (audited)."""
    for row in rows:
        if row.paused_at is None:
            continue
        text, button = st.columns([5, 1])
        text.warning(md_escape(f"{row.label}: {pause_text(row.paused_reason, row.paused_at)}"))
        if button.button("Resume", key=f"model_resume_{row.id}", disabled=not ctx.can_act):

            def resume(model_id: int = row.id, label: str = row.label) -> str:
                done = catalog.resume_model(
                    data.engine_for(ctx.database_url), model_id, actor=context.ACTOR
                )
                return f"{label} {'resumed' if done else 'was not paused'}"

            attempt("Resume", resume)


def pause_button(ctx: context.ConsoleContext, row: catalog.ModelRow) -> None:
    """Pause the chosen model by hand: its jobs stay queued until it is resumed (audited)."""
    if row.paused_at is not None or not row.is_active:
        return
    if st.button("Pause this model", key=f"model_pause_{row.id}"):

        def pause() -> str:
            catalog.pause_model(
                data.engine_for(ctx.database_url),
                row.id,
                reason="paused in the console",
                actor=context.ACTOR,
            )
            return f"{row.label} paused"

        attempt("Pause", pause)


def edit_model(ctx: context.ConsoleContext, rows: list[catalog.ModelRow]) -> None:
    by_id = {r.id: r for r in rows}
    chosen = st.selectbox(
        "Edit model",
        list(by_id),
        index=None,
        placeholder="choose a model",
        format_func=lambda i: f"#{i} {by_id[i].label}",
        key="model_pick",
    )
    if chosen is None:
        return
    row = by_id[chosen]
    pause_button(ctx, row)
    with st.form(f"model_edit_{chosen}"):
        label = st.text_input("Label", value=row.label)
        base_url = st.text_input("Base URL (empty = the provider's API)", value=row.base_url or "")
        custom_host = st.toggle("Send the key to this custom host", value=row.custom_host)
        cap = st.number_input(
            "Max concurrency (0 = unlimited)", min_value=0, value=row.max_concurrency or 0, step=1
        )
        max_tokens = st.number_input(
            "Max tokens (0 = the runner's default)", min_value=0, value=row.max_tokens or 0, step=1
        )
        temperature = st.text_input(
            "Temperature (empty = the provider's default)", value=_text(row.temperature)
        )
        seed = st.text_input("Seed (empty = none)", value=_text(row.seed))
        rpm = st.number_input(
            "Requests per minute, all runners (0 = no limit)", min_value=0, value=row.rpm or 0
        )
        tpm = st.number_input(
            "Tokens per minute, all runners (0 = no limit)", min_value=0, value=row.tpm or 0
        )
        budget = st.number_input(
            "Daily budget, USD (0 = none; needs prices)",
            min_value=0.0,
            value=float(row.daily_budget_usd or 0.0),
            format="%.2f",
        )
        active = st.toggle("Active", value=row.is_active)
        if st.form_submit_button("Save model"):

            def save() -> str:
                catalog.update_model(
                    data.engine_for(ctx.database_url),
                    chosen,
                    label=label.strip(),
                    base_url=base_url.strip() or None,
                    custom_host=custom_host,
                    is_active=active,
                    max_concurrency=int(cap) or None,
                    max_tokens=int(max_tokens) or None,
                    temperature=_number(temperature, float, "temperature"),
                    seed=_number(seed, int, "seed"),
                    rpm=int(rpm) or None,
                    tpm=int(tpm) or None,
                    daily_budget_usd=float(budget) or None,
                    actor=context.ACTOR,
                )
                return f"model #{chosen} saved"

            attempt("Save model", save)


def _text(value: float | int | None) -> str:
    return "" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _number(text: str, kind: type[float] | type[int], what: str) -> float | int | None:
    """`text` as a number of `kind`, None when empty; InvalidInput naming `what` otherwise."""
    if not text.strip():
        return None
    try:
        return kind(text.strip())
    except ValueError as exc:
        raise InvalidInput(f"{what} must be a {kind.__name__} number, got {text!r}") from exc


ctx = context.current()
st.title("Prompts & models")
flash()
enqueue_now(ctx)
prompts_section(ctx)
models_section(ctx)
