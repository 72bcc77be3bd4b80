"""From a chat completion body to a usable answer (DESIGN.md, "Model calls"): the structured
answer validated by pydantic, JSON recovered from plain content, a refusal, or a failure.

A refusal is a result, not an error (output_mode 'refusal'); a truncated answer (finish_reason
'length') and a blank one are failures, never saved as answers (case C17). The answer JSON is
recovered from a code fence around the whole content (case C18) or from one object inside prose
("Here is the JSON:" before it, a closing remark after it). A structured call answered in plain
prose is the model ignoring json_schema: the prose is the answer, and the model is marked.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from db.types import CallUsage, ErrorKind, OutputMode
from runner.llm.errors import CallFailed
from runner.llm.ratelimits import RateLimits

_FENCE = re.compile(r"^\s*```[a-zA-Z0-9_-]*[ \t]*\n(?P<body>.*)\n[ \t]*```\s*$", re.DOTALL)
_DECODER = json.JSONDecoder()
MAX_OBJECT_STARTS = 50  # `{` positions tried when looking for the answer object inside prose


class ModelAnswer(BaseModel):
    """The structured answer asked of the model (json_schema, strict)."""

    model_config = ConfigDict(extra="forbid")
    answer: str
    mentions: list[str]


@dataclass(frozen=True)
class RawReply:
    """An HTTP 200 completion as received: the decoded body, its text, and the call's usage."""

    body: dict[str, Any]
    text: str
    usage: CallUsage

    @property
    def request_id(self) -> str | None:
        return self.usage.request_id


@dataclass(frozen=True)
class ModelReply:
    """A usable answer. `mention_names` None means: find the mentions in the text.

    `call` is what the answering call used (the response row), `usage` what the whole attempt
    used (the attempt row; a fallback's first call included). `schema_unsupported`: the model
    rejected or ignored json_schema, so later jobs go straight to the plain call.
    """

    answer: str | None
    mention_names: tuple[str, ...] | None
    output_mode: OutputMode
    finish_reason: str | None
    raw_body: str
    call: CallUsage
    usage: CallUsage
    schema_unsupported: bool = False
    limits: RateLimits | None = None  # the answer's x-ratelimit-* headers, if any


def decode_body(text: str) -> dict[str, Any]:
    """The JSON object of a 200's body; CallFailed(server_error) when it is not one."""
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise CallFailed(
            ErrorKind.SERVER_ERROR, f"response body is not JSON: {text[:200]!r}"
        ) from exc
    if not isinstance(body, dict):
        raise CallFailed(ErrorKind.SERVER_ERROR, f"response body is not an object: {text[:200]!r}")
    return body


def _choice(raw: RawReply) -> dict[str, Any]:
    choices = raw.body.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        raise CallFailed(
            ErrorKind.INVALID_OUTPUT,
            f"no choices in the response: {raw.text[:200]}",
            request_id=raw.request_id,
        )
    return choices[0]


def _reply(
    raw: RawReply,
    spent: CallUsage,
    answer: str | None,
    names: tuple[str, ...] | None,
    mode: OutputMode,
    unsupported: bool = False,
) -> ModelReply:
    return ModelReply(
        answer=answer,
        mention_names=names,
        output_mode=mode,
        finish_reason=_choice(raw).get("finish_reason"),
        raw_body=raw.text,
        call=raw.usage,
        usage=spent,
        schema_unsupported=unsupported,
    )


def _refusal_or_truncation(raw: RawReply, spent: CallUsage) -> ModelReply | None:
    choice = _choice(raw)
    message = choice.get("message") or {}
    if message.get("refusal") or choice.get("finish_reason") == "content_filter":
        return _reply(raw, spent, message.get("refusal"), (), OutputMode.REFUSAL)
    if choice.get("finish_reason") == "length":
        raise CallFailed(
            ErrorKind.TRUNCATED,
            "the answer was cut off (finish_reason 'length'; raise the model's max_tokens)",
            request_id=raw.request_id,
        )
    return None


def structured_reply(raw: RawReply, spent: CallUsage) -> ModelReply | None:
    """The answer of a json_schema call: the validated JSON; the prose, when the model ignored
    the schema (marked unsupported); None when the content is broken JSON or blank (ask again
    without the schema). `spent` is the attempt's usage so far, this call included."""
    if (special := _refusal_or_truncation(raw, spent)) is not None:
        return special
    content = _content(raw)
    parsed = parse_answer_json(content)
    if parsed is not None:
        answer, exact = parsed
        mode = OutputMode.STRUCTURED if exact else OutputMode.JSON
        return _reply(raw, spent, answer.answer, tuple(answer.mentions), mode)
    if _is_prose(content):
        return _reply(raw, spent, content, None, OutputMode.TEXT_FALLBACK, unsupported=True)
    return None


def plain_reply(raw: RawReply, spent: CallUsage, rejected: bool) -> ModelReply:
    """The answer of a plain call: JSON recovered if the model sent the answer object anyway,
    else the text (mentions found from the catalog). Raises CallFailed for a blank answer."""
    if (special := _refusal_or_truncation(raw, spent)) is not None:
        return special
    content = _content(raw)
    if not content.strip():
        raise CallFailed(
            ErrorKind.INVALID_OUTPUT,
            "blank answer even from a plain completion",
            request_id=raw.request_id,
        )
    parsed = parse_answer_json(content)
    if parsed is not None:
        answer = parsed[0]
        return _reply(raw, spent, answer.answer, tuple(answer.mentions), OutputMode.JSON, rejected)
    return _reply(raw, spent, content, None, OutputMode.TEXT_FALLBACK, rejected)


def _content(raw: RawReply) -> str:
    content = (_choice(raw).get("message") or {}).get("content")
    return content if isinstance(content, str) else ""


def _is_prose(content: str) -> bool:
    """Text that is not an attempt at JSON: non-blank and not opening an object, array or fence."""
    stripped = content.strip()
    return bool(stripped) and stripped[0] not in "{[`"


def parse_answer_json(content: str) -> tuple[ModelAnswer, bool] | None:
    """The ModelAnswer in `content`, and whether `content` was exactly its JSON.

    Tried in order: the whole content; one ```json fence wrapping the whole content (backticks
    inside JSON strings are left alone, case C18); the first object in the text that validates
    as ModelAnswer (prose before or after it). None when there is none.
    """
    exact = _validate(content)
    if exact is not None:
        return exact, True
    match = _FENCE.match(content)
    fenced = _validate(match.group("body")) if match else None
    if fenced is not None:
        return fenced, False
    embedded = _embedded_answer(content)
    return (embedded, False) if embedded is not None else None


def _validate(text: str) -> ModelAnswer | None:
    try:
        return ModelAnswer.model_validate_json(text)
    except ValidationError:
        return None


def _embedded_answer(content: str) -> ModelAnswer | None:
    start = content.find("{")
    for _ in range(MAX_OBJECT_STARTS):
        if start < 0:
            return None
        try:
            value, _end = _DECODER.raw_decode(content, start)
        except ValueError:
            value = None
        if isinstance(value, dict) and (answer := _validated(value)) is not None:
            return answer
        start = content.find("{", start + 1)  # not the answer's object: try the next one
    return None


def _validated(value: dict[str, object]) -> ModelAnswer | None:
    """`value` as the answer contract, or None when it is some other object."""
    try:
        return ModelAnswer.model_validate(value)
    except ValidationError:
        return None
