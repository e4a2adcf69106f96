"""Logging as one JSON object per line, for the service and everything it runs (uvicorn included).

Two ways in, one shape out. Everything logs through the `logging` module, except the line written
for each review: that one is on the API server's critical path, where a LogRecord, the handler's
lock and the formatter cost as much as the review itself (README, "Performance"). `Lines` writes it
straight to stderr, still gated by the logging level of its logger.
"""

import contextlib
import logging
import os
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime

import orjson


def line(created: float, level: str, logger: str, message: str, fields: Mapping[str, object]) -> bytes:
    """One log line: time, level, logger and message first, then the event's own fields."""
    entry = {
        "time": datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds"),
        "level": level,
        "logger": logger,
        "message": message,
        **fields,
    }
    return orjson.dumps(entry, default=str, option=orjson.OPT_APPEND_NEWLINE)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = dict(getattr(record, "fields", {}))
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        entry = line(record.created, record.levelname.lower(), record.name, record.getMessage(), fields)
        return entry[:-1].decode()  # the handler adds the newline


class Lines:
    """Info lines of one logger, written to stderr with one write each, so a line is never split
    between writes; the review's line goes out before its answer."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._logger = logging.getLogger(name)

    def info(self, message: str, fields: Mapping[str, object]) -> None:
        if not self._logger.isEnabledFor(logging.INFO):
            return
        # stderr closed or gone: there is nowhere left to say so, and the review must not fail.
        with contextlib.suppress(OSError, ValueError):
            os.write(sys.stderr.fileno(), line(time.time(), "info", self.name, message, fields))


def configure(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
