"""Fault injection for the model simulator: the fault grammar and the replies each fault produces.

Grammar: comma-separated ``name`` or ``name=value`` items, e.g. ``latency=500,rate_limit=3,hang``.
Faults come from the model name after ``@`` (``sim-gpt-4o-mini@blank``) and from the
``X-Simulator-Faults`` header, which adds to and overrides (per key) those in the name.
Counted faults take turns per call key: the first ``rate_limit`` calls answer 429, the next
``error500`` calls answer 500, the next ``or_error_times`` calls (all later ones by default) answer
OpenRouter's 200-with-error, and only then does the simulator answer normally.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from db.errors import InvalidInput

FAULTS_HEADER = "X-Simulator-Faults"
REFUSAL_TEXT = "I'm sorry, I can't help with that request."
LENGTH_JSON_CHARS = 30  # a `length` cut of a json_schema answer keeps this many characters
LENGTH_TEXT_CHARS = 200  # a `length` cut of a plain answer keeps this many characters

CountedFault = Literal["rate_limit", "error500", "or_error"]
Style = Literal["sim", "openai", "openrouter", "litellm"]
STYLES: tuple[Style, ...] = ("sim", "openai", "openrouter", "litellm")
PROSE_BEFORE = "Sure! Here is the JSON you asked for:\n\n"
PROSE_AFTER = "\n\nLet me know if you would like more detail on any of these."
NO_ENDPOINTS = "No endpoints found that can handle the requested parameters."


@dataclass(frozen=True)
class Faults:
    """The faults active for one request; the defaults mean "behave like a healthy provider"."""

    latency_ms: int = 0  # sleep before any answer, milliseconds
    rate_limit: int = 0  # first N calls per call key answer 429
    retry_after_s: float = 1.0  # Retry-After of the 429, seconds (may be fractional)
    error500: int = 0  # next N calls per call key answer 500
    hang: bool = False  # never answer
    invalid_json: bool = False  # json_schema content is cut-off JSON
    fenced: bool = False  # json_schema unsupported; plain requests get a ```json fence
    no_schema: bool = False  # json_schema unsupported; plain requests get markdown
    refusal: bool = False  # content null, message.refusal set
    length: bool = False  # finish_reason "length", content truncated
    blank: bool = False  # content ""
    or_error: int | None = None  # OpenRouter 200-with-error carrying this code
    or_error_times: int | None = None  # how many calls get or_error; None = all
    status: int | None = None  # always answer this HTTP status
    # How the server speaks (headers, ids, usage): "sim" (x-request-id sim-...), "openai"
    # (x-request-id req_..., x-ratelimit-* headers, unknown body parameters refused), "openrouter"
    # (no x-request-id, gen-... ids, usage.cost), "litellm" (x-litellm-call-id only).
    style: Style = "sim"
    trickle_ms: int | None = None  # headers at once, then one body byte every N ms
    choice_error: int | None = None  # 200 whose choice ends in error (this code), partial text
    prose_json: bool = False  # the answer JSON inside prose, for any request
    ignores_schema: bool = False  # json_schema accepted but answered in plain prose
    no_endpoints: bool = False  # OpenRouter: require_parameters + json_schema -> 404
    quota: bool = False  # 429 insufficient_quota (OpenAI: the plan's quota is spent)
    region: bool = False  # 403 unsupported_country_region_territory (the account's)
    # The provider's limits (runner.simulator.limits), per model name: requests and tokens per
    # minute, USD of credits, a key revoked after N admitted calls, 429s without Retry-After.
    rpm: int | None = None
    tpm: int | None = None
    credits: float | None = None
    revoke_after: int | None = None
    no_retry_after: bool = False
    jitter: float = 0.0  # latency lognormal around latency_ms with this sigma (0: constant)
    spend_wait_s: float | None = None  # 402 with Retry-After (OpenRouter's in-flight spend)

    @property
    def rejects_json_schema(self) -> bool:
        """Whether the simulated model rejects ``response_format`` of type json_schema."""
        return self.fenced or self.no_schema


@dataclass(frozen=True)
class Reply:
    """One HTTP answer: status code, JSON body and extra headers (x-request-id is added later)."""

    status: int
    body: dict[str, Any]
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Message:
    """The assistant message the simulated model produces."""

    content: str | None
    refusal: str | None
    finish_reason: Literal["stop", "length", "error"]


def _count(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError(value)
    return number


def _seconds(value: str) -> float:
    number = float(value)
    if not 0 <= number <= 3600:
        raise ValueError(value)
    return number


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(value)
    return number


def _usd(value: str) -> float:
    number = float(value)
    if not 0 <= number < 1e9:
        raise ValueError(value)
    return number


def _sigma(value: str) -> float:
    number = float(value)
    if not 0 <= number <= 3:
        raise ValueError(value)
    return number


def _http_status(value: str) -> int:
    code = int(value)
    if not 400 <= code <= 599:
        raise ValueError(value)
    return code


def _flag(value: str) -> bool:
    lowered = value.casefold()
    if lowered in ("", "1", "true", "on"):
        return True
    if lowered in ("0", "false", "off"):
        return False
    raise ValueError(value)


def _style(value: str) -> Style:
    for style in STYLES:
        if value == style:
            return style
    raise ValueError(value)


# fault name -> (Faults field, converter of the text after "=")
_FAULTS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "latency": ("latency_ms", _count),
    "rate_limit": ("rate_limit", _count),
    "retry_after": ("retry_after_s", _seconds),
    "error500": ("error500", _count),
    "hang": ("hang", _flag),
    "invalid_json": ("invalid_json", _flag),
    "fenced": ("fenced", _flag),
    "no_schema": ("no_schema", _flag),
    "refusal": ("refusal", _flag),
    "length": ("length", _flag),
    "blank": ("blank", _flag),
    "or_error": ("or_error", _http_status),
    "or_error_times": ("or_error_times", _count),
    "status": ("status", _http_status),
    "style": ("style", _style),
    "trickle": ("trickle_ms", lambda v: _count(v or "1000")),
    "choice_error": ("choice_error", _http_status),
    "prose_json": ("prose_json", _flag),
    "ignores_schema": ("ignores_schema", _flag),
    "no_endpoints": ("no_endpoints", _flag),
    "quota": ("quota", _flag),
    "region": ("region", _flag),
    "rpm": ("rpm", _positive),
    "tpm": ("tpm", _positive),
    "credits": ("credits", _usd),
    "revoke_after": ("revoke_after", _count),
    "no_retry_after": ("no_retry_after", _flag),
    "jitter": ("jitter", _sigma),
    "spend_wait": ("spend_wait_s", _seconds),
}


def parse_fault_spec(spec: str) -> dict[str, str]:
    """Split ``"a=1,b"`` into ``{"a": "1", "b": ""}``; raises InvalidInput on an unknown name."""
    items: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, value = item.partition("=")
        name = name.strip()
        if name not in _FAULTS:
            raise InvalidInput(f"Unknown simulator fault: {name!r}")
        items[name] = value.strip()
    return items


def _convert(name: str, value: str) -> tuple[str, Any]:
    field, converter = _FAULTS[name]
    try:
        return field, converter(value)
    except ValueError as exc:
        raise InvalidInput(f"Invalid value for simulator fault {name!r}: {value!r}") from exc


def build_faults(*specs: str) -> Faults:
    """Merge fault specs left to right (later keys win); raises InvalidInput on a bad item."""
    merged: dict[str, str] = {}
    for spec in specs:
        merged.update(parse_fault_spec(spec))
    fields: dict[str, Any] = dict(_convert(name, value) for name, value in merged.items())
    return Faults(**fields)


def split_model(model: str) -> tuple[str, str]:
    """Split ``"sim-gpt-4o-mini@latency=5"`` into the model name and the fault spec."""
    name, _, spec = model.partition("@")
    return name, spec


def counted_fault(faults: Faults, call_number: int) -> CountedFault | None:
    """Which counted fault the ``call_number``-th call (1-based) of one call key meets, if any."""
    if call_number <= faults.rate_limit:
        return "rate_limit"
    call_number -= faults.rate_limit
    if call_number <= faults.error500:
        return "error500"
    call_number -= faults.error500
    if faults.or_error is None:
        return None
    if faults.or_error_times is None or call_number <= faults.or_error_times:
        return "or_error"
    return None


def error_reply(
    status: int,
    message: str,
    error_type: str,
    *,
    code: str | None = None,
    param: str | None = None,
    headers: tuple[tuple[str, str], ...] = (),
) -> Reply:
    """An OpenAI-style error: ``{"error": {"message", "type", ["param",] "code"}}``."""
    error: dict[str, Any] = {"message": message, "type": error_type}
    if param is not None:
        error["param"] = param
    error["code"] = code
    return Reply(status, {"error": error}, headers)


def rate_limit_reply(faults: Faults) -> Reply:
    """HTTP 429 with ``Retry-After`` (seconds) and ``retry-after-ms`` headers."""
    seconds = faults.retry_after_s
    headers = (("Retry-After", f"{seconds:g}"), ("retry-after-ms", str(round(seconds * 1000))))
    message = "Rate limit reached (simulated)"
    return error_reply(429, message, "requests", code="rate_limit_exceeded", headers=headers)


def server_error_reply() -> Reply:
    """HTTP 500 as OpenAI sends it."""
    return error_reply(500, "The server had an error (simulated)", "server_error")


def unsupported_schema_reply() -> Reply:
    """HTTP 400 of a model without structured outputs."""
    message = (
        "Invalid parameter: 'response_format' of type 'json_schema'"
        " is not supported with this model."
    )
    return error_reply(400, message, "invalid_request_error", param="response_format")


def status_reply(status: int, model: str) -> Reply:
    """The OpenAI error body for an HTTP status forced by ``status=CODE`` (or failed auth)."""
    if status == 401:
        message = "Incorrect API key provided (simulated)"
        return error_reply(401, message, "invalid_request_error", code="invalid_api_key")
    if status == 402:
        message = "Insufficient credits (simulated)"
        return error_reply(402, message, "insufficient_quota", code="insufficient_quota")
    if status == 403:  # OpenRouter's moderation error ("Errors": metadata reasons, flagged_input)
        message = "Your chosen model requires moderation and your input was flagged (simulated)"
        metadata = {"reasons": ["harassment"], "flagged_input": "...", "provider_name": "Sim"}
        return Reply(403, {"error": {"code": 403, "message": message, "metadata": metadata}})
    if status == 404:
        message = f"The model `{model}` does not exist (simulated)"
        return error_reply(404, message, "invalid_request_error", code="model_not_found")
    error_type = "server_error" if status >= 500 else "invalid_request_error"
    return error_reply(status, f"HTTP {status} (simulated)", error_type)


def region_reply() -> Reply:
    """OpenAI's 403 for a request from a country it does not serve: the account's, not the
    prompt's."""
    message = "Country, region, or territory not supported"
    return error_reply(
        403, message, "request_forbidden", code="unsupported_country_region_territory"
    )


