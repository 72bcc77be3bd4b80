"""What the numbers were measured on: CPU, cores, RAM, versions, date."""

from __future__ import annotations

import platform
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import psutil

PACKAGES = ("sqlalchemy", "psycopg", "procrastinate", "pgqueuer")


def describe(pg_url: str) -> dict[str, str | int]:
    """Machine and versions as plain values for results.json."""
    return {
        "cpu": _cpu_model(),
        "cores": psutil.cpu_count() or 0,
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "postgres": _postgres_version(pg_url),
        "sqlite": sqlite3.sqlite_version,
        **{name: version(name) for name in PACKAGES},
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _postgres_version(pg_url: str) -> str:
    out = subprocess.run(
        ["psql", "-X", "-A", "-t", pg_url, "-c", "SHOW server_version"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.strip().split()[0]
