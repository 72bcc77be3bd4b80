"""Model calls through the openai SDK: structured answer first, then the fallbacks.

One `openai.AsyncOpenAI` per (provider, base_url) per process, on the process's call loop
(`runner.llm.loop`), with SDK retries off (`max_retries=0`): the queue owns retries so every
attempt is visible in job_attempts (case C19). Each call has a wall-clock deadline
(PROMPTBATCH_REQUEST_TIMEOUT; case C15). The order of paths follows DESIGN.md "Model calls":
1. json_schema structured output (unless the model is known not to take it), validated by
   pydantic (`runner.llm.answers`); on OpenRouter with `provider.require_parameters`, so it
   routes only to endpoints that honour response_format ("Provider Routing").
2. A plain completion when the provider rejects json_schema (400/422 naming the schema,
   OpenRouter's 200-with-error or its "No endpoints found" 404; `runner.llm.errors`) or the
   structured content is broken JSON; its mentions are then found in the text from the catalog.
   A model that answered the structured call in prose is marked, and its prose is the answer.

What goes where (issue 9, key safety): a model's key only to its provider's host or a host the
operator opted in to (`db.endpoints`, checked again here before a client is built);
OpenAI-Organization/OpenAI-Project only to OpenAI; OPENAI_BASE_URL is never read.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import math
import socket
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from functools import cache
from typing import Any, TypeVar

import aiohttp
import openai

from db.endpoints import base_url_for, check_endpoint
from db.errors import InvalidInput
from db.types import CallUsage, ClaimedJob, ErrorKind, Provider
from runner.llm.answers import (
    ModelAnswer,
    ModelReply,
    RawReply,
    decode_body,
    plain_reply,
    structured_reply,
)
from runner.llm.errors import (
    CallFailed,
    SchemaRejected,
    check_embedded_error,
    request_id_of,
    status_failure,
)
from runner.llm.loop import CallLoop
from runner.llm.ratelimits import RateLimits, parse_rate_limits
from runner.llm.usage import call_usage
from runner.settings import Settings

SYSTEM_PROMPT = (
    "You are a helpful assistant. Answer the user's question as you normally would, "
    "naming the products and companies you would recommend."
)
STRUCTURED_INSTRUCTIONS = (
    "Reply as JSON: `answer` is your full answer in Markdown; `mentions` "
    "lists every brand, product or company your answer names, in order of "
    "first appearance, each once."
)
T = TypeVar("T")
_KEY_ENV = {Provider.OPENAI: "OPENAI_API_KEY", Provider.OPENROUTER: "OPENROUTER_API_KEY"}


class ModelClient:
    """Asks models for answers; one per worker process. `ask_async` is the call for coroutines
    on the client's loop (`submit` puts them there); `ask` blocks its thread while the call runs
    on that loop."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._loop = CallLoop()
        self._clients: dict[tuple[str, str | None], openai.AsyncOpenAI] = {}  # loop thread only

    @property
    def settings(self) -> Settings:
        return self._settings

    def ask(self, job: ClaimedJob) -> ModelReply:
        """Ask `job.prompt_text` of the job's model: at most two paid calls (structured, then
        plain). Raises CallFailed (kind, message, and what the attempt's calls used)."""
        return self._loop.run(self._ask(job))

    async def ask_async(self, job: ClaimedJob) -> ModelReply:
        """`ask` for a coroutine running on this client's loop; returns and raises as `ask`."""
        return await self._ask(job)

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        """Start `coro` as a task on this client's call loop; its future."""
        return self._loop.submit(coro)

    def call_soon(self, callback: Callable[[], object]) -> None:
        """Run `callback` on this client's call loop thread, between two steps of its tasks."""
        self._loop.call_soon(callback)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on this client's call loop and wait for it (for `runner.llm.check`)."""
        return self._loop.run(coro)

    def close(self) -> None:
        """Close every SDK client and stop the call loop."""
        self._loop.run(self._close_clients())
        self._loop.close()

    async def _ask(self, job: ClaimedJob) -> ModelReply:
        client = self.sdk_client(job)
        attempt = _Attempt(self._settings, client, job)
        try:
            reply = await attempt.answer()
        except CallFailed as exc:
            exc.usage = attempt.spent if attempt.spent.calls else None
            exc.raw_body = attempt.last_body
            exc.request_id = attempt.spent.request_id or exc.request_id
            exc.limits = exc.limits or attempt.limits
            raise
        return dataclasses.replace(reply, limits=attempt.limits)

    async def _close_clients(self) -> None:
        clients = list(self._clients.values())
        self._clients.clear()
        for client in clients:
            await client.close()

    def sdk_client(self, job: ClaimedJob) -> openai.AsyncOpenAI:
        """The SDK client for `job`'s model (built on first use); call on the loop thread only.
        Raises CallFailed(config) when the key is missing or may not go to the base URL."""
        key = (job.provider, job.base_url)
        if key not in self._clients:
            self._clients[key] = build_sdk_client(
                self._settings, job.provider, job.base_url, custom_host=job.custom_host
            )
        return self._clients[key]


