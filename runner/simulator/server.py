"""An OpenAI-compatible chat-completions server on loopback: the demo's and the tests' model.

This module is the HTTP layer and the public API; answers come from `runner.simulator.answers`,
faults (chosen per request by the model name ``sim-gpt-4o-mini@rate_limit=2`` or a header) from
`runner.simulator.faults`. Clients reach it with the real openai SDK:
``openai.OpenAI(base_url=server.base_url, api_key="sim")``.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import random
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any, assert_never
from uuid import uuid4

from db.errors import InvalidInput
from runner.simulator.answers import (
    SIM_USD_PER_MTOK,
    ChatRequest,
    answer_reply,
    load_answer_bank,
    parse_chat_request,
)
from runner.simulator.faults import (
    FAULTS_HEADER,
    Faults,
    Reply,
    build_faults,
    counted_fault,
    error_reply,
    no_endpoints_reply,
    or_error_reply,
    quota_reply,
    rate_limit_reply,
    region_reply,
    server_error_reply,
    spend_wait_reply,
    split_model,
    status_reply,
    unsupported_schema_reply,
)
from runner.simulator.limits import ProviderLimits

logger = logging.getLogger(__name__)

SIMULATED_MODELS = ("sim-gpt-4o-mini", "sim-claude-3.5-sonnet", "sim-llama-3.1-70b")
KEY_HEADER = "X-Simulator-Key"  # extra part of the call key, to keep tests' counters apart
HANG_LIMIT_S = 600.0  # a `hang` request gives up after this many seconds
HANG_POLL_S = 0.05  # how often a `hang` request checks for shutdown or a gone client
SERVE_POLL_S = 0.05  # serve_forever's poll interval: bounds how long shutdown() waits
IDLE_TIMEOUT_S = 30.0  # an idle keep-alive connection is closed after this (httpx keeps 5 s)

CAPTURE_LIMIT = 200  # requests kept for `SimulatorServer.captured`
CallKey = tuple[str, str, str]  # (model name without faults, last user message, X-Simulator-Key)


def models_body() -> dict[str, Any]:
    """The ``GET /v1/models`` list."""
    data = [
        {"id": model, "object": "model", "created": 0, "owned_by": "promptbatch-simulator"}
        for model in SIMULATED_MODELS
    ]
    return {"object": "list", "data": data}


# Chat-completions body parameters OpenAI's API takes (its API reference); the "openai" style
# refuses others with a 400, as OpenAI does ("Unrecognized request argument supplied").
OPENAI_PARAMS = frozenset(
    [
        "model",
        "messages",
        "max_completion_tokens",
        "max_tokens",
        "temperature",
        "seed",
        "response_format",
        "stream",
        "stream_options",
        "top_p",
        "n",
        "stop",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "user",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "service_tier",
        "store",
        "metadata",
        "reasoning_effort",
        "modalities",
        "audio",
        "prediction",
        "web_search_options",
        "verbosity",
        "prompt_cache_key",
        "safety_identifier",
    ]
)


def rejection_reply(request: ChatRequest, faults: Faults) -> Reply | None:
    """The 4xx for a request the simulated provider refuses to take, if any."""
    if request.stream:
        message = "Streaming is not supported by the simulator."
        return error_reply(400, message, "invalid_request_error", param="stream")
    unknown = sorted(request.params - OPENAI_PARAMS) if faults.style == "openai" else []
    if unknown:
        message = f"Unrecognized request argument supplied: {unknown[0]}"
        return error_reply(400, message, "invalid_request_error")
    structured = request.response_format == "json_schema"
    if structured and faults.rejects_json_schema:
        return unsupported_schema_reply()
    if structured and faults.no_endpoints and request.require_parameters:
        return no_endpoints_reply()
    return None


def account_reply(faults: Faults, model: str) -> Reply | None:
    """The reply of an account-level fault (forced status, spent quota, spend limit), if any."""
    if faults.status is not None:
        return status_reply(faults.status, model)
    if faults.quota:
        return quota_reply()
    if faults.region:
        return region_reply()
    if faults.spend_wait_s is not None:
        return spend_wait_reply(faults.spend_wait_s)
    return None


def style_headers(style: str) -> tuple[tuple[str, str], ...]:
    """Per-style id and limit headers: OpenAI's x-request-id and x-ratelimit-* ("Rate limits"),
    LiteLLM's x-litellm-call-id, none for OpenRouter (its id is the body's), ours for "sim"."""
    if style == "openai":
        return (
            ("x-request-id", f"req_{uuid4().hex}"),
            ("openai-processing-ms", "5"),
            ("x-ratelimit-limit-requests", "10000"),
            ("x-ratelimit-remaining-requests", "9999"),
            ("x-ratelimit-reset-requests", "6ms"),
            ("x-ratelimit-limit-tokens", "30000000"),
            ("x-ratelimit-remaining-tokens", "29999000"),
            ("x-ratelimit-reset-tokens", "2ms"),
        )
    if style == "litellm":
        return (("x-litellm-call-id", str(uuid4())),)
    if style == "openrouter":
        return ()
    return (("x-request-id", f"sim-{uuid4().hex}"),)


def latency_seconds(faults: Faults) -> float:
    """The answer's latency: latency_ms, or lognormal around it (median latency_ms, sigma
    `jitter`, at most 10x the median) as real model latencies spread, with a long tail."""
    median = faults.latency_ms / 1000
    if not faults.jitter or not median:
        return median
    return min(random.lognormvariate(math.log(median), faults.jitter), 10 * median)


def reply_cost(reply: Reply) -> float:
    """USD of an answer's usage at SIM_USD_PER_MTOK (what credits are charged)."""
    usage = reply.body.get("usage") if reply.status == 200 else None
    if not isinstance(usage, dict):
        return 0.0
    tokens = int(usage.get("prompt_tokens") or 0) + int(usage.get("completion_tokens") or 0)
    return tokens * SIM_USD_PER_MTOK / 1e6


