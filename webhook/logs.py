"""Logging as one JSON object per line, for the service and everything it runs (uvicorn included).

Two ways in, one shape out. Everything logs through the `logging` module, except the line written
for each review: that one is on the API server's critical path, where a LogRecord, the handler's
lock and the formatter cost as much as the review itself (docs/performance.md). `Lines` writes it
straight to stderr, still gated by the logging level of its logger.
"""

import asyncio
import atexit
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
    """Info lines of one logger, written straight to stderr, a line never split between writes.

    In the event loop, the lines of one turn go out in one write when the turn ends: under load
    the reviews of several connections run in one turn, and their lines then cost one system call,
    not one each (that write was 6% of the server's CPU under the seed-pod load, in py-spy). A
    review's line is held before its answer is written, so it still goes out first
    (webhook/protocol.py sends answers at the end of the turn too). Outside a loop, a line is
    written at once.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._logger = logging.getLogger(name)
        self._held: list[bytes] = []
        self._flush_on: asyncio.AbstractEventLoop | None = None  # the loop whose turn will write them
        atexit.register(self.flush)  # a loop closed before its last turn ended

    def info(self, message: str, fields: Mapping[str, object]) -> None:
        if not self._logger.isEnabledFor(logging.INFO):
            return
        self._held.append(line(time.time(), "info", self.name, message, fields))
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        # Compared by loop, not by whether lines are held: lines left by a loop that closed before
        # its turn ended must not stop the next loop from writing.
        if self._flush_on is not loop:
            self._flush_on = loop
            loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_on = None
        data, self._held = b"".join(self._held), []
        # stderr closed or gone: there is nowhere left to say so, and the review must not fail.
        with contextlib.suppress(OSError, ValueError):
            while data:
                data = data[os.write(sys.stderr.fileno(), data) :]


def configure(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
