"""Model calls through the openai SDK: structured answer first, then the fallbacks.

One SDK client per (provider, base_url) per process, with SDK retries off (`max_retries=0`): the
queue owns retries so every attempt is visible in job_attempts (case C19). Timeouts are explicit
(case C15). The order of paths follows DESIGN.md "Model calls":
1. json_schema structured output (unless the model is known not to support it), validated by
   pydantic; JSON wrapped in code fences is unwrapped first (case C18).
2. A plain completion when the provider rejects json_schema (HTTP 400, or OpenRouter's
   200-with-error code 400, case C16) or the structured content is not valid JSON; its mentions are
   then found in the text from the entity catalog.
3. A refusal is a result, not an error (output_mode 'refusal'); a truncated answer (finish_reason
   'length') and a blank one are failures, never saved as answers (case C17).
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from functools import cache
from typing import Any

import httpx
import openai

# openai imports its chat resource lazily, on a client's first `.chat`: 0.7 s of CPU that every
# job thread of a fresh worker would contend for on its first call (bench/ item 3). Paid here,
# once per process, before the worker claims anything.
import openai.resources.chat
from pydantic import BaseModel, ConfigDict, ValidationError

from db.errors import ModelCallError
from db.types import ClaimedJob, ErrorKind, OutputMode, Provider
from runner.settings import OPENROUTER_BASE_URL, Settings

SYSTEM_PROMPT = ("You are a helpful assistant. Answer the user's question as you normally would, "
                 "naming the products and companies you would recommend.")
STRUCTURED_INSTRUCTIONS = ("Reply as JSON: `answer` is your full answer in Markdown; `mentions` "
                           "lists every brand, product or company your answer names, in order of "
                           "first appearance, each once.")
_FENCE = re.compile(r"^\s*```[a-zA-Z0-9_-]*[ \t]*\n(?P<body>.*)\n[ \t]*```\s*$", re.DOTALL)
_SCHEMA_WORDS = ("json_schema", "response_format", "structured output", "schema")


class ModelAnswer(BaseModel):
    """The structured answer asked of the model (json_schema, strict)."""

    model_config = ConfigDict(extra="forbid")
    answer: str
    mentions: list[str]


@dataclass(frozen=True)
class ModelReply:
    """A usable answer. `mention_names` None means: find the mentions in the text."""

    answer: str | None
    mention_names: tuple[str, ...] | None
    output_mode: OutputMode
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    request_id: str | None
    raw_body: str
    schema_rejected: bool = False


class CallFailed(ModelCallError):
    """A model call failed; `kind` decides retry vs fail."""

    def __init__(self, kind: ErrorKind, message: str, *, retry_after: float | None = None,
                 request_id: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after
        self.request_id = request_id


class _SchemaRejected(Exception):
    """The provider does not accept response_format json_schema for this model."""


@dataclass(frozen=True)
class _Raw:
    body: dict[str, Any]
    text: str
    request_id: str | None


class ModelClient:
    """Asks models for answers; thread-safe, one per worker process."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._clients: dict[tuple[str, str | None], openai.OpenAI] = {}
        self._lock = threading.Lock()

    def ask(self, job: ClaimedJob) -> ModelReply:
        """Ask `job.prompt_text` of the job's model. Raises CallFailed (kind, message)."""
        client = self._client(job.provider, job.base_url)
        rejected = False
        if job.supports_json_schema is not False:
            try:
                reply = _structured_reply(_call(client, job, structured=True))
            except _SchemaRejected:
                rejected = True
            else:
                if reply is not None:
                    return reply
        return _plain_reply(_call(client, job, structured=False), rejected)

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()

    def _client(self, provider: str, base_url: str | None) -> openai.OpenAI:
        with self._lock:
            key = (provider, base_url)
            if key not in self._clients:
                self._clients[key] = build_sdk_client(self._settings, provider, base_url)
            return self._clients[key]