def _is_limit_header(name: str) -> bool:
    return name.lower().startswith("x-ratelimit-")


def counted_reply(request: ChatRequest, faults: Faults, call_number: int) -> Reply | None:
    """The 429, 500 or 200-with-error the ``call_number``-th call of a call key gets, if any."""
    match counted_fault(faults, call_number):
        case None:
            return None
        case "rate_limit":
            return rate_limit_reply(faults)
        case "error500":
            return server_error_reply()
        case "or_error":
            code = faults.or_error or 0  # counted_fault only says "or_error" when it is set
            return or_error_reply(code, request.model, f"gen-sim-{uuid4().hex}", int(time.time()))
        case unreachable:
            assert_never(unreachable)


def not_found_reply(method: str, path: str) -> Reply:
    """HTTP 404 for a path the simulator does not serve."""
    message = f"Unknown request URL: {method} {path}. (simulator)"
    return error_reply(404, message, "invalid_request_error")


@dataclass(frozen=True)
class CapturedRequest:
    """A request as received: path, headers (as sent, names case-preserved), parsed JSON body."""

    path: str
    headers: dict[str, str]
    body: Any

    def header(self, name: str) -> str | None:
        """A header's value by case-insensitive name."""
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)


@dataclass(frozen=True)
class SimulatorAddress:
    """Where a simulator listens."""

    host: str
    port: int

    @property
    def base_url(self) -> str:
        """The openai client's ``base_url``, e.g. ``http://127.0.0.1:8765/v1``."""
        return f"http://{self.host}:{self.port}/v1"


