"""From a chat completion body to a usable answer (DESIGN.md, "Model calls"): the structured
answer validated by pydantic, JSON recovered from plain content, a refusal, or a failure.

A refusal is a result, not an error (output_mode 'refusal'); a truncated answer (finish_reason
'length') and a blank one are failures, never saved as answers (case C17). JSON wrapped in one
code fence is unwrapped (case C18).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from db.types import ErrorKind, OutputMode
from runner.llm.errors import CallFailed

_FENCE = re.compile(r"^\s*```[a-zA-Z0-9_-]*[ \t]*\n(?P<body>.*)\n[ \t]*```\s*$", re.DOTALL)


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


@dataclass(frozen=True)
class RawReply:
    """An HTTP 200 completion as received: the decoded body, its text and the request id."""

    body: dict[str, Any]
    text: str
    request_id: str | None


def decode_body(text: str) -> dict[str, Any]:
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
    answer: str | None,
    names: tuple[str, ...] | None,
    mode: OutputMode,
    rejected: bool = False,
) -> ModelReply:
    usage = raw.body.get("usage") or {}
    return ModelReply(
        answer=answer,
        mention_names=names,
        output_mode=mode,
        finish_reason=_choice(raw).get("finish_reason"),
        prompt_tokens=usage.get("prompt_tokens"),
        completion_tokens=usage.get("completion_tokens"),
        request_id=raw.request_id,
        raw_body=raw.text,
        schema_rejected=rejected,
    )


def _refusal_or_truncation(raw: RawReply) -> ModelReply | None:
    choice = _choice(raw)
    message = choice.get("message") or {}
    if message.get("refusal") or choice.get("finish_reason") == "content_filter":
        return _reply(raw, message.get("refusal"), (), OutputMode.REFUSAL)
    if choice.get("finish_reason") == "length":
        raise CallFailed(
            ErrorKind.TRUNCATED,
            "the answer was cut off (finish_reason 'length')",
            request_id=raw.request_id,
        )
    return None


def structured_reply(raw: RawReply) -> ModelReply | None:
    """The validated structured answer, or None when the content is not the schema's JSON."""
    if (special := _refusal_or_truncation(raw)) is not None:
        return special
    parsed = parse_answer_json(_content(raw))
    if parsed is None:
        return None
    answer, fenced = parsed
    mode = OutputMode.JSON if fenced else OutputMode.STRUCTURED
    return _reply(raw, answer.answer, tuple(answer.mentions), mode)


def plain_reply(raw: RawReply, rejected: bool) -> ModelReply:
    if (special := _refusal_or_truncation(raw)) is not None:
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
        return _reply(raw, parsed[0].answer, tuple(parsed[0].mentions), OutputMode.JSON, rejected)
    return _reply(raw, content, None, OutputMode.TEXT_FALLBACK, rejected)


def _content(raw: RawReply) -> str:
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
