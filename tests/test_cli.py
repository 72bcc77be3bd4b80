"""The CLI as a user runs it: happy paths, and bad input that must give one line naming the
problem, a non-zero exit, no traceback and no partial write. Commands run in this process through
the entry point's own `main` (its error handling included); the last tests run the installed
command as a subprocess, where that is the point."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from sqlalchemy import Engine

from db import catalog
from db.catalog import count_rows
from db.models import Prompt
from runner.cli.commands import main
from runner.worker.scheduler import utc_batch_key

ROOT = Path(__file__).resolve().parents[1]
OUR_VARIABLES = ("PROMPTBATCH_", "OPENAI_", "OPENROUTER_", "DATABASE_URL", "CONSOLE_")


def cli(
    db_url: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `promptbatch ARGS` in this process with only DATABASE_URL and `env` of ours set;
    its exit code, stdout and stderr. An exception other than SystemExit fails the test (a user
    would have seen a traceback)."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith(OUR_VARIABLES)]:
            patch.delenv(name)
        for name, value in {"DATABASE_URL": db_url, **(env or {})}.items():
            patch.setenv(name, value)
        with redirect_stdout(out), redirect_stderr(err), pytest.raises(SystemExit) as ended:
            main(list(args))
    code = ended.value.code
    return subprocess.CompletedProcess(
        args, code if isinstance(code, int) else 1, out.getvalue(), err.getvalue()
    )


def cli_process(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m runner ARGS` as a subprocess, as a user's shell would."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(OUR_VARIABLES)}
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        env={**env, "DATABASE_URL": db_url},
        cwd=ROOT,
        text=True,
        capture_output=True,
        timeout=60,
        check=False,
    )


def assert_user_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def write_csv(tmp_path: Path, body: str) -> str:
    path = tmp_path / "prompts.csv"
    path.write_text(body, encoding="utf-8")
    return str(path)


def test_setup_enqueue_status_jobs_roundtrip(db_url, tmp_path):
    assert cli(db_url, "db", "upgrade").returncode == 0
    csv = write_csv(tmp_path, "text,category,runs\nbest crm?,crm,3\nbest vpn?,,2\n")
    assert "2 prompts created" in cli(db_url, "prompts", "import", csv).stdout
    assert "0 prompts created, 2 already present" in cli(db_url, "prompts", "import", csv).stdout
    for name in ("m1", "m2"):
        added = cli(
            db_url,
            "models",
            "add",
            "--provider",
            "compatible",
            "--name",
            name,
            "--base-url",
            "http://127.0.0.1:9/v1",
        )
        assert added.returncode == 0, added.stderr
    first = json.loads(cli(db_url, "enqueue", "--json").stdout)
    assert first == {"batch_key": utc_batch_key(), "created": 10, "existing": 0}
    again = json.loads(cli(db_url, "enqueue", "--json").stdout)
    assert (again["created"], again["existing"]) == (0, 10)
    status = json.loads(cli(db_url, "status", "--json").stdout)
    assert status["total"] == 10 and status["counts"]["queued"] == 10
    jobs = json.loads(cli(db_url, "jobs", "--status", "queued", "--limit", "3", "--json").stdout)
    assert len(jobs) == 3 and {j["status"] for j in jobs} == {"queued"}
    cancelled = cli(db_url, "cancel", "--model-id", "1")
    assert cancelled.stdout.strip() == "5 cancelled"
    requeued = cli(db_url, "requeue", "--status", "cancelled")
    assert requeued.stdout.strip() == "5 re-queued"
    assert json.loads(cli(db_url, "status", "--json").stdout)["counts"]["queued"] == 10


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("text,category,runs\nok prompt,crm,2\n,crm,2\n", "line 3: prompt text is empty"),
        ("text,category,runs\nok prompt,crm,2\n" + "x" * 4001 + ",crm,1\n", "4001 characters"),
        (
            "text,category,runs\nsame,crm,2\nsame,crm,1\n",
            "line 3: duplicate prompt (same text as line 2)",
        ),
        # str.isdigit() takes a superscript two; int() then crashed with a traceback (issue 12)
        ("text,category,runs\nok prompt,crm,\u00b2\n", "line 2: runs must be a whole number"),
        # lines of the file, not record numbers: a quoted prompt spans lines 2-3
        (
            'text,category,runs\n"two\nlines",crm,2\n,crm,1\n',
            "1 bad row, nothing imported: line 4:",
        ),
        (
            "text,category,runs\nok,crm,2\n,crm,1\nfine,crm,0\nok,crm,1\n",
            "3 bad rows, nothing imported: line 3: prompt text is empty; line 4: runs must be a "
            "whole number from 1 to 100, got '0'; line 5: duplicate prompt (same text as line 2)",
        ),
        ("text,category,runs\nok prompt,crm,0\n", "runs must be a whole number"),
        ("text,category,runs\nok prompt,crm,two\n", "got 'two'"),
        ("text,runs\nok prompt,2\n", "missing column(s) category"),
    ],
)
def test_bad_prompts_csv_is_refused_whole(engine: Engine, db_url, tmp_path, body, needle):
    result = cli(db_url, "prompts", "import", write_csv(tmp_path, body))
    assert_user_error(result, needle)
    assert count_rows(engine, Prompt) == 0  # all or nothing


def test_missing_file(db_url, engine, tmp_path):
    assert_user_error(cli(db_url, "prompts", "import", str(tmp_path / "nope.csv")), "no such file")


@pytest.mark.parametrize("key", ["2026-13-01", "yesterday", "2026-1-5", "2026-02-30"])
def test_batch_key_must_be_a_date(db_url, engine, key):
    assert_user_error(cli(db_url, "enqueue", "--batch-key", key), "batch key must be a date")


def test_unknown_model_provider_and_missing_base_url(db_url, engine):
    assert_user_error(
        cli(db_url, "models", "add", "--provider", "anthropic", "--name", "x"),
        "unknown provider 'anthropic'",
    )
    assert_user_error(
        cli(db_url, "models", "add", "--provider", "compatible", "--name", "x"), "needs --base-url"
    )


def test_missing_api_key_for_a_provider_in_use(db_url, engine):
    catalog.add_model(engine, provider="openrouter", name="openai/gpt-4o-mini")
    assert_user_error(
        cli(db_url, "run", "--drain"), "OPENROUTER_API_KEY is not set", "openai/gpt-4o-mini"
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--max-concurrency", "99999999999999999999"], "max concurrency must be from 1 to 10000"),
        (["--input-price", "nan"], "input price (USD per 1M tokens) must be from 0 to 10000"),
        (["--output-price", "-1"], "output price (USD per 1M tokens) must be from 0 to 10000"),
    ],
)
def test_bad_model_values(db_url, engine, args, needle):
    result = cli(
        db_url,
        "models",
        "add",
        "--provider",
        "compatible",
        "--name",
        "m",
        "--base-url",
        "http://127.0.0.1:9/v1",
        *args,
    )
    assert_user_error(result, needle)
    assert catalog.list_models(engine) == []


def test_base_url_needs_a_host(db_url, engine):
    assert_user_error(
        cli(
            db_url,
            "models",
            "add",
            "--provider",
            "compatible",
            "--name",
            "m",
            "--base-url",
            "http://",
        ),
        "URL with a host",
    )


def test_control_characters_in_prompts_are_refused(engine, db_url, tmp_path):
    csv = write_csv(tmp_path, 'text,category,runs\n"a\x00b",c,1\n')
    result = cli(db_url, "prompts", "import", csv)
    assert_user_error(result, "control character U+0000")
    assert count_rows(engine, Prompt) == 0


def test_usage_errors_exit_2_without_traceback(db_url, engine):
    result = cli(db_url, "jobs", "--limit", "0")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "Invalid value for '--limit'" in result.stderr


def test_unknown_status_filter(db_url, engine):
    assert_user_error(cli(db_url, "jobs", "--status", "done"), "unknown status 'done'")


def test_cancel_without_target_is_refused(db_url, engine):
    assert_user_error(cli(db_url, "cancel"), "give --job-id or at least one filter")


def test_schema_missing_says_how_to_fix(db_url):
    assert_user_error(cli(db_url, "status"), "promptbatch db upgrade")


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("not a url", "DATABASE_URL is not a valid database URL"),
        ("mysql://root@127.0.0.1/test", "DATABASE_URL must be sqlite"),
        ("postgresql+psycopg://postgres@127.0.0.1:1/test", "database postgresql+psycopg://"),
    ],
)
def test_bad_database_url(url, needle):
    assert_user_error(cli(url, "status"), needle)


def test_a_sqlite_directory_that_cannot_be_made_is_one_line(tmp_path):
    """Issue 12: a SQLite path under a regular file was a 60-line traceback."""
    (tmp_path / "afile").write_text("")
    result = cli(f"sqlite:///{tmp_path}/afile/sub/x.db", "status")
    assert_user_error(result, "cannot create the SQLite directory", "afile/sub")


def test_bad_setting_names_the_variable(tmp_path):
    result = cli(f"sqlite:///{tmp_path}/x.db", "status", env={"PROMPTBATCH_CONCURRENCY": "0"})
    assert_user_error(result, "PROMPTBATCH_CONCURRENCY".removeprefix("PROMPTBATCH_"))
    result = cli(f"sqlite:///{tmp_path}/x.db", "status", env={"PROMPTBATCH_REQUEST_TIMEOUT": "inf"})
    assert_user_error(result, "REQUEST_TIMEOUT")


def test_the_old_threads_name_still_sets_the_concurrency_with_a_warning(tmp_path, monkeypatch):
    """PROMPTBATCH_THREADS (before issue 11) keeps working for one release: it sets the calls in
    flight per process unless PROMPTBATCH_CONCURRENCY is set, and every command warns."""
    from runner.cli.commands import load_settings

    monkeypatch.setenv("PROMPTBATCH_THREADS", "24")
    assert load_settings().concurrency == 24
    monkeypatch.setenv("PROMPTBATCH_CONCURRENCY", "5")
    assert load_settings().concurrency == 5
    assert load_settings(concurrency=7).concurrency == 7
    result = cli(f"sqlite:///{tmp_path}/x.db", "status", env={"PROMPTBATCH_THREADS": "24"})
    assert "PROMPTBATCH_THREADS is deprecated" in result.stderr
    assert "PROMPTBATCH_CONCURRENCY" in result.stderr


@pytest.mark.subprocess
def test_the_command_as_a_process_prints_one_line_and_exits_2(db_url):
    """What the in-process tests rely on holds for the real entry point: a user error is one
    line on stderr, exit 2, no traceback."""
    assert_user_error(cli_process(db_url, "status"), "promptbatch db upgrade")
    assert_user_error(cli_process(db_url, "enqueue", "--batch-key", "2026-02-30"), "batch key")


@pytest.mark.subprocess
def test_the_command_as_a_process_runs_a_happy_path(db_url):
    assert cli_process(db_url, "db", "upgrade").returncode == 0
    status = cli_process(db_url, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["total"] == 0


def test_jobs_filters_as_the_console_does(db_url, engine):
    """`jobs` takes the console's filters: error kind, model (by name or label), since."""
    from db import queue
    from db.types import ErrorKind, FailureRecord
    from tests import factories as f

    f.make_batch(engine, prompts=2, models=2)
    first, second, third, _ = queue.claim_jobs(engine, "w", 4, lease_seconds=60)
    f.fail(engine, first, FailureRecord(ErrorKind.BAD_REQUEST, "400 bad request"), 0)
    f.fail(engine, second, FailureRecord(ErrorKind.SERVER_ERROR, "500"), 30)

    def listed(*args: str) -> set[int]:
        result = cli(db_url, "jobs", "--json", *args)
        assert result.returncode == 0, result.stderr
        return {row["id"] for row in json.loads(result.stdout)}

    assert listed("--error-kind", "bad_request") == {first.id}
    model = catalog.list_models(engine)[0]
    ids_of_model = set(f.job_ids(engine, model_id=model.id))
    assert listed("--model", model.name) == ids_of_model
    assert listed("--model", model.label, "--status", "processing") == ids_of_model & {third.id}
    assert listed("--error-text", "BAD request") == {first.id}
    assert listed("--since", "1h") == set(f.job_ids(engine))
    assert listed("--since", "2999-01-01") == set()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--error-kind", "nope"], "unknown error kind 'nope'"),
        (["--since", "yesterday"], "--since must be a duration"),
        (["--model", "gpt-9"], "unknown model 'gpt-9'"),
        (["--status", "done"], "unknown status 'done'"),
    ],
)
def test_bad_job_filters_are_one_line_errors(db_url, engine, args, needle):
    assert_user_error(cli(db_url, "jobs", *args), needle)