def build_sdk_client(settings: Settings, provider: str, base_url: str | None) -> openai.OpenAI:
    """An openai.OpenAI for a provider: retries off, explicit timeouts. Raises CallFailed(config)
    when the provider's API key is missing."""
    api_key = settings.api_key(provider)
    if api_key is None and provider != Provider.COMPATIBLE:
        env = "OPENAI_API_KEY" if provider == Provider.OPENAI else "OPENROUTER_API_KEY"
        raise CallFailed(ErrorKind.CONFIG, f"{env} is not set; models of provider {provider} "
                                           "cannot be called")
    headers = ({"HTTP-Referer": settings.openrouter_referer, "X-Title": settings.openrouter_title}
               if provider == Provider.OPENROUTER else None)
    url = OPENROUTER_BASE_URL if provider == Provider.OPENROUTER and not base_url else base_url
    timeout = httpx.Timeout(settings.request_timeout, connect=settings.connect_timeout)
    return openai.OpenAI(api_key=api_key or "not-needed", base_url=url, max_retries=0,
                         timeout=timeout, default_headers=headers)


def _messages(job: ClaimedJob, structured: bool) -> list[dict[str, str]]:
    system = f"{SYSTEM_PROMPT} {STRUCTURED_INSTRUCTIONS}" if structured else SYSTEM_PROMPT
    return [{"role": "system", "content": system}, {"role": "user", "content": job.prompt_text}]


@cache  # the schema never changes; building it per call was work on the hot path
def _response_format() -> dict[str, Any]:
    schema = ModelAnswer.model_json_schema()
    schema["additionalProperties"] = False
    return {"type": "json_schema",
            "json_schema": {"name": "ModelAnswer", "schema": schema, "strict": True}}


def _call(client: openai.OpenAI, job: ClaimedJob, *, structured: bool) -> _Raw:
    response_format: Any = _response_format() if structured else openai.omit
    try:
        raw = client.chat.completions.with_raw_response.create(
            model=job.model_name, messages=_messages(job, structured),  # type: ignore[arg-type]
            response_format=response_format)
    except openai.APIStatusError as exc:
        raise _status_failure(exc, structured) from exc
    except openai.APITimeoutError as exc:
        raise CallFailed(ErrorKind.TIMEOUT, f"no answer within the timeout: {exc}") from exc
    except openai.APIConnectionError as exc:
        raise CallFailed(ErrorKind.CONNECTION, f"connection failed: {exc}") from exc
    text = raw.http_response.text
    result = _Raw(_decode(text), text, raw.headers.get("x-request-id"))
    _check_embedded_error(result, structured)
    return result


def _decode(text: str) -> dict[str, Any]:
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise CallFailed(ErrorKind.SERVER_ERROR,
                         f"response body is not JSON: {text[:200]!r}") from exc
    if not isinstance(body, dict):
        raise CallFailed(ErrorKind.SERVER_ERROR, f"response body is not an object: {text[:200]!r}")
    return body


def _status_failure(exc: openai.APIStatusError, structured: bool) -> Exception:
    message = _error_message(exc.body) or str(exc)
    request_id = exc.response.headers.get("x-request-id")
    if structured and exc.status_code in (400, 422) and _mentions_schema(message):
        return _SchemaRejected(message)
    kind = _kind_for_status(exc.status_code)
    retry_after = retry_after_seconds(exc.response.headers)
    return CallFailed(kind, f"HTTP {exc.status_code}: {message}", retry_after=retry_after,
                      request_id=request_id)


def _check_embedded_error(raw: _Raw, structured: bool) -> None:
    """OpenRouter answers some failures with HTTP 200 and an `error` object (case C16)."""
    error = raw.body.get("error")
    if not error or raw.body.get("choices"):
        return
    code = error.get("code") if isinstance(error, dict) else None
    message = _error_message(raw.body) or "error without a message"
    metadata = (error.get("metadata") or {}) if isinstance(error, dict) else {}
    provider = metadata.get("provider_name")
    status = code if isinstance(code, int) else 500
    detail = json.dumps(error.get("metadata", {}))[:300] if isinstance(error, dict) else ""
    if structured and status in (400, 422) and _mentions_schema(f"{message} {detail}"):
        raise _SchemaRejected(message)
    where = f" from provider {provider}" if provider else ""
    raise CallFailed(_kind_for_status(status), f"HTTP 200 with error {code}{where}: {message}",
                     request_id=raw.request_id)


def _error_message(body: object) -> str | None:
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])
    return None


