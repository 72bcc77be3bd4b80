"""Model calls through the openai SDK: structured answer first, then the fallbacks.

One SDK client per (provider, base_url) per process, with SDK retries off (`max_retries=0`): the
queue owns retries so every attempt is visible in job_attempts (case C19). Timeouts are explicit
(case C15). The order of paths follows DESIGN.md "Model calls":
1. json_schema structured output (unless the model is known not to support it), validated by
   pydantic (`runner.llm.answers`).
2. A plain completion when the provider rejects json_schema (HTTP 400, or OpenRouter's
   200-with-error code 400, case C16; `runner.llm.errors`) or the structured content is not valid
   JSON; its mentions are then found in the text from the entity catalog.
"""

from __future__ import annotations

import threading
from functools import cache
from typing import Any

import httpx
import openai

# openai imports its chat resource lazily, on a client's first `.chat`: 0.7 s of CPU that every
# job thread of a fresh worker would contend for on its first call (bench/ item 3). Paid here,
# once per process, before the worker claims anything.
import openai.resources.chat

from db.types import ClaimedJob, ErrorKind, Provider
from runner.llm.answers import (
    ModelAnswer,
    ModelReply,
    RawReply,
    decode_body,
    plain_reply,
    structured_reply,
)
from runner.llm.errors import CallFailed, SchemaRejected, check_embedded_error, status_failure
from runner.settings import OPENROUTER_BASE_URL, Settings

SYSTEM_PROMPT = (
    "You are a helpful assistant. Answer the user's question as you normally would, "
    "naming the products and companies you would recommend."
)
STRUCTURED_INSTRUCTIONS = (
    "Reply as JSON: `answer` is your full answer in Markdown; `mentions` "
    "lists every brand, product or company your answer names, in order of "
    "first appearance, each once."
)


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
                reply = structured_reply(_call(client, job, structured=True))
            except SchemaRejected:
                rejected = True
            else:
                if reply is not None:
                    return reply
        return plain_reply(_call(client, job, structured=False), rejected)

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
        raise CallFailed(
            ErrorKind.CONFIG, f"{env} is not set; models of provider {provider} cannot be called"
        )
    headers = (
        {"HTTP-Referer": settings.openrouter_referer, "X-Title": settings.openrouter_title}
        if provider == Provider.OPENROUTER
        else None
    )
    url = OPENROUTER_BASE_URL if provider == Provider.OPENROUTER and not base_url else base_url
    timeout = httpx.Timeout(settings.request_timeout, connect=settings.connect_timeout)
    return openai.OpenAI(
        api_key=api_key or "not-needed",
        base_url=url,
        max_retries=0,
        timeout=timeout,
        default_headers=headers,
    )


def _messages(job: ClaimedJob, structured: bool) -> list[dict[str, str]]:
    system = f"{SYSTEM_PROMPT} {STRUCTURED_INSTRUCTIONS}" if structured else SYSTEM_PROMPT
    return [{"role": "system", "content": system}, {"role": "user", "content": job.prompt_text}]


@cache  # the schema never changes; building it per call was work on the hot path
def _response_format() -> dict[str, Any]:
    schema = ModelAnswer.model_json_schema()
    schema["additionalProperties"] = False
    return {
        "type": "json_schema",
        "json_schema": {"name": "ModelAnswer", "schema": schema, "strict": True},
    }


def _call(client: openai.OpenAI, job: ClaimedJob, *, structured: bool) -> RawReply:
    response_format: Any = _response_format() if structured else openai.omit
    try:
        raw = client.chat.completions.with_raw_response.create(
            model=job.model_name,
            messages=_messages(job, structured),  # type: ignore[arg-type]
            response_format=response_format,
        )
    except openai.APIStatusError as exc:
        raise status_failure(exc, structured) from exc
    except openai.APITimeoutError as exc:
        raise CallFailed(ErrorKind.TIMEOUT, f"no answer within the timeout: {exc}") from exc
    except openai.APIConnectionError as exc:
        raise CallFailed(ErrorKind.CONNECTION, f"connection failed: {exc}") from exc
    text = raw.http_response.text
    result = RawReply(decode_body(text), text, raw.headers.get("x-request-id"))
    check_embedded_error(result.body, result.request_id, structured)
    return result
