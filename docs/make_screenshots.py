"""Re-make docs/screenshots/*.png from a realistic database: the demo batch plus a flaky model.

Run from the repository root: `.venv/bin/python docs/make_screenshots.py` (needs Debian's chromium
and the playwright package, as the browser test does). Uses a temporary SQLite database; writes
only PNGs.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "docs" / "screenshots"
PAGES = {
    "overview": "",
    "jobs": "jobs",
    "failures": "failures",
    "prompts_models": "prompts_models",
    "mentions": "mentions",
    "workers": "workers",
}
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(env: dict[str, str], *args: str) -> None:
    subprocess.run([sys.executable, "-m", "runner", *args], env=env, cwd=ROOT, check=False)


def seed(env: dict[str, str]) -> None:
    """The demo batch, then a flaky simulated model whose jobs retry and some fail."""
    cli(env, "demo", "--no-console")
    port = free_port()
    sim = subprocess.Popen(
        [sys.executable, "-m", "runner", "simulator", "--port", str(port)], env=env, cwd=ROOT
    )
    time.sleep(2)
    try:
        cli(
            env,
            "models",
            "add",
            "--provider",
            "compatible",
            "--label",
            "Llama 3.1 70B (simulated, flaky)",
            "--name",
            "sim-llama-3.1-70b@error500=4,latency=50",
            "--base-url",
            f"http://127.0.0.1:{port}/v1",
            "--max-concurrency",
            "4",
        )
        cli(env, "enqueue")
        cli({**env, "PROMPTBATCH_MAX_ATTEMPTS": "2"}, "run", "--drain")
    finally:
        sim.terminate()
        sim.wait()


def shoot(env: dict[str, str]) -> None:
    port = free_port()
    console = subprocess.Popen(
        [sys.executable, "-m", "runner", "console", "--port", str(port)], env=env, cwd=ROOT
    )
    time.sleep(6)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            for name, path in PAGES.items():
                page.goto(f"http://127.0.0.1:{port}/{path}")
                page.wait_for_load_state("networkidle")
                page.wait_for_timeout(3000)
                # Streamlit draws skeletons first; wait until every element has rendered.
                page.wait_for_function(
                    "() => !document.querySelector('[data-testid=\"stSkeleton\"]')", timeout=60_000
                )
                page.wait_for_timeout(2000)
                page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
            browser.close()
    finally:
        console.terminate()
        console.wait()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp}/screens.db"}
        seed(env)
        shoot(env)


if __name__ == "__main__":
    main()
