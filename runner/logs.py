"""Logging set-up for the entry points: people-readable lines, or one JSON object per line."""

from __future__ import annotations

import json
import logging
import sys

from runner.settings import Settings

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line with the record's `extra` fields (action, job_id, ...)."""

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "at": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        data.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


class TextFormatter(logging.Formatter):
    """`time level [action] message key=value ...`"""

    def format(self, record: logging.LogRecord) -> str:
        extra = {k: v for k, v in record.__dict__.items() if k not in _STANDARD and k != "action"}
        action = getattr(record, "action", "-")
        tail = " ".join(f"{k}={v}" for k, v in extra.items())
        line = f"{self.formatTime(record)} {record.levelname:<7} [{action}] {record.getMessage()}"
        line = f"{line} {tail}" if tail else line
        return f"{line}\n{self.formatException(record.exc_info)}" if record.exc_info else line


def configure_logging(settings: Settings) -> None:
    """Configure the root logger once, at an entry point."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    # A line per HTTP call at INFO from the SDK's HTTP stack: httpx on openai 2.x, httpx2 on 3.x
    for noisy in ("httpx", "httpcore", "httpx2", "httpcore2", "openai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