def quota_reply() -> Reply:
    """OpenAI's 429 when the plan's quota is spent (not a rate limit that passes)."""
    message = "You exceeded your current quota, please check your plan and billing details."
    return error_reply(429, message, "insufficient_quota", code="insufficient_quota")


def spend_wait_reply(seconds: float) -> Reply:
    """OpenRouter's 402 with Retry-After: the key's in-flight spend is at its limit for now."""
    message = "Insufficient credits for the requests in flight; retry shortly (simulated)"
    return Reply(
        402, {"error": {"code": 402, "message": message}}, (("Retry-After", f"{seconds:g}"),)
    )


def no_endpoints_reply() -> Reply:
    """OpenRouter's 404 when `provider.require_parameters` leaves no endpoint for the request."""
    return Reply(404, {"error": {"code": 404, "message": NO_ENDPOINTS}})


def or_error_reply(code: int, model: str, generation_id: str, created: int) -> Reply:
    """OpenRouter's HTTP 200 whose body has ``choices: null`` and an ``error`` object."""
    message = "Provider returned error"
    metadata: dict[str, Any] = {"provider_name": "SimProvider"}
    if code == 400:
        message = f"{message}: json_schema response_format is not supported"
        metadata["raw"] = message
    error = {"code": code, "message": message, "metadata": metadata}
    body = {"id": generation_id, "object": "chat.completion", "created": created, "model": model}
    return Reply(200, {**body, "choices": None, "error": error})


