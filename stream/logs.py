"""Log lines for people (``text``) or for log pipelines (``json``), standard library only.

``--log-format json`` (setting ``log_format``, variable ``TOPICSTREAM_LOG_FORMAT``) makes
every log record one JSON object on one line of standard error::

    {"ts": "2026-11-23T19:50:40.123Z", "level": "INFO", "logger": "stream.worker",
     "message": "...", "exception": "Traceback ..."}

``ts`` is ISO 8601 in UTC with milliseconds, ``message`` the %-formatted message,
``exception`` (and ``stack``) only when the record carries one; every field given with
``extra={...}`` is added as it is (values JSON cannot hold are written as their ``str``).
The one-line ``topicstream: error: ...`` that ends a failed command is not a log record and
stays plain text.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# attributes every LogRecord has: whatever else a record carries came from ``extra``
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_OURS = "_topicstream_handler"  # marks the handler configure_logging installed


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts``, ``level``, ``logger``, ``message``, then
    ``exception`` / ``stack`` when present and the record's ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and key not in out:
                out[key] = value
        return json.dumps(out, ensure_ascii=False, default=str)


def make_formatter(log_format: str) -> logging.Formatter:
    """The formatter of ``log_format`` (``text`` or ``json``).

    Raises
    ------
    ValueError
        When ``log_format`` is neither.
    """
    if log_format == "json":
        return JsonFormatter()
    if log_format == "text":
        return logging.Formatter(TEXT_FORMAT)
    raise ValueError(f"log_format={log_format!r} should be 'text' or 'json'")


def configure_logging(level: int, log_format: str = "text") -> None:
    """Log to standard error at ``level`` in ``log_format``, like :func:`logging.basicConfig`:
    nothing is installed when the root logger already has handlers (an embedding program's,
    or pytest's), so only a handler of our own ever has its format changed.

    Parameters
    ----------
    level
        Level of the root logger (set only when the handler is installed).
    log_format
        ``text`` or ``json`` (see the module docstring).
    """
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        setattr(handler, _OURS, True)
        root.addHandler(handler)
        root.setLevel(level)
    set_log_format(log_format)


def set_log_format(log_format: str) -> None:
    """Switch the handler installed by :func:`configure_logging` to ``log_format`` (e.g. once
    the settings file has been read)."""
    formatter = make_formatter(log_format)
    for handler in logging.getLogger().handlers:
        if getattr(handler, _OURS, False):
            handler.setFormatter(formatter)
