"""Every `extra=` key in a logging call must not collide with a LogRecord attribute: logging raises
KeyError("Attempt to overwrite ...") for such a record, but only when the level is enabled, so the
fault hides from tests that run at WARNING (it once crashed `run --drain` at INFO)."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def extra_keys() -> list[tuple[str, int, str]]:
    found = []
    for path in sorted(ROOT.glob("[dcr]*/**/*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            for kw in node.keywords:
                if kw.arg == "extra" and isinstance(kw.value, ast.Dict):
                    found += [
                        (str(path.relative_to(ROOT)), node.lineno, k.value)
                        for k in kw.value.keys
                        if isinstance(k, ast.Constant)
                    ]
    return found


def test_extra_keys_are_found():
    keys = {key for _, _, key in extra_keys()}
    assert {"action", "job_id"} <= keys


def test_no_extra_key_overwrites_a_log_record_attribute():
    clashes = [f"{path}:{line} {key!r}" for path, line, key in extra_keys() if key in RESERVED]
    assert clashes == []
