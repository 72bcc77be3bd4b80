"""The simulator, driven over HTTP by the real openai client."""

from __future__ import annotations

import csv
import http.client
import json
import math
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from runner.simulator.answers import BankEntry, answer_number, load_answer_bank, pick_answer
from runner.simulator.faults import REFUSAL_TEXT, Faults
from runner.simulator.server import SimulatorServer, running_simulator

CORPUS = [
    json.loads(line)
    for line in (Path(__file__).parent / "fixtures" / "answers.jsonl").read_text().splitlines()
]
ENTRIES = {entry["id"]: entry for entry in CORPUS}
BANK = load_answer_bank()
DEMO_PROMPTS_CSV = Path(__file__).parent.parent / "runner" / "data" / "demo_prompts.csv"
DEMO_PROMPTS = [row["text"] for row in csv.DictReader(DEMO_PROMPTS_CSV.read_text().splitlines())]
CRM = ENTRIES["crm-1"]
MODEL = "sim-gpt-4o-mini"
SCHEMA_FORMAT: Any = {
    "type": "json_schema",
    "json_schema": {
        "name": "ModelAnswer",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {
                "answer": {"type": "string"},
                "mentions": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["answer", "mentions"],
            "additionalProperties": False,
        },
    },
}


class ModelAnswer(BaseModel):
    """The client's structured-output contract."""

    answer: str
    mentions: list[str]


@pytest.fixture(scope="module")
def shared_client(shared_sim: SimulatorServer) -> Iterator[openai.OpenAI]:
    # One client per module: building one loads the TLS trust store (~35 ms).
    url = shared_sim.base_url
    with openai.OpenAI(base_url=url, api_key="sim", max_retries=0, timeout=5) as client:
        yield client


@pytest.fixture
def client(sim: SimulatorServer, shared_client: openai.OpenAI) -> openai.OpenAI:
    return shared_client


def ask(client: openai.OpenAI, model: str, prompt: str = CRM["prompt"], **kwargs: Any) -> Any:
    """One chat completion for ``prompt``."""
    messages: Any = [{"role": "user", "content": prompt}]
    return client.chat.completions.create(model=model, messages=messages, **kwargs)


def full_json(entry: dict[str, Any]) -> str:
    """The structured answer the simulator sends for ``entry``."""
    payload = {"answer": entry["answer"], "mentions": entry["mentions"]}
    return json.dumps(payload, ensure_ascii=False)


def test_models_lists_the_simulated_models(client: openai.OpenAI) -> None:
    models = client.models.list()

    assert [model.id for model in models] == [
        "sim-gpt-4o-mini",
        "sim-claude-3.5-sonnet",
        "sim-llama-3.1-70b",
    ]
    assert {model.owned_by for model in models} == {"promptbatch-simulator"}


@pytest.mark.parametrize("entry", CORPUS, ids=[entry["id"] for entry in CORPUS])
def test_exact_prompt_gets_its_bank_answer(client: openai.OpenAI, entry: dict[str, Any]) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": entry["prompt"]}]
    )
    completion = raw.parse()

    assert completion.choices[0].message.content == entry["answer"]
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == MODEL
    assert completion.id.startswith("chatcmpl-sim-")
    assert raw.headers["x-request-id"].startswith("sim-")
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == math.ceil(len(entry["prompt"]) / 4)
    assert completion.usage.completion_tokens == math.ceil(len(entry["answer"]) / 4)


def written_for(prompt: str) -> list[BankEntry]:
    """The bank entries whose prompt is exactly ``prompt``, in bank order."""
    return [entry for entry in BANK if entry.prompt == prompt]


def folded(text: str) -> str:
    """``text`` casefolded without whitespace ("ProtonVPN" names Proton VPN)."""
    return "".join(text.casefold().split())


def test_bank_validates() -> None:
    ids = [entry.id for entry in BANK]

    assert len(ids) == len(set(ids))
    assert [entry.id for entry in BANK if not entry.mentions] == ["refusal-1"]
    for entry in BANK:
        assert len(set(entry.mentions)) == len(entry.mentions), entry.id
        missing = [name for name in entry.mentions if folded(name) not in folded(entry.answer)]
        assert missing == [], entry.id


def test_bank_starts_with_the_corpus_answers() -> None:
    assert [(entry.id, entry.answer) for entry in BANK[: len(CORPUS)]] == [
        (entry["id"], entry["answer"]) for entry in CORPUS
    ]


@pytest.mark.parametrize("prompt", DEMO_PROMPTS)
def test_demo_prompt_gets_an_answer_written_for_it(client: openai.OpenAI, prompt: str) -> None:
    variants = written_for(prompt)

    content = ask(client, MODEL, prompt).choices[0].message.content

    assert len(variants) >= 2
    assert content == variants[0].answer


