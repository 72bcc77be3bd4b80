"""Which jobs a listing or an operator action covers: one filter for the CLI and the console."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import and_, select, true

from db.models import Prompt, PromptJob

J = PromptJob


@dataclass(frozen=True)
class JobQuery:
    """Jobs matching every field that is set; empty = any. Text filters are case-insensitive
    substrings; `updated_since` is an aware UTC datetime (jobs changed at or after it)."""

    batch_key: str | None = None
    statuses: tuple[str, ...] = ()
    model_ids: tuple[int, ...] = ()
    prompt_ids: tuple[int, ...] = ()
    prompt_text: str = ""
    error_kind: str | None = None
    error_text: str = ""
    error_message: str | None = None  # exact message (a Failures group)
    updated_since: datetime | None = None

    def clause(self) -> Any:
        """The WHERE clause over prompt_jobs."""
        parts: list[Any] = [
            column == value
            for column, value in (
                (J.batch_key, self.batch_key),
                (J.error_kind, self.error_kind),
                (J.error_message, self.error_message),
            )
            if value is not None
        ]
        for column, values in (
            (J.status, self.statuses),
            (J.model_id, self.model_ids),
            (J.prompt_id, self.prompt_ids),
        ):
            if values:
                parts.append(column.in_(values))
        if self.prompt_text.strip():
            matching = Prompt.text.icontains(self.prompt_text.strip(), autoescape=True)
            parts.append(J.prompt_id.in_(select(Prompt.id).where(matching)))
        if self.error_text.strip():
            parts.append(J.error_message.icontains(self.error_text.strip(), autoescape=True))
        if self.updated_since is not None:
            parts.append(J.updated_at >= self.updated_since)
        return and_(true(), *parts)

    def describe(self) -> dict[str, object]:
        """The fields that are set (for an audit row, or to refuse an empty filter)."""
        empty = JobQuery()
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if getattr(self, f.name) != getattr(empty, f.name)
        }
