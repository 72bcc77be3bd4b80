"""The console in a real browser: `promptbatch console` as a subprocess, headless Chromium driven
by Playwright (Debian's /usr/bin/chromium). Saves a screenshot of every page. Each page is waited
for as a user waits for it: until its own content shows and Streamlit has finished running."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from db.engine import make_engine
from db.migrate import upgrade
from tests.test_console_helpers import seed, statuses

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("PROMPTBATCH_CHROMIUM", "/usr/bin/chromium")
REQUIRE = os.environ.get("PROMPTBATCH_TEST_REQUIRE_BROWSER") == "1"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# Each page: its path, and texts that show only once the page has drawn its last section.
PAGES = {
    "overview": ("", ["Progress by model", "Last 14 batches"]),
    "jobs": ("jobs", ["Jobs", "or job id"]),
    "failures": ("failures", ["Failures", "By error", "Failed jobs, newest first"]),
    "prompts_models": ("prompts_models", ["Prompts & models", "Models"]),
    "mentions": ("mentions", ["Mentions", "Share of voice: the brand's mentions"]),
    "workers": ("workers", ["Workers", "Show stopped workers"]),
}
RENDER_TIMEOUT_MS = 60_000  # a bound for a loaded machine, not a wait: each check ends on sight


def _missing() -> str | None:
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed"
    return None


def _require_browser() -> None:
    """Skip without Chromium or Playwright; fail instead under PROMPTBATCH_TEST_REQUIRE_BROWSER."""
    missing = _missing()
    if missing:
        if REQUIRE:
            pytest.fail(f"PROMPTBATCH_TEST_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the console exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"the console did not answer at {url} within {timeout} s")


def _start_console(db_url: str, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DATABASE_URL": db_url, "STREAMLIT_SERVER_FILE_WATCHER_TYPE": "none"}
    env.pop("CONSOLE_PASSWORD", None)
    env.pop("CONSOLE_READ_ONLY", None)
    return subprocess.Popen(
        [sys.executable, "-m", "runner", "console", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _processes_mentioning(needle: str) -> list[int]:
    """Pids whose command line contains `needle` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # not a process, or it ended meanwhile
            continue
        if entry.name.isdigit() and needle in cmdline:
            found.append(int(entry.name))
    return found


@pytest.fixture
def console(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A seeded SQLite database and `promptbatch console` serving it; yields (url, db url)."""
    db_url = f"sqlite:///{tmp_path / 'console.db'}"
    engine = make_engine(db_url)
    upgrade(engine)
    seed(engine)
    engine.dispose()
    port = _free_port()
    proc = _start_console(db_url, port)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        yield url, db_url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_requeue_a_failed_job_in_a_real_browser(console, tmp_path):
    _require_browser()
    from playwright.sync_api import expect, sync_playwright

    url, db_url = console
    shots = Path(os.environ.get("PROMPTBATCH_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    engine = make_engine(db_url)
    failed = sorted(i for i, s in statuses(engine).items() if s == "failed")
    target = failed[0]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.goto(url)
        for name, (path, texts) in PAGES.items():
            page.goto(f"{url}/{path}")
            for text in texts:
                expect(page.get_by_text(text).first).to_be_visible(timeout=RENDER_TIMEOUT_MS)
            if name in ("overview", "mentions"):
                expect(page.locator(".js-plotly-plot").first).to_be_visible()
            expect(page.locator("[data-testid='stException']")).to_have_count(0)
            page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
        page.goto(f"{url}/jobs")
        box = page.get_by_label("or job id")
        box.fill(str(target))
        box.press("Enter")
        page.get_by_role("button", name=f"Re-queue job #{target}").click()
        page.get_by_role("button", name="Confirm: re-queue 1").click()
        expect(page.get_by_text("1 re-queued").first).to_be_visible(timeout=RENDER_TIMEOUT_MS)
        page.screenshot(path=str(shots / "requeued.png"), full_page=True)
        browser.close()
    after = statuses(engine)
    engine.dispose()
    assert after[target] == "queued"
    assert [after[i] for i in failed[1:]] == ["failed"] * (len(failed) - 1)


def test_console_stops_on_sigterm_and_leaves_no_process(tmp_path):
    """`promptbatch console` is Streamlit itself (exec), so SIGTERM (docker stop) stops it and
    nothing keeps serving; a Streamlit child used to outlive its terminated parent."""
    db_url = f"sqlite:///{tmp_path / 'console.db'}"
    engine = make_engine(db_url)
    upgrade(engine)
    engine.dispose()
    port = _free_port()
    proc = _start_console(db_url, port)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) is not None
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _processes_mentioning(f"--server.port {port}") == []


EVIL_BRAND = '<a href="https://evil.test/x">EvilCRM</a><b style="font-size:80px">Big</b>'


def test_markup_a_model_or_a_user_wrote_shows_as_text(console):
    """Issue 12: a brand name a model invented with markup in it was rendered by Plotly as a live
    outside link and restyled text in the Mentions charts. With such a brand in an answer, plus
    the seed's hostile prompt (<script>, Markdown), answer and error (<b>), no page has an
    element the data made: no link to evil.test, no <b> or <script> from it; the markup shows
    as its own text in the charts."""
    _require_browser()
    from playwright.sync_api import expect, sync_playwright

    from db.models import utcnow
    from tests import factories as f
    from tests.test_console_helpers import answer, claim_all

    url, db_url = console
    engine = make_engine(db_url)
    waiting = [i for i, status in statuses(engine).items() if status == "queued"]
    f.set_jobs(engine, waiting, scheduled_for=utcnow() - timedelta(minutes=1))  # due now
    (queued,) = claim_all(engine)  # the seed's one queued job answers with the evil brand
    f.complete_all(engine, [f.completion(queued, answer((EVIL_BRAND,)), 0.0005)])
    engine.dispose()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        for path, ready in (("mentions", "Share of voice: the brand's mentions"), ("", None)):
            page.goto(f"{url}/{path}")
            if ready:
                expect(page.get_by_text(ready).first).to_be_visible(timeout=RENDER_TIMEOUT_MS)
            expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=RENDER_TIMEOUT_MS)
            expect(page.locator("a[href*='evil.test']")).to_have_count(0)
            expect(page.locator("b", has_text="Big")).to_have_count(0)
        page.goto(f"{url}/mentions")
        shown = page.locator(".js-plotly-plot text", has_text="EvilCRM").first
        expect(shown).to_be_visible(timeout=RENDER_TIMEOUT_MS)
        assert "<a href" in shown.text_content()  # the markup as text, not as an element
        for name in ("jobs", "failures", "prompts_models"):
            path, texts = PAGES[name]
            page.goto(f"{url}/{path}")
            for text in texts:  # drawn to its last section before counting what is not there
                expect(page.get_by_text(text).first).to_be_visible(timeout=RENDER_TIMEOUT_MS)
            expect(page.locator("[data-testid='stException']")).to_have_count(0)
            expect(page.locator("script", has_text="alert")).to_have_count(0)
            expect(page.locator("b", has_text="x")).to_have_count(0)
        browser.close()
