"""`serve --record-dir`: each answered review is written to one file that `review -f` replays."""

import asyncio
import json
import logging
import stat
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from tests.kube import load_review, review_with
from tests.server import RunningServer, running_server
from tests.test_cli import sidecar_webhook
from webhook import cli, recordings
from webhook.admission import review
from webhook.app import create_app
from webhook.envelope import AdmissionReview
from webhook.settings import Settings

JSON = {"content-type": "application/json"}
RECORDED_WITHIN_SECONDS = 20
AT = datetime(2026, 11, 24, 15, 30, 0, 123456, tzinfo=UTC)


def request_of(review: dict[str, object]) -> AdmissionReview:
    return AdmissionReview.model_validate(review)


def post_in_process(settings: Settings, review: dict[str, object]) -> httpx.Response:
    """One /mutate call to the app in this process, background tasks included."""

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(settings))
        async with httpx.AsyncClient(transport=transport, base_url="http://webhook") as client:
            return await client.post("/mutate", content=json.dumps(review), headers=JSON)

    return asyncio.run(call())


def test_file_name_says_time_namespace_pod_and_uid() -> None:
    seed = request_of(load_review("seed-pod")).request
    assert recordings.file_name(seed, AT) == f"20261124T153000.123456Z-default-sidecar-{seed.uid[:8]}.json"


def test_file_name_of_a_generated_pod_uses_its_generate_name() -> None:
    generated = request_of(load_review("generate-name")).request
    assert recordings.file_name(generated, AT).startswith("20261124T153000.123456Z-default-web-5d8f7c9b4-")


def test_file_names_sort_by_time_whatever_the_time_zone() -> None:
    seed = request_of(load_review("seed-pod")).request
    later_elsewhere = (AT + timedelta(microseconds=1)).astimezone(timezone(timedelta(hours=-8)))
    names = [recordings.file_name(seed, later_elsewhere), recordings.file_name(seed, AT)]
    assert sorted(names) == names[::-1]


def test_file_name_cannot_leave_the_directory_or_hide_a_file() -> None:
    hostile = review_with({"metadata": {"name": "../../etc/passwd"}, "spec": {}})
    hostile["request"] |= {"namespace": "..", "uid": "/../x\n"}
    name = recordings.file_name(request_of(hostile).request, AT)
    assert "/" not in name and "\n" not in name and not name.startswith(".")
    assert (Path("/records") / name).parent == Path("/records")
    assert name.startswith("20261124T153000.123456Z-none-_.._etc_passwd-_.._x_")


def test_recording_is_the_review_with_its_answer_and_replays_to_the_same_answer(settings: Settings) -> None:
    received = json.dumps(load_review("seed-pod")).encode()
    answered = review(received, settings).body
    recorded = json.loads(recordings.recording(received, answered))
    assert {k: v for k, v in recorded.items() if k != "response"} == json.loads(received)
    assert recorded["response"] == json.loads(answered)["response"]
    assert review(json.dumps(recorded).encode(), settings).body == answered


def test_recording_is_written_whole_and_readable_only_by_its_owner(
    tmp_path: Path, settings: Settings
) -> None:
    received = json.dumps(load_review("seed-pod")).encode()
    directory = tmp_path / "records"
    recordings.write(directory, request_of(json.loads(received)).request, received, b'{"response": {}}', AT)
    (written,) = directory.iterdir()
    assert written.name.endswith(".json") and not written.name.startswith(".")
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert json.loads(written.read_text())["response"] == {}


def test_recording_that_cannot_be_written_is_logged_and_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    seed = load_review("seed-pod")
    with caplog.at_level(logging.WARNING, "sidecar_webhook.recordings"):
        recordings.write(not_a_directory, request_of(seed).request, json.dumps(seed).encode(), b"{}", AT)
    (record,) = caplog.records
    assert record.getMessage() == "could not record the review"
    assert record.fields["uid"] == seed["request"]["uid"]  # type: ignore[attr-defined]


def test_review_is_answered_when_its_recording_fails(
    tmp_path: Path, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    with caplog.at_level(logging.WARNING, "sidecar_webhook.recordings"):
        answered = post_in_process(
            settings.model_copy(update={"record_dir": not_a_directory}), load_review("seed-pod")
        )
    assert answered.status_code == 200
    assert [r.getMessage() for r in caplog.records] == ["could not record the review"]
    assert answered.json()["response"]["allowed"] is True


def test_nothing_is_recorded_when_recording_is_off(
    monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    def must_not_run(*args: object) -> None:
        raise AssertionError("recorded with recording off")

    monkeypatch.setattr(recordings, "write", must_not_run)
    assert settings.record_dir is None
    assert post_in_process(settings, load_review("seed-pod")).status_code == 200


def test_record_dir_comes_from_the_flag_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDECAR_WEBHOOK_RECORD_DIR", "/from/env")
    assert cli._settings(cli._parser().parse_args(["serve"])).record_dir == Path("/from/env")
    flagged = cli._parser().parse_args(["serve", "--record-dir", "/from/flag"])
    assert cli._settings(flagged).record_dir == Path("/from/flag")
    monkeypatch.delenv("SIDECAR_WEBHOOK_RECORD_DIR")
    assert cli._settings(cli._parser().parse_args(["serve"])).record_dir is None


@pytest.fixture(scope="module")
def recording_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    base = tmp_path_factory.mktemp("recording")
    with running_server(base / "certs", "--record-dir", str(base / "records")) as running:
        yield running


def wait_for_recordings(directory: Path, count: int) -> list[Path]:
    """The recordings in name order, once there are `count` of them (written after each answer)."""
    deadline = time.monotonic() + RECORDED_WITHIN_SECONDS
    while time.monotonic() < deadline:
        found = sorted(directory.glob("*.json")) if directory.is_dir() else []
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} recordings in {directory} after {RECORDED_WITHIN_SECONDS} s")


def test_recording_made_by_the_server_replays_with_review_to_the_same_response(
    recording_server: RunningServer,
) -> None:
    directory = recording_server.cert_dir.parent / "records"
    fixtures = ["seed-pod", "bad-relative-path", "no-annotation", "seed-pod-v1beta1", "generate-name"]
    answers = []
    with recording_server.client() as client:
        for name in fixtures:
            answered = client.post("/mutate", content=json.dumps(load_review(name)), headers=JSON)
            assert answered.status_code == 200
            answers.append(answered.json())
        broken = client.post("/mutate", content=b'{"apiVersion": "admission.k8s.io/v1"}', headers=JSON)
        assert broken.status_code == 400

    found = wait_for_recordings(directory, len(fixtures))

    assert len(found) == len(fixtures), "only answered reviews are recorded"
    assert [json.loads(path.read_text())["request"]["uid"] for path in found] == [
        load_review(name)["request"]["uid"] for name in fixtures
    ], "file names sort in the order the reviews came"
    for path, answer in zip(found, answers, strict=True):
        assert json.loads(path.read_text())["response"] == answer["response"]
        replayed = sidecar_webhook("review", "-f", str(path))
        assert replayed.returncode == 0, replayed.stderr
        assert json.loads(replayed.stdout) == answer
