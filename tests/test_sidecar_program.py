"""The sidecar's program run for real under busybox (the image's shell and applets), with line-exact
comparisons of what the app wrote and what the sidecar printed: every line once, in file order, through
rotation, truncation, restarts and the end of the pod. The path stays data."""

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from webhook.sidecar import follow_command

pytestmark = pytest.mark.skipif(
    shutil.which("busybox") is None,
    reason="busybox is not installed (Debian: apt-get install busybox-static); the sidecar's image runs it",
)
# Far above what any step takes: bounds that keep a broken program from hanging the suite.
BOUND_SECONDS = 30


def as_the_kubelet_passes_it(command: list[str], env: dict[str, str]) -> list[str]:
    """The kubelet's expansion of a container's command (Kubernetes' third_party/forked/golang/expansion):
    `$(NAME)` becomes the variable's value when the container has it, `$$` becomes `$`, anything else
    stays. A `$$` in the program would reach the shell as `$`."""

    def expand(text: str) -> str:
        out, i = [], 0
        while i < len(text):
            if text[i] != "$" or i + 1 == len(text):
                out.append(text[i])
                i += 1
            elif text[i + 1] == "$":
                out.append("$")
                i += 2
            elif text[i + 1] == "(" and (end := text.find(")", i + 2)) != -1:
                name = text[i + 2 : end]
                out.append(env.get(name, f"$({name})"))
                i = end + 1
            else:
                out.append(text[i])
                i += 1
        return "".join(out)

    return [expand(arg) for arg in command]


# What every pod's containers get from the kubelet: the Service environment of `kubernetes.default`.
POD_ENV = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443", "HOSTNAME": "pod"}


