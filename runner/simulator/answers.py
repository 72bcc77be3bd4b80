"""The simulated model: its answer bank, the chat request it reads and the completion it writes.

The bank is package data (``runner/data/answers.jsonl``: id, prompt, model, answer markdown,
mentions); a request is answered from the entries matching its last user message, in turn.
"""

from __future__ import annotations

import functools
import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any
from uuid import uuid4

from db.errors import InvalidInput
from runner.simulator.faults import (
    LENGTH_TEXT_CHARS,
    Faults,
    Message,
    Reply,
    Style,
    shape_message,
    split_model,
)

SIM_USD_PER_MTOK = 0.5  # what the OpenRouter style reports as usage.cost per million tokens


@dataclass(frozen=True)
class BankEntry:
    """One canned answer: markdown text plus the brands it mentions, in order of first mention."""

    id: str
    prompt: str
    model: str
    answer: str
    mentions: tuple[str, ...]


@functools.cache
def load_answer_bank() -> tuple[BankEntry, ...]:
    """The answer bank shipped as package data ``runner/data/answers.jsonl``."""
    text = resources.files("runner").joinpath("data", "answers.jsonl").read_text(encoding="utf-8")
    rows = (json.loads(line) for line in text.splitlines() if line.strip())
    return tuple(
        BankEntry(row["id"], row["prompt"], row["model"], row["answer"], tuple(row["mentions"]))
        for row in rows
    )


@functools.lru_cache(maxsize=1024)  # the bank's prompts are tokenized once, not per request
def _words(text: str) -> frozenset[str]:
    return frozenset(re.findall(r"\w+", text.casefold()))


def _candidates(prompt: str, bank: Sequence[BankEntry]) -> list[BankEntry]:
    """The entries written for ``prompt``, else for the bank prompt sharing the most words with it.

    Ties go to the lowest id; entries without mentions (refusals) only answer an exact match.
    """
    exact = [entry for entry in bank if entry.prompt.strip() == prompt.strip()]
    if exact:
        return exact
    words = _words(prompt)
    answers = [entry for entry in bank if entry.mentions]
    best = min(answers, key=lambda entry: (-len(words & _words(entry.prompt)), entry.id))
    return [entry for entry in answers if entry.prompt == best.prompt]


def pick_answer(prompt: str, bank: Sequence[BankEntry], number: int = 1) -> BankEntry:
    """The ``number``-th (1-based) answer to ``prompt``: its candidates in bank order, in turn.

    The candidates are the entries for the exact prompt, else those for the closest bank prompt.
    """
    candidates = _candidates(prompt, bank)
    return candidates[(number - 1) % len(candidates)]


def answer_number(faults: Faults, call_number: int) -> int:
    """Which answer (1-based) the ``call_number``-th call of a call key gets.

    Counted faults (429, 500, OpenRouter error) take a call key's first calls, so they are not
    counted: the first call that gets an answer gets the first variant.
    """
    or_errors = (faults.or_error_times or 0) if faults.or_error is not None else 0
    return max(call_number - faults.rate_limit - faults.error500 - or_errors, 1)


