"""One asyncio event loop per worker process, on its own daemon thread, for the model calls.

The worker's job coroutines run on it (`CallLoop.submit`); a thread may also hand it one call and
wait (`CallLoop.run`: `models check`, tools). On the loop a call is
an `openai.AsyncOpenAI` request under `asyncio.timeout`: the wall-clock deadline covers connect,
wait and read, and its cancellation closes the connection, so a server that trickles one byte a
second cannot hold a slot past it (a per-read timeout, which is all a blocking socket has, could).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

try:  # libuv's loop: 5% less CPU per job than asyncio's own at 1,024 in flight (bench/ item 3)
    from uvloop import new_event_loop as _new_event_loop
except ImportError:  # not on Windows: asyncio's own
    from asyncio import new_event_loop as _new_event_loop  # type: ignore[assignment]

T = TypeVar("T")
STOP_TIMEOUT_SECONDS = 5.0  # close() waits this long for the loop thread to end


class CallLoop:
    """A lazily started event loop thread; `run` is safe from any thread but the loop's own."""

    def __init__(self, name: str = "model-calls") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the loop and return its result (or raise its exception)."""
        return self.submit(coro).result()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        """Schedule `coro` as a task on the loop; its future (cancel() cancels the task)."""
        return asyncio.run_coroutine_threadsafe(coro, self._started())

    def call_soon(self, callback: Callable[[], object]) -> None:
        """Run `callback` on the loop thread, between two steps of its tasks."""
        self._started().call_soon_threadsafe(callback)

    def close(self) -> None:
        """Stop the loop and join its thread; `run` starts a new one afterwards."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(STOP_TIMEOUT_SECONDS)
        if not thread.is_alive():
            loop.close()

    def _started(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                self._loop = _new_event_loop()
                self._thread = threading.Thread(
                    target=self._loop.run_forever, name=self._name, daemon=True
                )
                self._thread.start()
            return self._loop
