"""How a failed model call is classified: HTTP status and error bodies -> an ErrorKind, the
provider's Retry-After, and whether the failure means "this model rejects json_schema".

Rules from the providers' error-code docs (OpenAI "Error codes", OpenRouter "Errors") and the
reported faults in shared/cases (C16: OpenRouter's HTTP 200 with an `error` body).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any

import openai

from db.errors import ModelCallError
from db.types import ErrorKind

_SCHEMA_WORDS = ("json_schema", "response_format", "structured output", "schema")


class CallFailed(ModelCallError):
    """A model call failed; `kind` decides retry vs fail, `retry_after` is in seconds."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        retry_after: float | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after
        self.request_id = request_id


class SchemaRejected(Exception):
    """The provider does not accept response_format json_schema for this model."""


def status_failure(exc: openai.APIStatusError, structured: bool) -> Exception:
    """The CallFailed (or SchemaRejected, for a structured call) an HTTP error status means."""
    message = _error_message(exc.body) or str(exc)
    request_id = exc.response.headers.get("x-request-id")
    if structured and exc.status_code in (400, 422) and _mentions_schema(message):
        return SchemaRejected(message)
    kind = kind_for_status(exc.status_code)
    retry_after = retry_after_seconds(exc.response.headers)
    return CallFailed(
        kind, f"HTTP {exc.status_code}: {message}", retry_after=retry_after, request_id=request_id
    )


def check_embedded_error(body: dict[str, Any], request_id: str | None, structured: bool) -> None:
    """Raise for OpenRouter's HTTP 200 whose body is an `error` object and no choices (C16)."""
    error = body.get("error")
    if not error or body.get("choices"):
        return
    code = error.get("code") if isinstance(error, dict) else None
    message = _error_message(body) or "error without a message"
    metadata = (error.get("metadata") or {}) if isinstance(error, dict) else {}
    provider = metadata.get("provider_name")
    status = code if isinstance(code, int) else 500
    detail = json.dumps(error.get("metadata", {}))[:300] if isinstance(error, dict) else ""
    if structured and status in (400, 422) and _mentions_schema(f"{message} {detail}"):
        raise SchemaRejected(message)
    where = f" from provider {provider}" if provider else ""
    raise CallFailed(
        kind_for_status(status),
        f"HTTP 200 with error {code}{where}: {message}",
        request_id=request_id,
    )


def _error_message(body: object) -> str | None:
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])
    return None


def _mentions_schema(message: str) -> bool:
    lowered = message.lower()
    return any(word in lowered for word in _SCHEMA_WORDS)


def kind_for_status(status: int) -> ErrorKind:
    """Error kind for an HTTP status (OpenAI and OpenRouter error-code docs)."""
    table = {
        400: ErrorKind.BAD_REQUEST,
        401: ErrorKind.AUTH,
        402: ErrorKind.PAYMENT_REQUIRED,
        403: ErrorKind.AUTH,
        404: ErrorKind.NOT_FOUND,
        408: ErrorKind.TIMEOUT,
        409: ErrorKind.SERVER_ERROR,
        422: ErrorKind.BAD_REQUEST,
        429: ErrorKind.RATE_LIMITED,
    }
    if status in table:
        return table[status]
    return ErrorKind.SERVER_ERROR if status >= 500 else ErrorKind.BAD_REQUEST


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Seconds from `retry-after-ms` or `retry-after` (delta-seconds or HTTP date), if present and
    readable (OpenAI sends both forms; RFC 9110 section 10.2.3 allows a date). `headers` must
    look names up case-insensitively, as httpx.Headers does."""
    ms = _non_negative(headers.get("retry-after-ms"))
    if ms is not None:
        return ms / 1000
    value = headers.get("retry-after")
    seconds = _non_negative(value)
    if seconds is not None or value is None:
        return seconds
    try:
        return max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError):
        return None  # unreadable: the backoff alone decides the wait


def _non_negative(text: str | None) -> float | None:
    """`text` as a float >= 0, or None when it is absent or not a number."""
    try:
        return max(float(text), 0.0) if text is not None else None
    except ValueError:
        return None