def _mentions_schema(message: str) -> bool:
    lowered = message.lower()
    return any(word in lowered for word in _SCHEMA_WORDS)


def _kind_for_status(status: int) -> ErrorKind:
    """Error kind for an HTTP status (OpenAI and OpenRouter error-code docs)."""
    table = {400: ErrorKind.BAD_REQUEST, 401: ErrorKind.AUTH, 402: ErrorKind.PAYMENT_REQUIRED,
             403: ErrorKind.AUTH, 404: ErrorKind.NOT_FOUND, 408: ErrorKind.TIMEOUT,
             409: ErrorKind.SERVER_ERROR, 422: ErrorKind.BAD_REQUEST,
             429: ErrorKind.RATE_LIMITED}
    if status in table:
        return table[status]
    return ErrorKind.SERVER_ERROR if status >= 500 else ErrorKind.BAD_REQUEST


def retry_after_seconds(headers: httpx.Headers) -> float | None:
    """Seconds from `retry-after-ms` or `retry-after` (delta-seconds or HTTP date), if present and
    readable (OpenAI sends both forms; RFC 9110 section 10.2.3 allows a date)."""
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


def _choice(raw: _Raw) -> dict[str, Any]:
    choices = raw.body.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        raise CallFailed(ErrorKind.INVALID_OUTPUT, f"no choices in the response: {raw.text[:200]}",
                         request_id=raw.request_id)
    return choices[0]


def _reply(raw: _Raw, answer: str | None, names: tuple[str, ...] | None, mode: OutputMode,
           rejected: bool = False) -> ModelReply:
    usage = raw.body.get("usage") or {}
    return ModelReply(answer=answer, mention_names=names, output_mode=mode,
                      finish_reason=_choice(raw).get("finish_reason"),
                      prompt_tokens=usage.get("prompt_tokens"),
                      completion_tokens=usage.get("completion_tokens"),
                      request_id=raw.request_id, raw_body=raw.text, schema_rejected=rejected)


def _refusal_or_truncation(raw: _Raw) -> ModelReply | None:
    choice = _choice(raw)
    message = choice.get("message") or {}
    if message.get("refusal") or choice.get("finish_reason") == "content_filter":
        return _reply(raw, message.get("refusal"), (), OutputMode.REFUSAL)
    if choice.get("finish_reason") == "length":
        raise CallFailed(ErrorKind.TRUNCATED, "the answer was cut off (finish_reason 'length')",
                         request_id=raw.request_id)
    return None


def _structured_reply(raw: _Raw) -> ModelReply | None:
    """The validated structured answer, or None when the content is not the schema's JSON."""
    if (special := _refusal_or_truncation(raw)) is not None:
        return special
    parsed = parse_answer_json(_content(raw))
    if parsed is None:
        return None
    answer, fenced = parsed
    mode = OutputMode.JSON if fenced else OutputMode.STRUCTURED
    return _reply(raw, answer.answer, tuple(answer.mentions), mode)


def _plain_reply(raw: _Raw, rejected: bool) -> ModelReply:
    if (special := _refusal_or_truncation(raw)) is not None:
        return special
    content = _content(raw)
    if not content.strip():
        raise CallFailed(ErrorKind.INVALID_OUTPUT, "blank answer even from a plain completion",
                         request_id=raw.request_id)
    parsed = parse_answer_json(content)
    if parsed is not None:
        return _reply(raw, parsed[0].answer, tuple(parsed[0].mentions), OutputMode.JSON, rejected)
    return _reply(raw, content, None, OutputMode.TEXT_FALLBACK, rejected)


def _content(raw: _Raw) -> str:
    content = (_choice(raw).get("message") or {}).get("content")
    return content if isinstance(content, str) else ""


def parse_answer_json(content: str) -> tuple[ModelAnswer, bool] | None:
    """Parse `content` as ModelAnswer JSON, unwrapping one ```json fence around the whole content.

    Returns (answer, was_fenced) or None. Backticks inside JSON strings are left alone: only a fence
    that wraps the entire content is removed (case C18).
    """
    match = _FENCE.match(content)
    body = match.group("body") if match else content
    try:
        return ModelAnswer.model_validate_json(body), match is not None
    except ValidationError:
        return None