def test_pick_answer_rotates_the_variants_of_a_prompt() -> None:
    crm = [entry.id for entry in written_for(CRM["prompt"])]
    airline = [entry.id for entry in written_for(ENTRIES["refusal-1"]["prompt"])]

    picks = [pick_answer(CRM["prompt"], BANK, number).id for number in range(1, len(crm) + 2)]
    airline_picks = [pick_answer(ENTRIES["refusal-1"]["prompt"], BANK, n).id for n in (1, 2)]

    assert picks == [*crm, crm[0]]
    assert airline_picks == airline[:2]
    assert airline[0] == "refusal-1"


def test_pick_answer_rotates_the_closest_prompts_answers_without_refusals() -> None:
    prompt = "What is the most reliable budget airline in Asia?"
    picks = {pick_answer(prompt, BANK, number) for number in range(1, 7)}

    assert {entry.prompt for entry in picks} == {ENTRIES["refusal-1"]["prompt"]}
    assert all(entry.mentions for entry in picks)
    assert len(picks) >= 2


def test_answer_number_leaves_out_counted_faults() -> None:
    assert answer_number(Faults(), 3) == 3
    assert answer_number(Faults(rate_limit=2, error500=1), 4) == 1
    assert answer_number(Faults(or_error=429, or_error_times=2), 5) == 3
    assert answer_number(Faults(or_error_times=2), 1) == 1


def test_consecutive_calls_rotate_the_variants(client: openai.OpenAI) -> None:
    variants = [entry.answer for entry in written_for(CRM["prompt"])]

    answers = [ask(client, MODEL).choices[0].message.content for _ in range(len(variants) + 1)]
    other_model = ask(client, "sim-llama-3.1-70b").choices[0].message.content
    after_429 = f"{MODEL}@rate_limit=1"
    with pytest.raises(openai.RateLimitError):
        ask(client, after_429, extra_headers={"X-Simulator-Key": "429"})
    retried = ask(client, after_429, extra_headers={"X-Simulator-Key": "429"})

    assert answers == [*variants, variants[0]]
    assert other_model == variants[0]
    assert retried.choices[0].message.content == variants[0]


def test_other_prompt_gets_the_closest_answer_never_the_refusal(client: openai.OpenAI) -> None:
    crm = ask(client, MODEL, "Which CRM suits a B2B startup?")
    # Shares most words with refusal-1's prompt, but refusals only answer their exact prompt.
    airline = ask(client, MODEL, "What is the most reliable budget airline in Asia?")

    assert crm.choices[0].message.content == CRM["answer"]
    assert airline.choices[0].message.content != ENTRIES["refusal-1"]["answer"]


def test_last_user_message_with_content_parts_picks_the_answer(client: openai.OpenAI) -> None:
    messages: Any = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Hello"},
        {"role": "user", "content": [{"type": "text", "text": ENTRIES["vpn-1"]["prompt"]}]},
    ]

    completion = client.chat.completions.create(model=MODEL, messages=messages)

    assert completion.choices[0].message.content == ENTRIES["vpn-1"]["answer"]


@pytest.mark.parametrize("entry", CORPUS, ids=[entry["id"] for entry in CORPUS])
def test_json_schema_answer_validates(client: openai.OpenAI, entry: dict[str, Any]) -> None:
    completion = client.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": entry["prompt"]}],
        response_format=ModelAnswer,
    )

    parsed = completion.choices[0].message.parsed
    assert parsed == ModelAnswer(answer=entry["answer"], mentions=entry["mentions"])


def test_json_object_format_answers_plain_markdown(client: openai.OpenAI) -> None:
    completion = ask(client, MODEL, response_format={"type": "json_object"})

    assert completion.choices[0].message.content == CRM["answer"]


def test_latency_delays_the_answer(client: openai.OpenAI) -> None:
    started = time.monotonic()
    completion = ask(client, f"{MODEL}@latency=150")

    assert time.monotonic() - started >= 0.15
    assert completion.choices[0].message.content == CRM["answer"]


def test_rate_limit_answers_429_then_succeeds(client: openai.OpenAI) -> None:
    model = f"{MODEL}@rate_limit=2,retry_after=0.2"
    for _ in range(2):
        with pytest.raises(openai.RateLimitError) as caught:
            ask(client, model)
        assert caught.value.response.headers["retry-after"] == "0.2"
        assert caught.value.response.headers["retry-after-ms"] == "200"
        assert caught.value.code == "rate_limit_exceeded"

    assert ask(client, model).choices[0].message.content == CRM["answer"]


