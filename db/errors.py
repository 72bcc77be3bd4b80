"""The one error family of promptbatch.

Every error a user can cause or meet is a `PromptBatchError`; the CLI prints its message on one line
and exits non-zero. Driver errors are translated at the `db` boundary with ``raise ... from exc`` so
callers never see SQLAlchemy or psycopg types. A class docstring is the default message.
"""

from __future__ import annotations


class PromptBatchError(Exception):
    """promptbatch failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(PromptBatchError):
    """The configuration is invalid."""


class DatabaseUnavailable(PromptBatchError):
    """The database cannot be reached."""


class LockConflict(DatabaseUnavailable):
    """The transaction lost a lock conflict and was rolled back (SQLite busy past busy_timeout, a
    PostgreSQL deadlock or serialization failure): running it again is safe. A DatabaseUnavailable,
    so a caller that keeps work for later treats both alike."""


class SchemaOutOfDate(PromptBatchError):
    """The database schema is missing or out of date; run `promptbatch db upgrade`."""


class InvalidInput(PromptBatchError):
    """The input is invalid."""


class NotFound(PromptBatchError):
    """No such record."""


class ModelCallError(PromptBatchError):
    """A model call failed."""
