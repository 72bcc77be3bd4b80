"""Reading user files: the prompts CSV and the entity catalog TSV. A bad file is one InvalidInput
naming the file and every bad row by its line in the file (a quoted field may span lines) with
its problem; nothing is written until the whole file is valid."""

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
MAX_REPORTED = 10  # bad rows named in the error; the rest are counted
_WHOLE_NUMBER = re.compile(r"[0-9]+")  # ASCII digits: str.isdigit() takes '²' and crashes int()


def read_prompts_csv(path: Path) -> list[NewPrompt]:
    """Prompts from a CSV with the header `text,category,runs` (category may be empty).

    Raises InvalidInput for a missing file or column, an empty or oversized text (> 4000 chars), a
    text repeated in the file, or runs that is not a whole number from 1 to 100.
    """
    rows = _rows(path, ",")
    if not rows:
        raise InvalidInput(f"{path}: no prompts (expected a header text,category,runs and rows)")
    missing = [c for c in PROMPT_COLUMNS if c not in (rows[0][1].keys() or [])]
    if missing:
        raise InvalidInput(
            f"{path}: missing column(s) {', '.join(missing)}; expected header text,category,runs"
        )
    prompts: list[NewPrompt] = []
    bad: list[str] = []
    seen: dict[str, int] = {}
    for line, row in rows:
        try:
            prompt = _prompt_row(row)
        except ValueError as exc:
            bad.append(f"line {line}: {exc}")
            continue
        if prompt.text in seen:
            bad.append(f"line {line}: duplicate prompt (same text as line {seen[prompt.text]})")
            continue
        seen[prompt.text] = line
        prompts.append(prompt)
    _refuse_bad(path, bad)
    return prompts


def _prompt_row(row: dict[str, str | None]) -> NewPrompt:
    """One row's prompt; ValueError naming its problem."""
    text = (row.get("text") or "").strip()
    if not text:
        raise ValueError("prompt text is empty")
    if len(text) > MAX_PROMPT_CHARS:
        raise ValueError(f"prompt text is {len(text)} characters (at most {MAX_PROMPT_CHARS})")
    runs_text = (row.get("runs") or "").strip()
    if not _WHOLE_NUMBER.fullmatch(runs_text) or not 1 <= int(runs_text) <= MAX_RUNS:
        raise ValueError(f"runs must be a whole number from 1 to {MAX_RUNS}, got {runs_text!r}")
    category = (row.get("category") or "").strip() or None
    return NewPrompt(text, category, int(runs_text))


def _rows(path: Path, delimiter: str) -> list[tuple[int, dict[str, str | None]]]:
    """The file's data rows with the file line each starts on (the header is line 1)."""
    reader = csv.DictReader(io.StringIO(_read_text(path)), delimiter=delimiter)
    rows: list[tuple[int, dict[str, str | None]]] = []
    try:
        for row in reader:  # line_num: the row's last line; quoted newlines span back
            rows.append((reader.line_num - _newlines_in(row), row))
    except csv.Error as exc:
        raise InvalidInput(f"{path}:{reader.line_num}: not valid CSV ({exc})") from exc
    return rows


def _newlines_in(row: dict[str, str | None]) -> int:
    """Line breaks inside the row's quoted fields."""
    return sum(value.count("\n") for value in row.values() if isinstance(value, str))


def _refuse_bad(path: Path, bad: list[str]) -> None:
    if not bad:
        return
    shown = "; ".join(bad[:MAX_REPORTED])
    more = f"; and {len(bad) - MAX_REPORTED} more" if len(bad) > MAX_REPORTED else ""
    rows = "row" if len(bad) == 1 else "rows"
    raise InvalidInput(f"{path}: {len(bad)} bad {rows}, nothing imported: {shown}{more}")


def read_entities_tsv(path: Path) -> list[NewEntity]:
    """Brands from a TSV with the header `name<TAB>aliases` (aliases comma-separated, may be
    empty), keyed by matching_key. Raises InvalidInput for a bad file."""
    rows = _rows(path, "\t")
    if not rows or "name" not in rows[0][1]:
        raise InvalidInput(f"{path}: expected a header name<TAB>aliases and rows")
    result = []
    bad: list[str] = []
    for line, row in rows:
        name = (row.get("name") or "").strip()
        if not name:
            bad.append(f"line {line}: entity name is empty")
            continue
        aliases = [a.strip() for a in (row.get("aliases") or "").split(",") if a.strip()]
        result.append(brand(name, *aliases))
    _refuse_bad(path, bad)
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
