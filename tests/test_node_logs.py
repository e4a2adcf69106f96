"""The reader of the kubelet's container log files (bench/sidecar.py), which the node tests compare lines
through: it must neither lose nor repeat a line itself, whatever moment of a rotation it reads at, or a
test would blame the sidecar for it."""

import gzip
from datetime import datetime
from pathlib import Path

import pytest

from bench.sidecar import container_log, last_record, log_files

POD = {"metadata": {"namespace": "ns", "name": "pod", "uid": "uid"}}


def record(second: int, text: str, tag: str = "F") -> bytes:
    return f"2026-12-02T05:00:{second:02d}.000000000Z stdout {tag} {text}\n".encode()


def lines(log: list[tuple[datetime, bytes]]) -> list[bytes]:
    return [text for _, text in log]


def test_a_record_containerd_has_not_finished_writing_is_left_for_the_next_read(tmp_path: Path) -> None:
    (tmp_path / "0.log").write_bytes(record(1, "one") + record(2, "two") + b"2026-12-02T05:00:03.0000")
    assert lines(container_log(tmp_path)) == [b"one", b"two"]
    (tmp_path / "0.log").write_bytes(record(1, "one") + b"2026-12-02T05:00:02.000000000Z stdout")
    assert container_log(tmp_path) == [(datetime.fromisoformat("2026-12-02T05:00:01+00:00"), b"one")]


def test_parts_of_a_long_line_are_joined_and_a_part_never_completed_comes_last(tmp_path: Path) -> None:
    (tmp_path / "0.log").write_bytes(
        record(1, "a", "P") + record(1, "b", "P") + record(2, "c") + record(3, "") + record(4, "cut", "P")
    )
    assert lines(container_log(tmp_path)) == [b"abc", b"", b"cut"]


def test_rotated_files_are_read_oldest_first_each_once(tmp_path: Path) -> None:
    """Mid-compression the kubelet has both `X.tmp` (being written) and then both `X` and `X.gz` (renamed,
    the plain file not yet removed): the same lines, to be read once."""
    (tmp_path / "0.log.20261202-050000.gz").write_bytes(gzip.compress(record(1, "one")))
    (tmp_path / "0.log.20261202-050010").write_bytes(record(2, "two"))
    (tmp_path / "0.log.20261202-050010.gz").write_bytes(gzip.compress(record(2, "two")))
    (tmp_path / "0.log.20261202-050020").write_bytes(record(3, "three"))
    (tmp_path / "0.log.20261202-050020.tmp").write_bytes(gzip.compress(record(3, "thr")))
    (tmp_path / "0.log").write_bytes(record(4, "four"))
    assert lines(container_log(tmp_path)) == [b"one", b"two", b"three", b"four"]
    assert [f.name for f in log_files(tmp_path)] == [
        "0.log.20261202-050000.gz",
        "0.log.20261202-050010",
        "0.log.20261202-050020",
        "0.log",
    ]


def test_the_last_record_is_the_newest_complete_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("bench.sidecar.POD_LOGS", tmp_path)
    directory = tmp_path / "ns_pod_uid" / "log-app"
    assert last_record(POD, "log-app") is None, "no directory yet: not started"
    directory.mkdir(parents=True)
    (directory / "0.log").write_bytes(b"")
    assert last_record(POD, "log-app") is None, "an empty file: nothing yet"
    (directory / "0.log").write_bytes(b"2026-12-02T05:00:01.0")
    assert last_record(POD, "log-app") is None, "only a record being written"
    earlier = b"x" * 40000 + b"\n" + record(1, "one")
    (directory / "0.log").write_bytes(earlier + record(2, "two") + b"2026-12-0")
    assert last_record(POD, "log-app") == (datetime.fromisoformat("2026-12-02T05:00:02+00:00"), b"two")
    (directory / "0.log").rename(directory / "0.log.20261202-050010")
    (directory / "0.log.20261202-050000.gz").write_bytes(gzip.compress(record(0, "zero")))
    longest = record(1, "x" * 16384, "P") + record(1, "y" * 16384, "P")  # containerd's parts of a longer line
    (directory / "0.log.20261202-050010").write_bytes(earlier + longest + record(2, "two"))
    just_rotated = last_record(POD, "log-app")  # no 0.log yet: the newest plain file
    assert just_rotated == (datetime.fromisoformat("2026-12-02T05:00:02+00:00"), b"two")
