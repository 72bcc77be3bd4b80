"""C22: PostgreSQL restarts or drops the console's sessions while the console is open.

The console reaches PostgreSQL through a TCP proxy this test controls: closing the proxy is an
outage seen from the console, reopening it is the server coming back.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest
import streamlit as st
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.test_console_helpers import app, seed


class Proxy:
    """A TCP forwarder to PostgreSQL that can be taken down and brought back on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        if self._listener is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone would not (Linux).
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def proxy(db_url: str) -> Iterator[Proxy]:
    if not db_url.startswith("postgresql"):
        pytest.skip("C22 is about a PostgreSQL server going away")
    url = make_url(db_url)
    p = Proxy((url.host or "127.0.0.1", url.port or 5432))
    p.start()
    yield p
    p.stop()


def banners(at) -> list[str]:
    return [e.value for e in at.error]


def test_c22_console_survives_terminated_sessions_and_an_outage(monkeypatch, db_url, engine, proxy):
    """C22: sessions terminated -> the next refresh shows data with no banner; server gone ->
    one clear banner, no traceback; server back -> data again, without restarting the console."""
    seeded = seed(engine)
    url = make_url(db_url).set(port=proxy.port)
    query = dict(url.query)
    query["application_name"] = "console_c22"
    console_url = url.set(query=query).render_as_string(hide_password=False)
    at = app(monkeypatch, console_url)
    at.run()
    assert at.metric and not banners(at) and not at.exception

    admin = create_engine(str(make_url(db_url).set(query={})), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        killed = conn.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM "
                "pg_stat_activity WHERE application_name = 'console_c22'"
            )
        )
        assert killed.scalar_one() >= 1
    admin.dispose()
    next(b for b in at.button if b.label == "Refresh now").click().run()
    assert at.metric and not banners(at) and not at.exception  # pool_pre_ping reconnected

    proxy.stop()
    next(b for b in at.button if b.label == "Refresh now").click().run()
    assert not at.exception
    assert len(banners(at)) == 1 and "Database unavailable" in banners(at)[0]
    assert not at.metric

    proxy.start()
    next(b for b in at.button if b.label == "Refresh now").click().run()
    assert not at.exception and not banners(at)
    shown = {m.label: m.value for m in at.metric}
    assert shown["Failed"] == str(len(seeded.failed))
    st.cache_resource.clear()
