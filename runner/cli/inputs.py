"""Reading user files: the prompts CSV and the entity catalog TSV. Every bad row is an InvalidInput
naming the file, the line and the problem; nothing is written until the whole file is valid."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from db.catalog import MAX_PROMPT_CHARS, NewEntity, NewPrompt
from db.errors import InvalidInput
from runner.extraction.resolve import matching_key

PROMPT_COLUMNS = ("text", "category", "runs")
MAX_RUNS = 100


def read_prompts_csv(path: Path) -> list[NewPrompt]:
    """Prompts from a CSV with the header `text,category,runs` (category may be empty).

    Raises InvalidInput for a missing file or column, an empty or oversized text (> 4000 chars), a
    text repeated in the file, or runs that is not a whole number from 1 to 100.
    """
    rows = list(csv.DictReader(io.StringIO(_read_text(path))))
    if not rows:
        raise InvalidInput(f"{path}: no prompts (expected a header text,category,runs and rows)")
    missing = [c for c in PROMPT_COLUMNS if c not in (rows[0].keys() or [])]
    if missing:
        raise InvalidInput(
            f"{path}: missing column(s) {', '.join(missing)}; expected header text,category,runs"
        )
    prompts: list[NewPrompt] = []
    seen: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        prompt = _prompt_row(path, line, row)
        if prompt.text in seen:
            raise InvalidInput(
                f"{path}:{line}: duplicate prompt (same text as line {seen[prompt.text]})"
            )
        seen[prompt.text] = line
        prompts.append(prompt)
    return prompts


def _prompt_row(path: Path, line: int, row: dict[str, str | None]) -> NewPrompt:
    text = (row.get("text") or "").strip()
    if not text:
        raise InvalidInput(f"{path}:{line}: prompt text is empty")
    if len(text) > MAX_PROMPT_CHARS:
        raise InvalidInput(
            f"{path}:{line}: prompt text is {len(text)} characters (at most {MAX_PROMPT_CHARS})"
        )
    runs_text = (row.get("runs") or "").strip()
    if not runs_text.isdigit() or not 1 <= int(runs_text) <= MAX_RUNS:
        raise InvalidInput(
            f"{path}:{line}: runs must be a whole number from 1 to {MAX_RUNS}, got {runs_text!r}"
        )
    category = (row.get("category") or "").strip() or None
    return NewPrompt(text, category, int(runs_text))


def read_entities_tsv(path: Path) -> list[NewEntity]:
    """Brands from a TSV with the header `name<TAB>aliases` (aliases comma-separated, may be
    empty), keyed by matching_key. Raises InvalidInput for a bad file."""
    rows = list(csv.DictReader(io.StringIO(_read_text(path)), delimiter="\t"))
    if not rows or "name" not in rows[0]:
        raise InvalidInput(f"{path}: expected a header name<TAB>aliases and rows")
    result = []
    for line, row in enumerate(rows, start=2):
        name = (row.get("name") or "").strip()
        if not name:
            raise InvalidInput(f"{path}:{line}: entity name is empty")
        aliases = [a.strip() for a in (row.get("aliases") or "").split(",") if a.strip()]
        result.append(brand(name, *aliases))
    return result


def brand(name: str, *aliases: str) -> NewEntity:
    """A brand for the catalog, its name and aliases keyed as extraction matches them."""
    return NewEntity(name, matching_key(name), {a: matching_key(a) for a in aliases})


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise InvalidInput(f"{path}: no such file") from exc
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot be read ({exc.strerror})") from exc


_DURATION = re.compile(r"(?P<n>\d+(?:\.\d+)?)(?P<unit>[smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(value: str, now: datetime | None = None) -> datetime:
    """The moment `value` names, as an aware UTC datetime: a duration back from `now` (`90s`,
    `30m`, `2h`, `1d`) or an ISO 8601 date or date-time (UTC unless it carries an offset).

    Raises InvalidInput naming the value.
    """
    text = value.strip()
    if match := _DURATION.fullmatch(text):
        seconds = float(match["n"]) * _UNIT_SECONDS[match["unit"]]
        return (now or datetime.now(UTC)) - timedelta(seconds=seconds)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InvalidInput(
            f"--since must be a duration (30m, 2h, 1d) or a UTC date or time, got {value!r}"
        ) from exc
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