def test_rate_limit_counts_per_call_key(client: openai.OpenAI) -> None:
    model = f"{MODEL}@rate_limit=1"
    for key in ("a", "b"):
        with pytest.raises(openai.RateLimitError):
            ask(client, model, extra_headers={"X-Simulator-Key": key})

    assert ask(client, model, extra_headers={"X-Simulator-Key": "a"}).choices
    with pytest.raises(openai.RateLimitError):
        ask(client, model, prompt="another prompt", extra_headers={"X-Simulator-Key": "a"})


def test_error500_answers_500_then_succeeds(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        ask(client, f"{MODEL}@error500=1")

    assert caught.value.status_code == 500
    assert caught.value.request_id is not None
    assert caught.value.request_id.startswith("sim-")
    assert ask(client, f"{MODEL}@error500=1").choices[0].message.content == CRM["answer"]


def test_hang_times_out_the_client(client: openai.OpenAI) -> None:
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        ask(client.with_options(timeout=1), f"{MODEL}@hang")

    assert 1 <= time.monotonic() - started < 3


def test_invalid_json_breaks_only_structured_answers(client: openai.OpenAI) -> None:
    broken = ask(client, f"{MODEL}@invalid_json", response_format=SCHEMA_FORMAT)
    plain = ask(client, f"{MODEL}@invalid_json", extra_headers={"X-Simulator-Key": "plain"})

    content = broken.choices[0].message.content
    assert content is not None
    assert content.startswith('{"answer": "For a 10-person')
    with pytest.raises(json.JSONDecodeError):
        json.loads(content)
    assert broken.choices[0].finish_reason == "stop"
    assert plain.choices[0].message.content == CRM["answer"]


def test_fenced_rejects_json_schema_and_fences_plain_answers(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, f"{MODEL}@fenced", response_format=SCHEMA_FORMAT)
    fenced = ask(client, f"{MODEL}@fenced").choices[0].message.content

    assert caught.value.param == "response_format"
    assert "json_schema" in caught.value.message
    assert fenced is not None
    assert fenced.startswith("```json\n")
    assert fenced.endswith("\n```")
    inner = ModelAnswer.model_validate_json(fenced.removeprefix("```json\n").removesuffix("\n```"))
    assert inner == ModelAnswer(answer=CRM["answer"], mentions=CRM["mentions"])


def test_no_schema_rejects_json_schema_and_answers_plain_markdown(
    client: openai.OpenAI,
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, f"{MODEL}@no_schema", response_format=SCHEMA_FORMAT)

    assert caught.value.param == "response_format"
    assert ask(client, f"{MODEL}@no_schema").choices[0].message.content == CRM["answer"]


def test_refusal_sets_message_refusal(client: openai.OpenAI) -> None:
    completion = client.chat.completions.parse(
        model=f"{MODEL}@refusal",
        messages=[{"role": "user", "content": CRM["prompt"]}],
        response_format=ModelAnswer,
    )

    message = completion.choices[0].message
    assert message.content is None
    assert message.parsed is None
    assert message.refusal == REFUSAL_TEXT
    assert completion.choices[0].finish_reason == "stop"


def test_length_truncates_content(client: openai.OpenAI) -> None:
    structured = ask(client, f"{MODEL}@length", response_format=SCHEMA_FORMAT).choices[0]
    plain = ask(client, f"{MODEL}@length", extra_headers={"X-Simulator-Key": "plain"}).choices[0]

    assert structured.finish_reason == plain.finish_reason == "length"
    assert structured.message.content == full_json(CRM)[:30]
    assert plain.message.content == CRM["answer"][:200]


def test_length_makes_the_sdk_parse_helper_raise(client: openai.OpenAI) -> None:
    with pytest.raises(openai.LengthFinishReasonError):
        client.chat.completions.parse(
            model=f"{MODEL}@length",
            messages=[{"role": "user", "content": CRM["prompt"]}],
            response_format=ModelAnswer,
        )


def test_blank_answers_empty_content(client: openai.OpenAI) -> None:
    completion = ask(client, f"{MODEL}@blank", response_format=SCHEMA_FORMAT)

    assert completion.choices[0].message.content == ""
    assert completion.choices[0].finish_reason == "stop"


def test_or_error_is_http_200_with_an_error_body(client: openai.OpenAI) -> None:
    model = f"{MODEL}@or_error=429,or_error_times=2"
    for _ in range(2):
        completion = ask(client, model)
        # The SDK raises nothing: ChatCompletion allows extra fields and is built without
        # validation, so `choices` stays None and the body's "error" lands in model_extra.
        assert completion.choices is None
        assert completion.model_extra is not None
        assert completion.model_extra["error"]["code"] == 429
        assert completion.model_extra["error"]["metadata"]["provider_name"] == "SimProvider"

    assert ask(client, model).choices[0].message.content == CRM["answer"]


def test_or_error_400_names_json_schema(client: openai.OpenAI) -> None:
    completion = ask(client, f"{MODEL}@or_error=400", response_format=SCHEMA_FORMAT)

    assert completion.model_extra is not None
    error = completion.model_extra["error"]
    assert error["code"] == 400
    assert "json_schema" in error["message"]


def test_status_faults_map_to_sdk_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.AuthenticationError) as unauthorized:
        ask(client, f"{MODEL}@status=401")
    with pytest.raises(openai.NotFoundError) as missing:
        ask(client, f"{MODEL}@status=404")
    with pytest.raises(openai.APIStatusError) as unpaid:
        ask(client, f"{MODEL}@status=402")

    assert unauthorized.value.code == "invalid_api_key"
    assert missing.value.code == "model_not_found"
    assert unpaid.value.status_code == 402
    assert "Insufficient credits" in unpaid.value.message


