"""How a failed model call is classified: HTTP status and error bodies -> an ErrorKind, the
provider's Retry-After, and whether the failure means "this model does not take json_schema".

Rules from the providers' docs (OpenAI "Error codes"; OpenRouter "Errors", "Provider Routing")
and the reported faults in shared/cases (C16: OpenRouter's HTTP 200 with an `error` body):
- 401 -> auth; 403 -> flagged when moderation flagged the input (OpenRouter: metadata `reasons`
  and `flagged_input`; a content-policy code), else forbidden (the account's: no access to the
  model, an unsupported region); 404 -> not_found, except OpenRouter's "No endpoints found that
  can handle the requested parameters" on a structured call, which means no endpoint takes
  json_schema (fallback).
- 502 (OpenRouter: "model is down"), 503 (OpenAI: overloaded; OpenRouter: no provider meets the
  routing), 529 (overloaded) -> unavailable: not served, the job is deferred.
- 402 with Retry-After (OpenRouter's in-flight spend) -> rate_limited, waited out; 402 without
  it -> payment_required, the account's (ErrorKind.model_level).
- 429 with code or type `insufficient_quota` (OpenAI: the plan's quota is spent) ->
  quota_exceeded, never retried as a rate limit that passes.
- A 200 whose choice ended in error (`finish_reason: "error"`, a `choices[].error` object, after
  generation started) -> the inner code's kind (provider_error when it has none); its partial
  text is never an answer.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any

import openai

from db.errors import ModelCallError
from db.types import CallUsage, ErrorKind
from runner.llm.ratelimits import RateLimits, parse_rate_limits

_SCHEMA_WORDS = ("json_schema", "response_format", "structured output", "schema")
_NO_CAPABLE_ENDPOINT = re.compile(
    r"no endpoints found that (can handle|support) the requested parameters", re.IGNORECASE
)
_QUOTA = "insufficient_quota"


class CallFailed(ModelCallError):
    """A model call failed; `kind` decides retry vs fail, `retry_after` is in seconds.

    `usage` is what the attempt's answered calls used (a truncated or errored answer is paid
    for), `raw_body` the last body received: both are saved with the attempt for diagnosis.
    """

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
        self.usage: CallUsage | None = None
        self.raw_body: str | None = None
        self.limits: RateLimits | None = None  # what the response's headers said, if anything


class SchemaRejected(Exception):
    """The provider does not take response_format json_schema for this model."""


def request_id_of(headers: Mapping[str, str], body: object = None) -> str | None:
    """The call's id: `x-request-id` (OpenAI), else `x-litellm-call-id` (LiteLLM proxies), else
    the body's `id` (OpenRouter's `gen-...`, the key of its generation endpoint)."""
    for name in ("x-request-id", "x-litellm-call-id"):
        if value := headers.get(name):
            return value[:200]
    body_id = body.get("id") if isinstance(body, dict) else None
    return body_id[:200] if isinstance(body_id, str) and body_id else None


def status_failure(exc: openai.APIStatusError, structured: bool) -> Exception:
    """The CallFailed (or SchemaRejected, for a structured call) an HTTP error status means."""
    message = _error_message(exc.body) or str(exc)
    status = exc.status_code
    if structured and _means_schema_unsupported(status, message):
        return SchemaRejected(message)
    headers = exc.response.headers
    limits = parse_rate_limits(headers)
    retry_after = retry_after_seconds(headers)
    if retry_after is None and status == 429 and limits is not None:
        retry_after = limits.reset_seconds()  # x-ratelimit-reset-* of the spent limit
    codes = _error_codes(exc.body) + (("flagged",) if _flagged(exc.body, message) else ())
    failed = CallFailed(
        classify(status, codes, retry_after),
        f"HTTP {status}: {message}",
        retry_after=retry_after,
        request_id=request_id_of(headers, exc.body),
    )
    failed.limits = limits
    return failed


def classify(
    status: int, codes: tuple[str, ...] = (), retry_after: float | None = None
) -> ErrorKind:
    """The kind of an error with HTTP `status` (or an error body's numeric code), its string
    codes (`code`, `type`) and Retry-After."""
    if status == 429 and _QUOTA in codes:
        return ErrorKind.QUOTA_EXCEEDED
    if status == 402 and retry_after is not None:
        return ErrorKind.RATE_LIMITED
    if status == 403 and "flagged" in codes:
        return ErrorKind.FLAGGED
    return kind_for_status(status)


def check_embedded_error(body: dict[str, Any], request_id: str | None, structured: bool) -> None:
    """Raise for an HTTP 200 that is not an answer: OpenRouter's body-level `error` with no
    choices (C16), or a choice that ended in error mid-generation."""
    error = body.get("error")
    if error and not body.get("choices"):
        _raise_embedded(error, "HTTP 200 with error", request_id, structured, started=False)
    choices = body.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else None
    if isinstance(choice, dict) and (choice.get("error") or choice.get("finish_reason") == "error"):
        inner = choice.get("error") or {"message": "the answer ended in error (finish_reason)"}
        _raise_embedded(inner, "the answer ended in error", request_id, structured, started=True)


def _raise_embedded(
    error: object, what: str, request_id: str | None, structured: bool, *, started: bool
) -> None:
    """Raise the error of a 200 body. `started`: generation had begun (a choice's error), so
    the call was served and paid for: never a deferral (a limit or outage before it started)."""
    inner = error if isinstance(error, dict) else {"message": str(error)}
    code = inner.get("code")
    message = _error_message({"error": inner}) or "error without a message"
    metadata = inner.get("metadata") or {}
    detail = json.dumps(metadata)[:300]
    status = code if isinstance(code, int) and not isinstance(code, bool) else None
    if (
        structured
        and status is not None
        and _means_schema_unsupported(status, f"{message} {detail}")
    ):
        raise SchemaRejected(message)
    provider = metadata.get("provider_name") if isinstance(metadata, dict) else None
    where = f" from provider {provider}" if provider else ""
    codes = _error_codes({"error": inner}) + (("flagged",) if _flagged(inner, message) else ())
    kind = classify(status, codes) if status else ErrorKind.PROVIDER_ERROR
    if started and kind.deferred:
        kind = ErrorKind.PROVIDER_ERROR
    raise CallFailed(kind, f"{what} {code}{where}: {message}", request_id=request_id)


_MODERATION_CODES = ("moderation", "content_policy_violation", "content_filter", "flagged")


def _flagged(body: object, message: str) -> bool:
    """Whether a 403 is moderation's verdict on the input, not the account's: OpenRouter's
    moderation error carries metadata `reasons` / `flagged_input`; others say so in a code or
    the message."""
    inner = body.get("error", body) if isinstance(body, dict) else None
    metadata = inner.get("metadata") if isinstance(inner, dict) else None
    if isinstance(metadata, dict) and ("reasons" in metadata or "flagged_input" in metadata):
        return True
    codes = " ".join(_error_codes(body)).lower()
    return any(code in codes for code in _MODERATION_CODES) or "flagged" in message.lower()


def _means_schema_unsupported(status: int, message: str) -> bool:
    if status in (400, 422):
        lowered = message.lower()
        return any(word in lowered for word in _SCHEMA_WORDS)
    return status == 404 and _NO_CAPABLE_ENDPOINT.search(message) is not None


def _error_message(body: object) -> str | None:
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])
    return None


def _error_codes(body: object) -> tuple[str, ...]:
    """String `code` and `type` of an error body (OpenAI puts `insufficient_quota` in either)."""
    inner = body.get("error", body) if isinstance(body, dict) else None
    if not isinstance(inner, dict):
        return ()
    return tuple(str(inner[k]) for k in ("code", "type") if isinstance(inner.get(k), str))


def kind_for_status(status: int) -> ErrorKind:
    """Error kind for an HTTP status (OpenAI and OpenRouter error-code docs)."""
    table = {
        400: ErrorKind.BAD_REQUEST,
        401: ErrorKind.AUTH,
        402: ErrorKind.PAYMENT_REQUIRED,
        403: ErrorKind.FORBIDDEN,
        404: ErrorKind.NOT_FOUND,
        408: ErrorKind.TIMEOUT,
        409: ErrorKind.SERVER_ERROR,
        422: ErrorKind.BAD_REQUEST,
        429: ErrorKind.RATE_LIMITED,
        502: ErrorKind.UNAVAILABLE,
        503: ErrorKind.UNAVAILABLE,
        529: ErrorKind.UNAVAILABLE,
    }
    if status in table:
        return table[status]
    return ErrorKind.SERVER_ERROR if status >= 500 else ErrorKind.BAD_REQUEST


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Seconds from `retry-after-ms` or `retry-after` (delta-seconds or HTTP date), if present and
    readable (OpenAI sends both forms; RFC 9110 section 10.2.3 allows a date). `headers` must
    look names up case-insensitively, as the SDK's response headers do."""
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
