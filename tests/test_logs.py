"""Both ways into the log write the same shape of line, and the review lines obey the level."""

import asyncio
import json
import logging
from collections.abc import Iterator

import pytest

from webhook import logs


@pytest.fixture
def configured() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def test_lines_and_logging_write_the_same_shape(configured: None, capfd: pytest.CaptureFixture[str]) -> None:
    logs.configure("info")
    logging.getLogger("sidecar_webhook.test").info("via logging", extra={"fields": {"uid": "a", "n": 1}})
    logs.Lines("sidecar_webhook.test").info("direct", {"uid": "b", "n": 2})
    via_logging, direct = (json.loads(line) for line in capfd.readouterr().err.splitlines())
    assert list(via_logging) == list(direct) == ["time", "level", "logger", "message", "uid", "n"]
    assert (direct["level"], direct["logger"], direct["message"], direct["uid"]) == (
        "info",
        "sidecar_webhook.test",
        "direct",
        "b",
    )
    assert direct["time"].endswith("+00:00") and len(direct["time"]) == len(via_logging["time"])


def test_lines_are_silent_below_the_level(configured: None, capfd: pytest.CaptureFixture[str]) -> None:
    logs.configure("warning")
    logs.Lines("sidecar_webhook.test").info("direct", {"uid": "b"})
    assert capfd.readouterr().err == ""


def test_an_exception_goes_into_its_line(configured: None, capfd: pytest.CaptureFixture[str]) -> None:
    logs.configure("info")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("sidecar_webhook.test").exception("failed", extra={"fields": {"uid": "c"}})
    (entry,) = (json.loads(line) for line in capfd.readouterr().err.splitlines())
    assert entry["uid"] == "c" and "RuntimeError: boom" in entry["exception"]


def test_lines_of_one_loop_turn_go_out_together_when_it_ends(
    configured: None, capfd: pytest.CaptureFixture[str]
) -> None:
    logs.configure("info")
    lines = logs.Lines("sidecar_webhook.test")

    async def one_turn() -> tuple[str, str]:
        lines.info("first", {"uid": "a"})
        lines.info("second", {"uid": "b"})
        during = capfd.readouterr().err
        await asyncio.sleep(0)  # the turn ends
        return during, capfd.readouterr().err

    during, after = asyncio.run(one_turn())
    assert during == ""
    assert [json.loads(line)["message"] for line in after.splitlines()] == ["first", "second"]


def test_lines_left_by_a_closed_loop_do_not_stop_the_next_loop_writing(
    configured: None, capfd: pytest.CaptureFixture[str]
) -> None:
    logs.configure("info")
    lines = logs.Lines("sidecar_webhook.test")
    first = asyncio.new_event_loop()

    def log_and_stop() -> None:
        lines.info("left", {})
        first.stop()  # the loop ends with this turn: the write due at its end never runs

    first.call_soon(log_and_stop)
    first.run_forever()
    first.close()
    assert capfd.readouterr().err == ""

    async def next_loop() -> None:
        lines.info("next", {})
        await asyncio.sleep(0)

    asyncio.run(next_loop())
    assert [json.loads(line)["message"] for line in capfd.readouterr().err.splitlines()] == ["left", "next"]