class Follower:
    """The program following `file`, as the kubelet hands it to the sidecar's shell; what it prints is
    collected."""

    def __init__(self, file: Path, state: Path, tracer: Sequence[str] = ()) -> None:
        """`tracer`: a command to run it under (strace), which then is the shell's parent."""
        command = as_the_kubelet_passes_it(follow_command(str(file), str(state)), POD_ENV)
        self.process = subprocess.Popen(
            [*tracer, "busybox", *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.traced = bool(tracer)
        self._out = bytearray()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        while chunk := self.process.stdout.read1(1 << 20):
            with self._lock:
                self._out += chunk

    @property
    def output(self) -> bytes:
        with self._lock:
            return bytes(self._out)

    def lines(self) -> list[str]:
        return self.output.decode().splitlines()

    def wait_for(self, condition: Callable[[list[str]], bool], what: str) -> None:
        deadline = time.monotonic() + BOUND_SECONDS
        while not condition(self.lines()):
            assert self.process.poll() is None, (
                f"the sidecar exited ({self.process.returncode}) before {what}"
            )
            assert time.monotonic() < deadline, f"no {what} within {BOUND_SECONDS} s: {self.lines()[-3:]}"
            time.sleep(0.02)

    def wait_for_line(self, line: str) -> None:
        self.wait_for(lambda lines: line in lines[-1:], f"line {line!r} last")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> float:
        """Send `sig` once the shell has set its trap, as the kubelet does to a running container; wait for
        the exit and return how long it took."""
        deadline = time.monotonic() + BOUND_SECONDS
        while not ((shell := self.shell()) and catches_sigterm(shell)):
            assert time.monotonic() < deadline, "the sidecar never set its SIGTERM trap"
            time.sleep(0.01)
        sent = time.monotonic()
        os.kill(shell, sig)
        self.process.wait(BOUND_SECONDS)  # a tracer ends with its tracee
        took = time.monotonic() - sent
        self._reader.join(BOUND_SECONDS)
        assert self.process.stderr is not None
        assert self.process.stderr.read() == b"", "nothing of its own may reach kubectl logs"
        return took

    def shell(self) -> int | None:
        """The shell's pid: the process started, or the tracer's one child (None until it has it)."""
        if not self.traced:
            return self.process.pid
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        pids = children.read_text().split() if self.process.poll() is None else []
        return int(pids[0]) if pids else None

    def kill(self) -> None:
        if self.process.poll() is None:
            if self.traced and (shell := self.shell()):
                os.kill(shell, signal.SIGKILL)  # a killed tracer would leave its tracee running
            self.process.kill()
        self.process.wait(BOUND_SECONDS)
        self._reader.join(BOUND_SECONDS)


@contextmanager
def following(file: Path, state: Path, tracer: Sequence[str] = ()) -> Iterator[Follower]:
    follower = Follower(file, state, tracer)
    try:
        yield follower
    finally:
        follower.kill()
        for stream in (follower.process.stdout, follower.process.stderr):
            if stream is not None:
                stream.close()


def catches_sigterm(pid: int) -> bool:
    """The process has a handler for SIGTERM: the bit of signal 15 in SigCgt of /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return False


def numbered(start: int, stop: int, prefix: str = "line") -> list[str]:
    return [f"{prefix} {i}" for i in range(start, stop)]


def append(file: Path, lines: list[str]) -> None:
    """What an app's logger does: O_APPEND writes, so after a truncation the next line lands at 0."""
    with file.open("a") as log:
        log.write("".join(f"{line}\n" for line in lines))


@pytest.fixture
def log(tmp_path: Path) -> Path:
    (tmp_path / "logs").mkdir()
    return tmp_path / "logs" / "app.log"


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """The sidecar's own state volume, as /run/log-sidecar is in the pod: one file per sidecar."""
    (tmp_path / "state").mkdir()
    return tmp_path / "state" / "log-app"


def test_lines_arrive_once_in_order_and_a_line_without_its_newline_is_not_held_back(
    log: Path, state: Path
) -> None:
    append(log, numbered(0, 100))
    with following(log, state) as sidecar:
        sidecar.wait_for_line("line 99")
        for start in range(100, 1000, 300):
            append(log, numbered(start, start + 300))
            sidecar.wait_for_line(f"line {start + 299}")
        with log.open("a") as app:
            app.write("the last line, no newline")
        sidecar.wait_for(lambda lines: lines[-1:] == ["the last line, no newline"], "the unfinished line")
        assert sidecar.stop() < BOUND_SECONDS
    assert sidecar.process.returncode == 0
    assert sidecar.lines() == [*numbered(0, 1000), "the last line, no newline"]


def test_long_lines_arrive_whole(log: Path, state: Path) -> None:
    lines = [str(size) * (size // len(str(size))) for size in (4096, 65536, 1 << 20)]
    with following(log, state) as sidecar:
        append(log, lines)
        sidecar.wait_for(lambda got: len(got) == 3, "three long lines")
        sidecar.stop()
    assert sidecar.lines() == lines


def test_a_file_that_appears_later_is_followed_from_its_first_line(log: Path, state: Path) -> None:
    with following(log, state) as sidecar:
        sidecar.wait_for(lambda _: catches_sigterm(sidecar.process.pid), "the trap")
        append(log, numbered(0, 50))
        sidecar.wait_for_line("line 49")
        sidecar.stop()
    assert sidecar.lines() == numbered(0, 50)


def test_a_file_that_never_appears_gives_no_output_and_a_clean_exit(log: Path, state: Path) -> None:
    with following(log, state) as sidecar:
        took = sidecar.stop()
    print(f"stopped with nothing to read in {took:.2f} s")
    assert (sidecar.process.returncode, sidecar.output) == (0, b"")


@pytest.mark.parametrize("new_file_at_once", [True, False], ids=["create", "nocreate"])
def test_rename_rotation_keeps_every_line_of_both_files_while_the_app_writes_to_the_old_one(
    log: Path, state: Path, new_file_at_once: bool
) -> None:
    """logrotate's `create` (a new empty file at once) or none, while the app keeps writing to its old
    descriptor for a few seconds, as most loggers do until they are told to reopen."""
    with following(log, state) as sidecar, log.open("a", buffering=1) as app:
        for line in numbered(0, 1000):
            app.write(f"{line}\n")
        sidecar.wait_for_line("line 999")
        log.rename(log.with_name("app.log.1"))
        if new_file_at_once:
            log.touch()
        written = 1000
        until = time.monotonic() + 3  # the app reopens 3 s later: rounds past the rename
        while time.monotonic() < until:
            app.write("".join(f"{line}\n" for line in numbered(written, written + 50)))
            written += 50
            time.sleep(0.02)  # the app's own pace, not a wait for the sidecar
        app.close()
        append(log, numbered(written, written + 1000))
        sidecar.wait_for(lambda lines: len(lines) >= written + 1000, "every line")
        sidecar.stop()
    assert sidecar.lines() == numbered(0, written + 1000), "each file's lines once, in file order"


@pytest.mark.parametrize("pause", [0.0, 1.5], ids=["writes-at-once", "pauses"])
@pytest.mark.parametrize("how", ["copytruncate", "truncate"])
def test_a_truncated_file_is_read_again_from_its_start(
    log: Path, state: Path, how: str, pause: float
) -> None:
    """copytruncate (copy, then truncate in place) or a plain `: > file`; then 5,000 lines at once, more
    than the file held before, or after a pause."""
    append(log, numbered(0, 5000))
    with following(log, state) as sidecar:
        sidecar.wait_for_line("line 4999")
        if how == "copytruncate":
            shutil.copyfile(log, log.with_name("app.log.1"))
        os.truncate(log, 0)
        time.sleep(pause)  # the app's pause is the scenario
        append(log, numbered(5000, 10000))
        sidecar.wait_for_line("line 9999")
        sidecar.stop()
    assert sidecar.lines() == numbered(0, 10000)


def test_after_sigterm_a_restarted_sidecar_resumes_where_the_last_one_stopped(log: Path, state: Path) -> None:
    append(log, numbered(0, 1000))
    with following(log, state) as first:
        first.wait_for_line("line 999")
        first.stop()
    append(log, numbered(1000, 2000))  # while no sidecar runs
    with following(log, state) as second:
        second.wait_for_line("line 1999")
        second.stop()
    assert (first.process.returncode, second.process.returncode) == (0, 0)
    assert first.lines() + second.lines() == numbered(0, 2000), "none lost, none repeated"


def test_after_a_crash_a_restarted_sidecar_repeats_at_most_the_last_round_and_loses_nothing(
    log: Path, state: Path
) -> None:
    """SIGKILL (an OOM kill) while the app writes: the position is saved after each round that read, so
    the new instance starts at most one round back."""
    append(log, numbered(0, 1000))
    with following(log, state) as first:
        first.wait_for_line("line 999")
        append(log, numbered(1000, 1500))
        first.kill()
    with following(log, state) as second:
        append(log, numbered(1500, 2000))
        second.wait_for_line("line 1999")
        second.stop()
    before, after = first.lines(), second.lines()
    resumed_at = numbered(0, 2000).index(after[0])
    assert resumed_at <= len(before) and before[resumed_at:] == after[: len(before) - resumed_at]
    assert before[:resumed_at] + after == numbered(0, 2000)
    print(f"repeated after the crash: {len(before) - resumed_at} lines")


def test_a_file_rewritten_while_no_sidecar_ran_is_read_from_its_start(log: Path, state: Path) -> None:
    append(log, numbered(0, 1000))
    with following(log, state) as first:
        first.wait_for_line("line 999")
        first.stop()
    log.write_text("".join(f"{line}\n" for line in numbered(0, 2000, "new")))  # same inode, longer
    with following(log, state) as second:
        second.wait_for_line("new 1999")
        second.stop()
    assert second.lines() == numbered(0, 2000, "new")


def test_on_sigterm_a_final_burst_is_printed_whole_and_it_exits_0(log: Path, state: Path) -> None:
    """A Job's end: the app writes its last 200,000 lines and exits; the kubelet stops the sidecar at once."""
    append(log, ["first"])
    with following(log, state) as sidecar:
        sidecar.wait_for_line("first")
        append(log, numbered(0, 200_000))
        took = sidecar.stop()
    print(f"drained 200,000 lines and exited in {took:.2f} s")
    assert sidecar.process.returncode == 0
    assert sidecar.lines() == ["first", *numbered(0, 200_000)]


def test_an_app_that_never_stops_writing_keeps_a_stopping_sidecar_only_a_few_seconds(
    log: Path, state: Path
) -> None:
    """A classic sidecar's app that ignores its own SIGTERM: the sidecar still ends on its own, well inside
    the grace period, with whole lines in order."""
    stop_writing = threading.Event()

    def app() -> None:
        n = 0
        while not stop_writing.is_set():
            append(log, numbered(n, n + 10))
            n += 10
            stop_writing.wait(0.01)

    writer = threading.Thread(target=app)
    writer.start()
    try:
        with following(log, state) as sidecar:
            sidecar.wait_for(lambda lines: len(lines) >= 100, "the sidecar streaming")
            took = sidecar.stop()
    finally:
        stop_writing.set()
        writer.join()
    print(f"stopped while the app kept writing, in {took:.2f} s")
    lines = sidecar.lines()
    assert sidecar.process.returncode == 0
    assert lines == numbered(0, len(lines))


def test_idle_rounds_fork_nothing_but_every_tenth(log: Path, state: Path) -> None:
    """An idle sidecar's cost is its forks (busybox forks and re-executes itself for each `cat`): idle rounds
    run none, only every 10th round reads whatever the mtime says. Seen by strace running the shell: its
    rounds (each reads /proc/self/fdinfo/3 twice) and the `cat`s it executes."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed (Debian: apt-get install strace; .ci/run installs it)")
    append(log, ["first"])
    trace = log.with_name("trace")

    def rounds_and_cats() -> tuple[int, int]:
        calls = trace.read_text().splitlines() if trace.exists() else []
        return sum('"/proc/self/fdinfo/3"' in c for c in calls) // 2, sum('["cat"]' in c for c in calls)

    tracer = [strace, "-f", "-qq", "-e", "trace=execve,openat", "-o", str(trace)]
    with following(log, state, tracer) as sidecar:
        sidecar.wait_for(lambda _: rounds_and_cats()[0] >= 13, "13 rounds")
        rounds, cats = rounds_and_cats()
        sidecar.stop()
    print(f"{cats} cat(s) in {rounds} rounds, the first of which printed the file")
    assert sidecar.lines() == ["first"]
    # The first round's, the next one's if the file was written in the same second, one every 10th round.
    assert cats <= 2 + rounds // 10


def test_a_write_whose_mtime_looks_old_is_still_printed_and_at_once_when_stopping(
    log: Path, state: Path
) -> None:
    """Idle rounds trust the file's mtime. A write they cannot see that way (timed before a round's `cat` but
    visible only after it, or on a volume whose clock lags) is printed by the `cat` of every 10th round,
    and at once by the rounds after SIGTERM."""
    long_ago = time.time() - 3600
    append(log, ["first"])
    with following(log, state) as sidecar:
        sidecar.wait_for_line("first")
        append(log, numbered(0, 100))
        os.utime(log, (long_ago, long_ago))
        started = time.monotonic()
        sidecar.wait_for_line("line 99")
        print(f"a write timed an hour ago printed {time.monotonic() - started:.1f} s later")
        append(log, numbered(100, 200))
        os.utime(log, (long_ago, long_ago))
        sidecar.stop()
    assert sidecar.process.returncode == 0
    assert sidecar.lines() == ["first", *numbered(0, 200)]


def test_two_sidecars_of_one_pod_share_the_state_volume_without_mixing(tmp_path: Path, state: Path) -> None:
    files = [tmp_path / "logs" / name for name in ("a.log", "b.log")]
    (tmp_path / "logs").mkdir(exist_ok=True)
    with (
        following(files[0], state.with_name("log-a")) as a,
        following(files[1], state.with_name("log-b")) as b,
    ):
        append(files[0], numbered(0, 500, "a"))
        append(files[1], numbered(0, 500, "b"))
        a.wait_for_line("a 499")
        b.wait_for_line("b 499")
        a.stop()
        b.stop()
    assert (a.lines(), b.lines()) == (numbered(0, 500, "a"), numbered(0, 500, "b"))


def test_the_kubelet_passes_the_program_unchanged() -> None:
    command = follow_command("/var/log/app.log", "/run/log-sidecar/log-app")
    assert as_the_kubelet_passes_it(command, POD_ENV) == command


def test_the_kubelet_expansion_of_the_tests_is_the_kubelets() -> None:
    """The check above can fail: `$$` and a variable the container has are what the kubelet changes."""
    assert as_the_kubelet_passes_it(["echo $$ $(HOSTNAME) $(NOPE) $((1 + 2)) $"], POD_ENV) == [
        "echo $ pod $(NOPE) $((1 + 2)) $"
    ]


HOSTILE_NAMES = [
    "$(touch PWNED).log",
    "`touch PWNED`.log",
    "a; touch PWNED.log",
    '\' "; touch PWNED; echo ".log',
    "-n 5 --follow.log",
    "line\nbreak.log",
    "*",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_the_path_is_data_never_shell(name: str, tmp_path: Path, state: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / name).write_text("hello\n")
    (logs / "decoy.log").write_text("not this file\n")
    with following(logs / name, state) as sidecar:
        sidecar.wait_for_line("hello")
        sidecar.stop()
    assert sidecar.process.returncode == 0 and sidecar.output == b"hello\n"
    assert sorted(p.name for p in logs.iterdir()) == sorted([name, "decoy.log"]), "something ran"
