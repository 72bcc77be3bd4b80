"""The import contracts in pyproject.toml (import-linter, run by `make lint`) hold on the tree, and
break when a forbidden import is added: each case copies the packages, adds one import, and runs
`lint-imports` on the copy."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.subprocess


def _lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    # The copy comes first on sys.path, ahead of the editable install of the real tree.
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _copy_tree(tmp_path: Path) -> Path:
    for package in ("db", "runner", "console"):
        shutil.copytree(
            ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__", "data")
        )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_tree_keeps_every_contract(tmp_path):
    result = _lint_imports(_copy_tree(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("runner/simulator/faults.py", "import runner.worker.jobs", "runner's rooms"),
        ("runner/extraction/find.py", "import runner.llm.client", "runner's rooms"),
        ("runner/llm/answers.py", "import runner.extraction.resolve", "runner's rooms"),
        ("console/charts.py", "import runner.worker.supervisor", "console and runner above db"),
        ("db/queue.py", "import runner.settings", "console and runner above db"),
        ("runner/worker/jobs.py", "import sqlalchemy", "only db builds SQL"),
        ("runner/worker/jobs.py", "import openai", "only runner.llm uses the openai SDK"),
        (
            "runner/simulator/answers.py",
            "import db.queue",
            "the simulator plays an outside provider",
        ),
    ],
)
def test_a_forbidden_import_breaks_the_lint(tmp_path, module, line, contract):
    tree = _copy_tree(tmp_path)
    target = tree / module
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    result = _lint_imports(tree)
    assert result.returncode != 0
    report = " ".join(result.stdout.split())  # names wrap at 80 columns
    assert " 0 broken" not in report, result.stdout
    assert contract in report.split("Broken contracts", 1)[-1], result.stdout
