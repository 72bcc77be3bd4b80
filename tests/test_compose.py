"""docker-compose.yml and the Dockerfile, checked against the real CLI and Settings (no Docker
engine runs here, so the file is validated by what it refers to)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from runner.cli.commands import app
from runner.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
APP_SERVICES = ("migrate", "runner", "console", "simulator")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def settings_env_names() -> set[str]:
    """Every environment variable Settings reads."""
    names = set()
    for field_name, info in Settings.model_fields.items():
        names.add(f"PROMPTBATCH_{field_name.upper()}")
        if isinstance(info.validation_alias, AliasChoices):
            names |= {str(c) for c in info.validation_alias.choices}
    return names


def test_services_and_their_shape(compose):
    services = compose["services"]
    assert set(services) == {"postgres", *APP_SERVICES}
    pg = services["postgres"]
    assert pg["image"].startswith("postgres:")
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert any(v.endswith(":/var/lib/postgresql/data") for v in pg["volumes"])
    assert "pgdata" in compose["volumes"]
    assert services["simulator"]["profiles"] == ["demo"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("runner", "console"):
        assert (
            services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        )
    runner = services["runner"]
    assert "container_name" not in runner and "ports" not in runner  # --scale runner=3 works
    assert any(str(p).endswith(":8501") for p in services["console"]["ports"])


@pytest.mark.parametrize("service", APP_SERVICES)
def test_commands_are_real_cli_commands(compose, service):
    command = compose["services"][service]["command"]
    assert command[0] == "promptbatch"
    words = [w for w in command[1:] if not w.startswith("-")]
    options = [w for w in command[1:] if w.startswith("--")]
    result = CliRunner().invoke(app, [*command[1:], "--help"])
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    for option in options:
        assert option in flat, f"{service}: {option} is not an option of {words}"


def test_runner_stops_after_its_grace_period(compose):
    runner = compose["services"]["runner"]
    grace = float(runner["environment"]["PROMPTBATCH_GRACE_SECONDS"])
    assert float(runner["stop_grace_period"].rstrip("s")) > grace


@pytest.mark.parametrize("service", APP_SERVICES)
def test_environment_names_are_settings(compose, service):
    env = compose["services"][service].get("environment", {})
    unknown = set(env) - settings_env_names()
    assert unknown == set(), f"{service} sets variables promptbatch never reads: {unknown}"


def test_secrets_come_from_the_environment(compose):
    text = (ROOT / "docker-compose.yml").read_text()
    for secret in ("POSTGRES_PASSWORD", "CONSOLE_PASSWORD"):
        assert re.search(rf"\$\{{{secret}:\?", text), f"{secret} must be required from the env"
    assert "${OPENAI_API_KEY" in text and "${OPENROUTER_API_KEY" in text
    console_env = compose["services"]["console"]["environment"]
    assert console_env["CONSOLE_PASSWORD"].startswith("${CONSOLE_PASSWORD:?")


def test_database_url_points_at_the_postgres_service(compose):
    env = compose["services"]["runner"]["environment"]
    url = make_url(re.sub(r"\$\{[^}]*\}", "pw", env["DATABASE_URL"]))
    pg_env = compose["services"]["postgres"]["environment"]
    assert url.drivername == "postgresql+psycopg"
    assert (url.host, url.port) == ("postgres", 5432)
    assert (url.username, url.database) == (pg_env["POSTGRES_USER"], pg_env["POSTGRES_DB"])


def test_dockerfile_builds_the_installed_cli():
    dockerfile = (ROOT / "Dockerfile").read_text()
    for package in ("db", "runner", "console"):
        assert f"COPY {package} " in dockerfile
    assert "pip install ." in dockerfile and "USER " in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "data"} <= set(ignored)