class SimulatorServer(ThreadingHTTPServer):
    """The HTTP server; holds the per-call-key counters shared by its handler threads."""

    daemon_threads = True
    allow_reuse_address = True
    # listen() backlog (the kernel caps it at net.core.somaxconn). socketserver's default of 5
    # drops the SYNs of a runner opening its connections at once, and each dropped one costs its
    # call a 1 s retransmit (bench/ item 3: 64, then 1,024 calls starting together).
    request_queue_size = 4096

    def __init__(
        self, address: tuple[str, int], api_key: str | None = None, *, reuse_port: bool = False
    ) -> None:
        self.reuse_port = reuse_port  # several processes serve one port (`serve(processes=N)`)
        super().__init__(address, SimulatorHandler)
        self.api_key = api_key
        self.bank = load_answer_bank()
        self.stopping = threading.Event()  # set on shutdown: `hang` handlers return
        self._lock = threading.Lock()
        self._calls: dict[CallKey, int] = {}
        self._request_count = 0
        self._answering = 0  # chat calls being answered now (after admission, before the reply)
        self._peak_answering = 0
        self._paid = 0  # chat calls answered 200: what a provider bills
        self._undelivered = 0  # of those, answered to a client already gone (killed mid-call)
        self._captured: deque[CapturedRequest] = deque(maxlen=CAPTURE_LIMIT)
        self.limits = ProviderLimits()  # the provider's rate limits, credits and revocations

    def server_bind(self) -> None:
        if self.reuse_port:  # the kernel spreads new connections over every process's socket
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    @property
    def address(self) -> SimulatorAddress:
        """The bound host and port (the real port when asked for port 0)."""
        host, port = self.server_address[:2]
        return SimulatorAddress(str(host), int(port))

    @property
    def base_url(self) -> str:
        """The openai client's ``base_url``."""
        return self.address.base_url

    @property
    def request_count(self) -> int:
        """HTTP requests received since start or the last `reset_counters`."""
        with self._lock:
            return self._request_count

    @property
    def call_counts(self) -> dict[CallKey, int]:
        """Answered chat calls by (model, last user message, X-Simulator-Key), a copy."""
        with self._lock:
            return dict(self._calls)

    def capture(self, path: str, headers: dict[str, str], body: bytes) -> None:
        """Keep a received request (the last CAPTURE_LIMIT) for tests of what clients send."""
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        with self._lock:
            self._captured.append(CapturedRequest(path, headers, parsed))

    @property
    def captured(self) -> list[CapturedRequest]:
        """The last CAPTURE_LIMIT POSTs received, oldest first (a copy)."""
        with self._lock:
            return list(self._captured)

    def count_request(self) -> None:
        """Count one received HTTP request."""
        with self._lock:
            self._request_count += 1

    @property
    def peak_answering(self) -> int:
        """The most chat calls answered at once (in their latency) since the last reset: how
        many calls a client really had in flight."""
        with self._lock:
            return self._peak_answering

    @contextmanager
    def answering(self) -> Iterator[None]:
        """Count one chat call as being answered for the duration of the block."""
        with self._lock:
            self._answering += 1
            self._peak_answering = max(self._peak_answering, self._answering)
        try:
            yield
        finally:
            with self._lock:
                self._answering -= 1

    @property
    def paid_calls(self) -> tuple[int, int]:
        """(chat calls answered 200, of those the ones whose client had hung up before the
        answer): a provider bills both, since the answer was generated (bench/soak.py)."""
        with self._lock:
            return self._paid, self._undelivered

    def count_paid(self, *, delivered: bool) -> None:
        """Count one chat call answered 200."""
        with self._lock:
            self._paid += 1
            self._undelivered += not delivered

    def next_call_number(self, key: CallKey) -> int:
        """Count a call for ``key`` and return its number, starting at 1."""
        with self._lock:
            self._calls[key] = self._calls.get(key, 0) + 1
            return self._calls[key]

    def reset_counters(self) -> None:
        """Forget all call counts, the request count, captures and the limits' state."""
        with self._lock:
            self._calls.clear()
            self._request_count = 0
            self._peak_answering = self._answering
            self._paid = self._undelivered = 0
            self._captured.clear()
            self.limits = ProviderLimits()

    def shutdown(self) -> None:
        """Stop serve_forever and release `hang` handlers."""
        self.stopping.set()
        super().shutdown()

    def server_close(self) -> None:
        """Close the socket and release `hang` handlers."""
        self.stopping.set()
        super().server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log a handler crash instead of printing it to stderr; a client that hung up before its
        answer (a killed runner, a cut deadline) is no crash."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            logger.debug(
                "client %s hung up before its answer",
                client_address,
                extra={"action": "simulator_client_gone"},
            )
            return
        logger.warning(
            "Simulator handler failed for %s",
            client_address,
            exc_info=True,
            extra={"action": "simulator_handler_failed"},
        )


class SimulatorHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive, as the providers' APIs: a client reuses its connections, so a
    call costs neither side a TCP connect nor the server a new thread (a new connection per call
    was a tenth of the runner's CPU in bench/ item 3). Handler threads are daemons, and an idle
    connection is closed after IDLE_TIMEOUT_S, so shutdown never waits on one."""

    server: SimulatorServer
    server_version = "PromptBatchSimulator/0.1"
    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT_S
    # Headers and body go out in two writes: with Nagle on, a kept-alive connection holds the
    # body until the client's delayed ACK, adding ~40 ms to every call.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        """``GET /v1/models``."""
        self.server.count_request()
        if self.path.rstrip("/") != "/v1/models":
            self._send(not_found_reply("GET", self.path))
        elif not self._authorized():
            self._send(status_reply(401, ""))
        else:
            self._send(Reply(200, models_body()))

    def do_POST(self) -> None:
        """``POST /v1/chat/completions``."""
        self.server.count_request()
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send(not_found_reply("POST", self.path))
            return
        try:
            raw = self._read_body()
            self.server.capture(self.path, dict(self.headers.items()), raw)
            request = parse_chat_request(raw)
            faults = build_faults(split_model(request.model)[1], self.headers[FAULTS_HEADER] or "")
        except InvalidInput as exc:
            self._send(error_reply(400, str(exc), "invalid_request_error"))
            return
        self._answer(request, faults)

    def _answer(self, request: ChatRequest, faults: Faults) -> None:
        if not self._authorized():
            self._send(status_reply(401, request.model), faults)
            return
        refused = self.server.limits.admit(
            request.model, faults, request.prompt_chars, request.max_tokens
        )
        if refused is not None:  # a limit answers at once, before any generation
            self._send(refused, faults)
            return
        with self.server.answering():
            time.sleep(latency_seconds(faults))
        if faults.hang:
            self._hang()
            return
        reply = self._reply(request, faults)
        if reply.status == 200:
            self.server.count_paid(delivered=not self._client_gone())
        self.server.limits.spend(request.model, reply_cost(reply))
        limited = self.server.limits.headers(request.model)
        self._send(replace(reply, headers=reply.headers + limited), faults)

    def _reply(self, request: ChatRequest, faults: Faults) -> Reply:
        refused = account_reply(faults, request.model) or rejection_reply(request, faults)
        if refused is not None:
            return refused
        key = (request.model_name, request.last_user_text, self.headers[KEY_HEADER] or "")
        call_number = self.server.next_call_number(key)
        counted = counted_reply(request, faults, call_number)
        return counted or answer_reply(request, faults, self.server.bank, call_number)

    def _authorized(self) -> bool:
        expected = self.server.api_key
        if expected is None:
            return True
        given = self.headers["Authorization"] or ""
        return hmac.compare_digest(given.encode(), f"Bearer {expected}".encode())

    def _read_body(self) -> bytes:
        try:
            length = int(self.headers["Content-Length"] or 0)
        except ValueError as exc:
            raise InvalidInput("Invalid Content-Length header.") from exc
        return self.rfile.read(length)

    def _hang(self) -> None:
        """Answer nothing until shutdown, client disconnect or HANG_LIMIT_S."""
        logger.debug("Simulator hanging", extra={"action": "simulator_hang"})
        deadline = time.monotonic() + HANG_LIMIT_S
        while time.monotonic() < deadline and not self._client_gone():
            if self.server.stopping.wait(HANG_POLL_S):
                break
        self.close_connection = True

    def _client_gone(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _send(self, reply: Reply, faults: Faults | None = None) -> None:
        data = json.dumps(reply.body).encode()
        style = faults.style if faults is not None else "sim"
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        own = style_headers(style)
        if any(_is_limit_header(name) for name, _ in reply.headers):  # the real limits win
            own = tuple(h for h in own if not _is_limit_header(h[0]))
        for name, value in (*own, *reply.headers):
            self.send_header(name, value)
        self.end_headers()
        if faults is not None and faults.trickle_ms is not None:
            self._trickle(data, faults.trickle_ms / 1000)
        else:
            self.wfile.write(data)
        logger.debug(
            "Simulator answered HTTP %s",
            reply.status,
            extra={"action": "simulator_replied", "status": reply.status},
        )

    def _trickle(self, data: bytes, interval: float) -> None:
        """Send `data` one byte every `interval` seconds, until shutdown or the client goes."""
        try:
            for i in range(len(data)):
                self.wfile.write(data[i : i + 1])
                self.wfile.flush()
                if self.server.stopping.wait(interval):
                    break
        except OSError:
            pass  # the client gave up (its deadline): what a trickle test expects
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        """Send the access log to DEBUG instead of stderr."""
        logger.debug(
            "%s %s", self.address_string(), format % args, extra={"action": "simulator_http"}
        )


def make_server(
    host: str = "127.0.0.1", port: int = 0, api_key: str | None = None, *, reuse_port: bool = False
) -> SimulatorServer:
    """A bound, not yet serving simulator; port 0 picks a free port; ``api_key`` enables auth."""
    return SimulatorServer((host, port), api_key, reuse_port=reuse_port)


@contextmanager
def _shutdown_on_sigterm(server: SimulatorServer) -> Iterator[None]:
    """Make SIGTERM stop ``server.serve_forever`` (only the main thread can take signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle_sigterm(signum: int, frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever, which runs in this very thread: call it elsewhere.
        threading.Thread(target=server.shutdown, daemon=True).start()

    previous = signal.signal(signal.SIGTERM, handle_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def serve(
    host: str,
    port: int,
    api_key: str | None = None,
    *,
    processes: int = 1,
    reuse_port: bool = False,
) -> None:
    """Serve until KeyboardInterrupt or SIGTERM (blocking; for `promptbatch simulator`).

    processes > 1: this process and processes - 1 children serve one port (SO_REUSEPORT, the
    kernel spreading connections), so the simulator is not what a benchmark of many calls in
    flight measures; counters, captured requests and rate limits are then per process."""
    if processes > 1 and port == 0:
        raise InvalidInput("several simulator processes need a fixed --port")
    with (
        _children(host, port, processes - 1),
        make_server(host, port, api_key, reuse_port=reuse_port or processes > 1) as server,
        _shutdown_on_sigterm(server),
    ):
        logger.info(
            "Simulator serving at %s",
            server.base_url,
            extra={"action": "simulator_started", "base_url": server.base_url},
        )
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            logger.info("Simulator interrupted", extra={"action": "simulator_interrupted"})
    logger.info("Simulator stopped", extra={"action": "simulator_stopped"})


@contextmanager
def _children(host: str, port: int, count: int) -> Iterator[None]:
    """`count` more `promptbatch simulator --reuse-port` processes on (host, port), stopped when
    the block ends."""
    command = [sys.executable, "-m", "runner", "simulator", "--host", host, "--port", str(port)]
    children = [subprocess.Popen([*command, "--reuse-port"]) for _ in range(count)]
    try:
        yield
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.wait(10)


@contextmanager
def running_simulator(
    host: str = "127.0.0.1", port: int = 0, api_key: str | None = None
) -> Iterator[SimulatorServer]:
    """Serve in a daemon thread for the duration of the block; yields the server."""
    with make_server(host, port, api_key) as server:
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": SERVE_POLL_S},
            name="simulator",
            daemon=True,
        )
        thread.start()
        try:
            yield server
        finally:
            server.shutdown()
            thread.join(timeout=5)