class _Attempt:
    """One attempt's calls: the structured call, then the plain one if needed; `spent` adds up
    every answered call, `last_body` is the last body received."""

    def __init__(self, settings: Settings, client: openai.AsyncOpenAI, job: ClaimedJob) -> None:
        self.settings, self.client, self.job = settings, client, job
        self.spent = CallUsage()
        self.last_body: str | None = None
        self.limits: RateLimits | None = None  # the last answer's x-ratelimit-* headers

    async def answer(self) -> ModelReply:
        rejected = False
        if self.job.supports_json_schema is not False:
            try:
                raw = await self._call(structured=True)
            except SchemaRejected:
                rejected = True
            else:
                reply = structured_reply(raw, self.spent)
                if reply is not None:
                    return reply
        raw = await self._call(structured=False)
        return plain_reply(raw, self.spent, rejected)

    async def _call(self, *, structured: bool) -> RawReply:
        text, headers = await post(self.client, self.job, self.settings, structured=structured)
        self.last_body = text
        self.limits = parse_rate_limits(headers) or self.limits
        body = decode_body(text)
        raw = RawReply(body, text, call_usage(body, request_id_of(headers, body), self.job))
        self.spent = self.spent.plus(raw.usage)
        check_embedded_error(body, raw.request_id, structured)
        return raw


async def post(
    client: openai.AsyncOpenAI, job: ClaimedJob, settings: Settings, *, structured: bool
) -> tuple[str, Any]:
    """POST one chat completion under the wall-clock deadline (settings.request_timeout,
    seconds: connect + wait + read); the body text and the response headers of a 2xx. Raises
    CallFailed (timeout, connection, or the status's kind) or SchemaRejected."""
    deadline = settings.request_timeout
    try:
        async with asyncio.timeout(deadline):
            return await _post(client, job, settings, structured)
    except TimeoutError as exc:
        raise CallFailed(
            ErrorKind.TIMEOUT,
            f"no complete answer within {deadline:g} s (PROMPTBATCH_REQUEST_TIMEOUT, the whole "
            "call)",
        ) from exc


async def _post(
    client: openai.AsyncOpenAI, job: ClaimedJob, settings: Settings, structured: bool
) -> tuple[str, Any]:
    try:
        response = await client.post(
            "/chat/completions",
            body=_wire_body(request_body(job, settings, structured=structured)),
            cast_to=_HTTP_RESPONSE,
        )
    except openai.APIStatusError as exc:
        raise status_failure(exc, structured) from exc
    except openai.APITimeoutError as exc:
        if _not_sent(exc):
            raise CallFailed(ErrorKind.UNAVAILABLE, f"could not connect: {exc.__cause__}") from exc
        raise CallFailed(ErrorKind.TIMEOUT, f"no answer within the read timeout: {exc}") from exc
    except openai.APIConnectionError as exc:
        if _not_sent(exc):
            raise CallFailed(ErrorKind.UNAVAILABLE, f"could not connect: {exc}") from exc
        raise CallFailed(ErrorKind.CONNECTION, f"connection failed: {exc}") from exc
    return response.text, response.headers


# The SDK's HTTP response class (httpx's on openai 2.x, httpx2's on 3.x): `post(cast_to=it)`
# returns the response as received. The SDK's generic `post` is its documented way to a raw
# call ("Undocumented endpoints"); `chat.completions.create` first walks the whole body
# against its TypedDicts, an eighth of a worker's CPU at 1,024 in flight (bench/ item 3).
_HTTP: Any = importlib.import_module("httpx" if openai.__version__.startswith("2.") else "httpx2")
_HTTP_RESPONSE: Any = _HTTP.Response


def _wire_body(arguments: dict[str, Any]) -> dict[str, Any]:
    """create()'s arguments as the JSON body it would send: extra_body merged in."""
    body = {k: v for k, v in arguments.items() if k != "extra_body"}
    return {**body, **arguments.get("extra_body", {})}


_NOT_SENT = (ConnectionRefusedError, socket.gaierror, aiohttp.ClientConnectorError)


