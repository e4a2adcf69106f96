"""The sidecar's program run for real: under busybox's sh and tail (the image's) and under this machine's
/bin/sh and tail. It prints the file, and on SIGTERM what is left of it, then exits 0; the path stays data."""

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from webhook.sidecar import follow_command

SHELLS = [
    pytest.param(
        ["busybox"],
        id="busybox",
        marks=pytest.mark.skipif(
            shutil.which("busybox") is None,
            reason="busybox is not installed (Debian: apt-get install busybox-static); the image runs it",
        ),
    ),
    pytest.param([], id="system-sh"),
]
# Far above the ~2 s the program takes at most: a bound that keeps a broken trap from hanging the suite.
EXIT_BOUND_SECONDS = 15


@contextmanager
def following(runner: list[str], file: Path) -> Iterator[subprocess.Popen[bytes]]:
    command = [*runner, *follow_command(str(file))]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()


def catches_sigterm(pid: int) -> bool:
    """The process has a handler for SIGTERM: the bit of signal 15 in SigCgt of /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return False


def stop(process: subprocess.Popen[bytes]) -> tuple[int, bytes, bytes]:
    """SIGTERM, once the shell has set its trap, as the kubelet sends it to a running container."""
    deadline = time.monotonic() + EXIT_BOUND_SECONDS
    while not catches_sigterm(process.pid):
        assert time.monotonic() < deadline, "the sidecar never set its SIGTERM trap"
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=EXIT_BOUND_SECONDS)
    return process.returncode, out, err


@pytest.mark.parametrize("runner", SHELLS)
def test_on_sigterm_the_sidecar_prints_the_lines_left_and_exits_0(runner: list[str], tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text("first\n")
    with following(runner, log) as process:
        assert process.stdout is not None
        assert process.stdout.readline() == b"first\n"  # tail runs, and the trap is set before it starts
        with log.open("a") as app:
            app.write("".join(f"line {i}\n" for i in range(1000)) + "the last line\n")
        code, out, err = stop(process)
    assert code == 0
    assert out.decode().splitlines() == [*(f"line {i}" for i in range(1000)), "the last line"]
    assert err == b""


@pytest.mark.parametrize("runner", SHELLS)
def test_a_file_that_never_appears_gives_no_output_and_a_clean_exit(
    runner: list[str], tmp_path: Path
) -> None:
    with following(runner, tmp_path / "missing.log") as process:
        code, out, err = stop(process)
    # tail's own notices ("can't open ...: No such file or directory") never reach kubectl logs.
    assert (code, out, err) == (0, b"", b"")


HOSTILE_NAMES = [
    "$(touch PWNED).log",
    "`touch PWNED`.log",
    "a; touch PWNED.log",
    '\' "; touch PWNED; echo ".log',
    "-n 5 --follow.log",
    "line\nbreak.log",
    "*",
]


@pytest.mark.parametrize("runner", SHELLS)
@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_the_path_is_data_never_shell(runner: list[str], name: str, tmp_path: Path) -> None:
    log = tmp_path / name
    log.write_text("hello\n")
    (tmp_path / "decoy.log").write_text("not this file\n")
    with following(runner, log) as process:
        assert process.stdout is not None
        assert process.stdout.readline() == b"hello\n"
        code, out, _ = stop(process)
    assert code == 0 and out == b""
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "decoy.log"]), "something ran"
