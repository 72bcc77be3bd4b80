"""All configuration, from the environment, in one place (STYLE.md 5).

Built once at an entry point (`Settings()`) and passed down; nothing else reads os.environ.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from functools import cached_property

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from db.types import Provider

DEFAULT_DATABASE_URL = "sqlite:///./data/promptbatch.db"


class Settings(BaseSettings):
    """promptbatch settings. Every field reads PROMPTBATCH_<NAME>; DATABASE_URL, OPENAI_API_KEY,
    OPENROUTER_API_KEY, CONSOLE_PASSWORD and CONSOLE_READ_ONLY are read without the prefix too."""

    model_config = SettingsConfigDict(
        env_prefix="PROMPTBATCH_", extra="ignore", populate_by_name=True
    )

    database_url: str = Field(
        DEFAULT_DATABASE_URL,
        validation_alias=AliasChoices("DATABASE_URL", "PROMPTBATCH_DATABASE_URL"),
    )
    openai_api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("OPENAI_API_KEY", "PROMPTBATCH_OPENAI_API_KEY")
    )
    openrouter_api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("OPENROUTER_API_KEY", "PROMPTBATCH_OPENROUTER_API_KEY")
    )
    compatible_api_key: SecretStr | None = None  # for `compatible` servers that want one
    # Sent to OpenAI only (never to OpenRouter or a compatible server), as the SDK would from
    # OPENAI_ORG_ID / OPENAI_PROJECT_ID; OPENAI_BASE_URL is NOT honoured: set a model's base_url.
    openai_org_id: str | None = Field(
        None, validation_alias=AliasChoices("OPENAI_ORG_ID", "PROMPTBATCH_OPENAI_ORG_ID")
    )
    openai_project_id: str | None = Field(
        None, validation_alias=AliasChoices("OPENAI_PROJECT_ID", "PROMPTBATCH_OPENAI_PROJECT_ID")
    )
    openrouter_referer: str = "https://github.com/promptbatch/promptbatch"  # HTTP-Referer
    # X-OpenRouter-Title, and X-Title for compatibility (OpenRouter "App Attribution")
    openrouter_title: str = "promptbatch"

    batch_time: str = "00:00"  # HH:MM, UTC: when the daily batch is enqueued
    # Days the runner was down (or frozen) are always reported; those within this many days
    # before today are also enqueued late, when it starts or its timer next fires. 0: reported
    # only (a late batch costs its calls; its day's figures are then measured a day late).
    catch_up_days: int = Field(0, ge=0, le=30)
    processes: int = Field(2, ge=1, le=64)  # worker processes per runner
    # Model calls in flight per worker process: each is a task on the process's event loop, not
    # a thread (issue 11), so hundreds per process cost little CPU or memory.
    concurrency: int = Field(4, ge=1, le=4096)
    # PROMPTBATCH_THREADS, the old name of `concurrency` (one release): used when CONCURRENCY
    # is not set, with a warning (`deprecations`).
    threads: int | None = Field(None, ge=1, le=4096)
    max_attempts: int = Field(3, ge=1, le=50)  # attempts per job before it fails
    # Leases a job may lose with its worker (a crash, kill -9) before it fails: they spend no
    # attempt, so a job that kills its worker every time still ends.
    max_interruptions: int = Field(5, ge=1, le=100)
    # Model-level failures in a row (401, account 403, 402, insufficient_quota, 404) that pause
    # a model: its jobs stay queued until `promptbatch models resume`. 0: never pause, fail.
    pause_after: int = Field(3, ge=0, le=1000)
    # Hours after an enqueue by which its jobs must be done, else they fail ('deadline'); unset:
    # until the next batch's start (the next batch_time).
    batch_deadline_hours: float | None = Field(None, gt=0, le=24 * 30)
    lease_seconds: float = Field(60.0, ge=2, le=3600)  # a claim's lease; heartbeats every 1/3
    # Seconds per model call, wall clock: connect + wait + read, a trickling server included.
    request_timeout: float = Field(60.0, gt=0, le=600)
    connect_timeout: float = Field(10.0, gt=0, le=120)  # seconds to connect to the provider
    # Output tokens asked for when a model sets no max_tokens: without one OpenRouter checks the
    # balance against the model's whole output length (402 "You requested up to 65536 tokens").
    default_max_tokens: int = Field(4096, ge=1, le=1_000_000)
    # Seconds a call may wait for its place under a model's --rpm/--tpm; a longer wait hands the
    # job back to the queue until then (no attempt spent).
    pacing_max_wait: float = Field(30.0, ge=0, le=3600)
    # USD per UTC day for all models together (each model may have its own too); unset: none.
    daily_budget_usd: float | None = Field(None, gt=0, le=1e9)
    backoff_base: float = Field(2.0, gt=0, le=600)  # seconds; retry n waits up to base * 2^(n-1)
    backoff_cap: float = Field(300.0, gt=0, le=86_400)  # seconds; the longest backoff
    poll_interval: float = Field(1.0, gt=0, le=60)  # seconds between claims when idle
    grace_seconds: float = Field(30.0, ge=0, le=3600)  # SIGTERM: time in-flight jobs get to end
    reap_interval: float = Field(10.0, gt=0, le=3600)  # seconds between reaper runs
    log_level: str = "INFO"
    log_json: bool = False  # one JSON object per log line

    console_password: SecretStr | None = Field(
        None, validation_alias=AliasChoices("CONSOLE_PASSWORD", "PROMPTBATCH_CONSOLE_PASSWORD")
    )  # set: every console page needs it
    console_read_only: bool = Field(
        False, validation_alias=AliasChoices("CONSOLE_READ_ONLY", "PROMPTBATCH_CONSOLE_READ_ONLY")
    )  # true: no action is offered

    @field_validator(
        "console_password",
        "openai_api_key",
        "openrouter_api_key",
        "compatible_api_key",
        "openai_org_id",
        "openai_project_id",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # `KEY=` in an env file means "not set", never an empty secret that matches nothing.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("batch_time")
    @classmethod
    def _check_batch_time(cls, value: str) -> str:
        if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value):
            raise ValueError(f"must be HH:MM (24h, UTC), got {value!r}")
        return value

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        if value.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError(f"must be DEBUG, INFO, WARNING or ERROR, got {value!r}")
        return value.upper()

    @model_validator(mode="after")
    def _old_names(self) -> Settings:
        if self.threads is not None and "concurrency" not in self.model_fields_set:
            self.concurrency = self.threads
        return self

    @property
    def deprecations(self) -> list[str]:
        """One line per deprecated setting in use (the CLI prints them as warnings)."""
        if self.threads is None:
            return []
        return [
            "PROMPTBATCH_THREADS is deprecated (calls in flight are no longer threads): "
            "set PROMPTBATCH_CONCURRENCY instead"
        ]

    @cached_property
    def heartbeat_interval(self) -> float:
        """Seconds between lease extensions: a third of the lease."""
        return self.lease_seconds / 3

    def batch_deadline(self, now: datetime) -> datetime:
        """When jobs enqueued (or re-queued) at `now` (aware UTC) must be done: now +
        batch_deadline_hours when set, else the next batch's start (the next batch_time, UTC,
        strictly after `now`)."""
        if self.batch_deadline_hours is not None:
            return now + timedelta(hours=self.batch_deadline_hours)
        hour, minute = (int(part) for part in self.batch_time.split(":"))
        start = now.astimezone(UTC).replace(hour=hour, minute=minute, second=0, microsecond=0)
        return start if start > now else start + timedelta(days=1)

    def api_key(self, provider: str) -> str | None:
        """The API key for a provider, or None when it is not set."""
        secret = {
            Provider.OPENAI.value: self.openai_api_key,
            Provider.OPENROUTER.value: self.openrouter_api_key,
            Provider.COMPATIBLE.value: self.compatible_api_key,
        }.get(provider)
        return secret.get_secret_value() if secret else None