def message_text(message: dict[str, Any]) -> str:
    """The text of a chat message whose content is a string or a list of content parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


@dataclass(frozen=True)
class ChatRequest:
    """The parts of a chat-completions body the simulator looks at."""

    model: str  # as requested, faults included
    messages: tuple[dict[str, Any], ...]
    response_format: str | None  # response_format.type, None when absent
    stream: bool
    max_tokens: int | None = None  # max_completion_tokens, else max_tokens
    require_parameters: bool = False  # OpenRouter's provider.require_parameters
    params: frozenset[str] = frozenset()  # the body's top-level keys

    @property
    def model_name(self) -> str:
        """The model name without its ``@faults`` suffix."""
        return split_model(self.model)[0]

    @property
    def last_user_text(self) -> str:
        """The text of the last ``user`` message ("" when there is none)."""
        users = [message for message in self.messages if message.get("role") == "user"]
        return message_text(users[-1]) if users else ""

    @property
    def prompt_chars(self) -> int:
        """Characters over all message texts, for the token estimate."""
        return sum(len(message_text(message)) for message in self.messages)


def parse_chat_request(raw: bytes) -> ChatRequest:
    """Parse a chat-completions body; raises InvalidInput when it is not usable."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"We could not parse the JSON body of your request: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidInput("The request body must be a JSON object.")
    model, messages = body.get("model"), body.get("messages")
    if not isinstance(model, str) or not model:
        raise InvalidInput("You must provide a model parameter.")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise InvalidInput("'messages' must be a list of message objects.")
    response_format = body.get("response_format")
    format_type = response_format.get("type") if isinstance(response_format, dict) else None
    provider = body.get("provider")
    return ChatRequest(
        model,
        tuple(messages),
        format_type,
        bool(body.get("stream")),
        max_tokens=_max_tokens(body),
        require_parameters=isinstance(provider, dict)
        and provider.get("require_parameters") is True,
        params=frozenset(body),
    )


def _max_tokens(body: dict[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 1:
                raise InvalidInput(f"Invalid '{name}': integer below minimum value 1.")
            return value
    return None


def _tokens(chars: int) -> int:
    return math.ceil(chars / 4)


def completion_body(
    request: ChatRequest, message: Message, style: Style = "sim", error_code: int | None = None
) -> dict[str, Any]:
    """A ChatCompletion JSON object; token counts are estimated as ceil(characters / 4).

    OpenRouter's style has a ``gen-`` id and ``usage.cost`` (credits, at SIM_USD_PER_MTOK);
    ``error_code`` makes the choice end in error mid-generation (OpenRouter "Errors").
    """
    prompt_tokens = _tokens(request.prompt_chars)
    completion_tokens = _tokens(len(message.content or message.refusal or ""))
    assistant = {"role": "assistant", "content": message.content, "refusal": message.refusal}
    choice: dict[str, Any] = {
        "index": 0,
        "message": assistant,
        "finish_reason": message.finish_reason,
    }
    if error_code is not None:
        choice["error"] = {
            "code": error_code,
            "message": "Upstream error mid-generation (simulated)",
        }
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if style == "openrouter":
        usage["cost"] = round((prompt_tokens + completion_tokens) * SIM_USD_PER_MTOK / 1e6, 9)
    prefix = "gen-" if style == "openrouter" else "chatcmpl-sim-"
    return {
        "id": f"{prefix}{uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.model,
        "choices": [{**choice, "logprobs": None}],
        "usage": usage,
    }


def _capped(message: Message, max_tokens: int | None) -> Message:
    """The message cut at the request's output-token cap, as providers cut (finish 'length')."""
    content = message.content
    if max_tokens is None or content is None or _tokens(len(content)) <= max_tokens:
        return message
    return Message(content[: max_tokens * 4], message.refusal, "length")


def answer_reply(
    request: ChatRequest, faults: Faults, bank: Sequence[BankEntry], call_number: int = 1
) -> Reply:
    """HTTP 200 with the bank's answer to the last user message, shaped by content faults.

    ``call_number`` is the call's number for its call key (model without faults, prompt): a prompt
    with several bank entries gets them in turn.
    """
    entry = pick_answer(request.last_user_text, bank, answer_number(faults, call_number))
    if faults.no_endpoints:  # routed to a provider that ignores response_format
        faults = replace(faults, ignores_schema=True)
    message = shape_message(entry.answer, entry.mentions, faults, request.response_format)
    message = _capped(message, request.max_tokens)
    if faults.choice_error is not None:
        partial = Message((message.content or "")[:LENGTH_TEXT_CHARS], None, "error")
        return Reply(200, completion_body(request, partial, faults.style, faults.choice_error))
    return Reply(200, completion_body(request, message, faults.style))