def answer_json(answer: str, mentions: Sequence[str]) -> str:
    """The structured answer ``{"answer": str, "mentions": [str]}`` as JSON text."""
    return json.dumps({"answer": answer, "mentions": list(mentions)}, ensure_ascii=False)


def _structured_content(answer: str, mentions: Sequence[str], faults: Faults) -> str:
    if faults.invalid_json:
        # Cut inside the answer string so the text can never parse.
        return '{"answer": ' + json.dumps(answer, ensure_ascii=False)[: len(answer) // 2]
    return answer_json(answer, mentions)


def _plain_content(answer: str, mentions: Sequence[str], faults: Faults, fence: bool) -> str:
    if faults.fenced and fence:
        return "```json\n" + answer_json(answer, mentions) + "\n```"
    return answer


def _content(
    answer: str, mentions: Sequence[str], faults: Faults, response_format: str | None
) -> str:
    if faults.prose_json:
        return PROSE_BEFORE + answer_json(answer, mentions) + PROSE_AFTER
    if response_format == "json_schema" and not faults.ignores_schema:
        return _structured_content(answer, mentions, faults)
    return _plain_content(answer, mentions, faults, fence=response_format is None)


def shape_message(
    answer: str, mentions: Sequence[str], faults: Faults, response_format: str | None
) -> Message:
    """The assistant message for an answer, after content faults (refusal, blank, length, ...).

    ``response_format`` is the request's ``response_format.type`` (None when absent).
    """
    if faults.refusal:
        return Message(None, REFUSAL_TEXT, "stop")
    if faults.blank:
        return Message("", None, "stop")
    content = _content(answer, mentions, faults, response_format)
    cut = LENGTH_JSON_CHARS if response_format == "json_schema" else LENGTH_TEXT_CHARS
    if faults.length:
        return Message(content[:cut], None, "length")
    return Message(content, None, "stop")