def _not_sent(exc: BaseException) -> bool:
    """Whether the request never reached the server: the connection was refused, or the host
    not resolved (a deferral, not a spent attempt). The aiohttp transport maps every
    ClientConnectionError to a connect timeout; its cause then says what happened. A reset
    after the request went out (the server may have run and billed it) is not this."""
    cause, seen = exc.__cause__, 0
    while cause is not None and seen < 10:
        if isinstance(
            cause, ConnectionRefusedError | socket.gaierror | aiohttp.ClientConnectorError
        ):
            return True
        cause, seen = cause.__cause__ or cause.__context__, seen + 1
    return False


def request_body(job: ClaimedJob, settings: Settings, *, structured: bool) -> dict[str, Any]:
    """The create() arguments for `job`: model, messages, the output-token cap under the name
    the provider expects (OpenAI: `max_completion_tokens`, which counts reasoning tokens and
    replaces the deprecated `max_tokens`; others: `max_tokens`), temperature and seed only when
    the model sets them, and for a structured call the json_schema response_format (plus
    OpenRouter's `provider.require_parameters`)."""
    limit = job.max_tokens or settings.default_max_tokens
    cap = "max_completion_tokens" if job.provider == Provider.OPENAI else "max_tokens"
    body: dict[str, Any] = {
        "model": job.model_name,
        "messages": _messages(job, structured),
        cap: limit,
    }
    if job.temperature is not None:
        body["temperature"] = job.temperature
    if job.seed is not None:
        body["seed"] = job.seed
    if structured:
        body["response_format"] = _response_format()
        if job.provider == Provider.OPENROUTER:
            body["extra_body"] = {"provider": {"require_parameters": True}}
    return body


def estimate_tokens(job: ClaimedJob, settings: Settings) -> int:
    """Tokens a call of `job` counts against a TPM limit when it arrives, as OpenAI's "Rate
    limits" guide counts them: the prompt's estimate (characters / 4, the messages as sent,
    the schema's instructions included) plus the output cap (max_tokens)."""
    structured = job.supports_json_schema is not False
    chars = sum(len(m["content"]) for m in _messages(job, structured))
    return math.ceil(chars / 4) + (job.max_tokens or settings.default_max_tokens)


def build_sdk_client(
    settings: Settings, provider: str, base_url: str | None, *, custom_host: bool = False
) -> openai.AsyncOpenAI:
    """An openai.AsyncOpenAI for a model's provider and base URL: retries off, the read timeout
    as a backstop to the call's deadline, attribution headers for OpenRouter, org/project for
    OpenAI only. Raises CallFailed(config) when the key is missing or may not go to `base_url`."""
    try:
        check_endpoint(provider, base_url, custom_host)
    except InvalidInput as exc:
        raise CallFailed(ErrorKind.CONFIG, f"model not called: {exc}") from exc
    api_key = settings.api_key(provider)
    if api_key is None and provider != Provider.COMPATIBLE:
        env = _KEY_ENV[Provider(provider)]
        raise CallFailed(
            ErrorKind.CONFIG, f"{env} is not set; models of provider {provider} cannot be called"
        )
    timeout = openai.Timeout(settings.request_timeout, connect=settings.connect_timeout)
    client = openai.AsyncOpenAI(
        api_key=api_key or "not-needed",
        base_url=base_url_for(provider, base_url),
        max_retries=0,
        timeout=timeout,
        # aiohttp as the transport (the SDK's `aiohttp` extra): under 32 concurrent calls it cost
        # 3.1 ms of CPU per call here, httpx's own async transport 4.8 ms (bench/RESULTS.md).
        # A connection per call in flight (HTTP/1.1): the SDK's default pool of 1,000 would
        # queue the calls of a process past that (PROMPTBATCH_CONCURRENCY goes to 4,096).
        http_client=openai.DefaultAioHttpClient(
            timeout=timeout,
            limits=_HTTP.Limits(max_connections=max(settings.concurrency, 100)),
        ),
        default_headers=_attribution(settings) if provider == Provider.OPENROUTER else None,
    )
    # The SDK reads OPENAI_ORG_ID / OPENAI_PROJECT_ID itself: set them for OpenAI, clear them
    # for everyone else, so an OpenAI account's ids never reach another provider.
    is_openai = provider == Provider.OPENAI
    client.organization = settings.openai_org_id if is_openai else None
    client.project = settings.openai_project_id if is_openai else None
    return client


def _attribution(settings: Settings) -> dict[str, str]:
    """OpenRouter's app attribution headers: X-OpenRouter-Title, and X-Title kept for older
    deployments ("App Attribution")."""
    title = settings.openrouter_title
    return {
        "HTTP-Referer": settings.openrouter_referer,
        "X-OpenRouter-Title": title,
        "X-Title": title,
    }


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
