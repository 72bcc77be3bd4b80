"""`promptbatch models check`: one real call per model, to see before a batch whether it works.

The call is the one a job makes (the same request body: max_tokens under the provider's name,
temperature, seed, json_schema with OpenRouter's require_parameters), with a short prompt, so
what the check finds is what the batch will meet: reachable, key accepted, json_schema honoured,
latency, and which rate-limit headers the provider sends (issue 10 learns limits from them).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from db.types import ClaimedJob, ErrorKind
from runner.llm.answers import RawReply, decode_body, structured_reply
from runner.llm.client import ModelClient, post
from runner.llm.errors import CallFailed, SchemaRejected, check_embedded_error, request_id_of
from runner.llm.usage import call_usage

CHECK_PROMPT = "Which CRM would you recommend to a 10-person startup? Answer in one sentence."
RATE_LIMIT_PREFIXES = ("x-ratelimit-", "ratelimit-", "retry-after")


@dataclass(frozen=True)
class ModelCheck:
    """What one check call found. `json_schema`: True honoured, False rejected or ignored, None
    unknown (the call failed first). `latency_ms` is wall-clock, the whole call."""

    reachable: bool
    key_accepted: bool
    json_schema: bool | None
    latency_ms: int
    rate_limit_headers: tuple[str, ...]
    request_id: str | None
    error_kind: ErrorKind | None = None
    error: str | None = None

    @property
    def usable(self) -> bool:
        """Whether jobs of this model can succeed as configured."""
        return self.error_kind is None

    @property
    def verdict(self) -> str:
        """One line for the operator."""
        if self.error_kind is not None:
            return f"FAIL {self.error_kind.value}: {self.error}"
        if self.json_schema is False:
            return "ok, but json_schema is not honoured: jobs use the plain call (one call each)"
        return "ok: structured answers"


def check_model(client: ModelClient, job: ClaimedJob) -> ModelCheck:
    """Make `job`'s structured call once with CHECK_PROMPT and report; never raises for the
    model's own failure (a CallFailed is the report's error)."""
    return client.run(_check(client, replace(job, prompt_text=CHECK_PROMPT)))


async def _check(client: ModelClient, job: ClaimedJob) -> ModelCheck:
    started = time.monotonic()
    try:
        sdk = client.sdk_client(job)
        text, headers = await post(sdk, job, client.settings, structured=True)
    except SchemaRejected:
        return _found(started, (), None, json_schema=False)
    except CallFailed as exc:
        return _failed(started, exc)
    seen = tuple(sorted(h for h in headers if h.lower().startswith(RATE_LIMIT_PREFIXES)))
    try:
        body = decode_body(text)
        raw = RawReply(body, text, call_usage(body, request_id_of(headers, body), job))
        check_embedded_error(body, raw.request_id, True)
        reply = structured_reply(raw, raw.usage)
    except SchemaRejected:
        return _found(started, seen, None, json_schema=False)
    except CallFailed as exc:
        return _failed(started, exc)
    honoured = reply is not None and not reply.schema_unsupported
    return _found(started, seen, raw.request_id, json_schema=honoured)


def _found(
    started: float, seen: tuple[str, ...], request_id: str | None, *, json_schema: bool
) -> ModelCheck:
    return ModelCheck(True, True, json_schema, _ms(started), seen, request_id)


def _failed(started: float, exc: CallFailed) -> ModelCheck:
    reachable = exc.kind not in (ErrorKind.CONNECTION, ErrorKind.CONFIG)
    key_ok = reachable and exc.kind not in (ErrorKind.AUTH, ErrorKind.FORBIDDEN)
    return ModelCheck(reachable, key_ok, None, _ms(started), (), exc.request_id, exc.kind, str(exc))


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