def test_api_key_is_checked_when_configured() -> None:
    with running_simulator(api_key="right") as sim:
        url = sim.base_url
        with openai.OpenAI(base_url=url, api_key="wrong", max_retries=0) as wrong:
            with pytest.raises(openai.AuthenticationError):
                ask(wrong, MODEL)
            with pytest.raises(openai.AuthenticationError):
                wrong.models.list()
        with openai.OpenAI(base_url=url, api_key="right", max_retries=0) as right:
            assert ask(right, MODEL).choices[0].message.content == CRM["answer"]


def test_header_faults_add_to_and_override_the_model_name(client: openai.OpenAI) -> None:
    started = time.monotonic()
    completion = ask(
        client, f"{MODEL}@latency=5000", extra_headers={"X-Simulator-Faults": "latency=0,blank"}
    )

    assert time.monotonic() - started < 2
    assert completion.choices[0].message.content == ""
    assert completion.model == f"{MODEL}@latency=5000"


@pytest.mark.parametrize(
    ("model", "headers", "named"),
    [
        (f"{MODEL}@explode", {}, "explode"),
        (MODEL, {"X-Simulator-Faults": "blank,melt=3"}, "melt"),
        (f"{MODEL}@latency=soon", {}, "latency"),
    ],
)
def test_bad_faults_answer_400(
    client: openai.OpenAI, model: str, headers: dict[str, str], named: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, model, extra_headers=headers)

    assert named in caught.value.message


def test_stream_is_rejected(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, MODEL, stream=True)

    assert caught.value.param == "stream"


def raw_post(sim: SimulatorServer, path: str, body: bytes) -> tuple[int, dict[str, Any], str]:
    """POST ``body`` without the SDK; returns status, JSON body and x-request-id."""
    connection = http.client.HTTPConnection(sim.address.host, sim.address.port, timeout=5)
    try:
        connection.request("POST", path, body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read()), response.headers["x-request-id"]
    finally:
        connection.close()


def test_unknown_path_and_bad_json_get_openai_error_bodies(sim: SimulatorServer) -> None:
    missing = raw_post(sim, "/v1/embeddings", b"{}")
    broken = raw_post(sim, "/v1/chat/completions", b"{not json")

    assert missing[0] == 404
    assert broken[0] == 400
    for _, body, request_id in (missing, broken):
        assert body["error"]["type"] == "invalid_request_error"
        assert body["error"]["code"] is None
        assert request_id.startswith("sim-")


def test_request_count_and_reset_counters(sim: SimulatorServer, client: openai.OpenAI) -> None:
    model = f"{MODEL}@rate_limit=1"
    with pytest.raises(openai.RateLimitError):
        ask(client, model)
    assert sim.request_count == 1

    sim.reset_counters()

    assert sim.request_count == 0
    with pytest.raises(openai.RateLimitError):
        ask(client, model)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.subprocess
def test_serve_logs_its_url_and_stops_on_sigterm() -> None:
    port = free_port()
    script = (
        "import logging; from runner.simulator.server import serve; "
        "logging.basicConfig(level=logging.INFO, format='%(action)s %(message)s'); "
        f"serve('127.0.0.1', {port})"
    )
    root = Path(__file__).parent.parent
    with subprocess.Popen(
        [sys.executable, "-c", script], cwd=root, stderr=subprocess.PIPE, text=True
    ) as process:
        assert process.stderr is not None
        first_line = process.stderr.readline()
        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sim") as client:
            assert len(client.models.list().data) == 3
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0

    assert first_line.startswith("simulator_started ")
    assert f"http://127.0.0.1:{port}/v1" in first_line
