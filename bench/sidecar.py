"""The sidecar measured on a real node, at the default resources the webhook gives it (50m CPU, 32Mi): how
fast it drains a burst into the container log (MB/s), how late each line arrives (p50, p99, max), and what
it costs idle and under load (CPU, resident memory). The previous program (busybox's `tail -F` in a
trapping shell, tests/fixtures/earlier-sidecars.json) runs in the same run on the same node, and the
report gives the ratios of the current one to it.

Run where the node runs, as root (in CI, the test kit's one-node cluster: `bash ../shared/kube/node.sh up`;
the kit is not part of a clone, docs/development.md): it reads the kubelet's container logs under
/var/log/pods and the sidecar's processes under /proc.

    KUBECONFIG=... python -m bench.sidecar [--megabytes 100] [--lines 100] [--idle-seconds 30] [--json F]
"""

import argparse
import copy
import gzip
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import jsonpatch

from webhook.engine import decide_pod
from webhook.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
EARLIER = ROOT / "tests" / "fixtures" / "earlier-sidecars.json"
PREVIOUS = "sh around tail with a SIGTERM trap (7dddbb4 to f6dcd80)"
NAMESPACE = "sidecar-bench"
POD_LOGS = Path("/var/log/pods")
IMAGE = "busybox:1.37"
LINE = "line padded to fifty bytes of text"  # + " N": 40 to 47 bytes a line

T = TypeVar("T")


@dataclass
class Result:
    program: str
    burst_mb: float
    drain_mb_per_s: float
    drain_cpu_percent: float  # of one core, while draining: the limit is 5%
    latency_p50_s: float
    latency_p99_s: float
    latency_max_s: float
    idle_cpu_millicores: float
    idle_rss_kib: int
    peak_rss_kib: int


def kubectl(*args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        ["kubectl", *args], input=stdin, capture_output=True, text=True, timeout=300, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def wait_for(condition: Callable[[], T | None], what: str, timeout: float = 300) -> T:
    deadline = time.monotonic() + timeout
    while (value := condition()) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout} s")
        time.sleep(0.2)
    return value


def injected_pod(name: str, script: str, program: str) -> dict[str, Any]:
    """The pod as the webhook injects it (native sidecar, default resources); for the previous program, its
    sidecar runs the command that version gave it."""
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": {"sidecar.example/log-path": "/var/log/app.log"}},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 5,
            "containers": [{"name": "app", "image": IMAGE, "command": ["sh", "-c", script]}],
        },
    }
    result: dict[str, Any] = jsonpatch.apply_patch(pod, list(decide_pod(pod, Settings()).patch))
    if program == "previous":
        (sidecar,) = result["spec"]["initContainers"]
        sidecar["command"] = copy.deepcopy(json.loads(EARLIER.read_text())["commands"][PREVIOUS])
    return result


def started(name: str) -> dict[str, Any]:
    def running() -> dict[str, Any] | None:
        pod: dict[str, Any] = json.loads(kubectl("-n", NAMESPACE, "get", "pod", name, "-o", "json"))
        statuses = pod.get("status", {}).get("containerStatuses", [])
        return pod if statuses and "running" in statuses[0].get("state", {}) else None

    return wait_for(running, f"pod {name} running")


def log_directory(pod: dict[str, Any], container: str) -> Path:
    """Where the kubelet keeps a container's log on the node: what a node log agent reads."""
    meta = pod["metadata"]
    return POD_LOGS / f"{meta['namespace']}_{meta['name']}_{meta['uid']}" / container


def log_files(directory: Path) -> list[Path]:
    """A container's log files as the kubelet keeps them, oldest first: `0.log` being written, the older ones
    named by when they were rotated (at 10 MiB) and then gzipped. The kubelet writes a `.tmp`, renames it
    `.gz`, then removes the plain file, so for a moment both hold the same lines: the plain one is read."""
    files: dict[str, Path] = {}
    for file in directory.iterdir():
        stem = file.name.removesuffix(".gz")
        if not file.name.endswith(".tmp") and (stem not in files or stem == file.name):
            files[stem] = file
    return [files[stem] for stem in sorted(files, key=lambda stem: (stem == "0.log", stem))]


def container_log(directory: Path) -> list[tuple[datetime, bytes]]:
    """A container's log as the node keeps it, rotated files included: (the time containerd got the line,
    the line). CRI records are `TIME STREAM TAG TEXT`, tag P for a part of a longer line; a part never
    completed (a cut line) comes last as it is."""

    def read() -> list[tuple[datetime, bytes]] | None:
        out: list[tuple[datetime, bytes]] = []
        part, stamp = b"", datetime.min
        for file in log_files(directory):
            try:
                data = gzip.decompress(file.read_bytes()) if file.name.endswith(".gz") else file.read_bytes()
            except FileNotFoundError:  # rotated or compressed since it was listed: list again
                return None
            for stamp, tag, text in map(cri_record, complete_lines(data)):
                part += text
                if tag == b"F":
                    out.append((stamp, part))
                    part = b""
        return [*out, (stamp, part)] if part else out

    return wait_for(read, f"a read of {directory} between two rotations", timeout=60)


def complete_lines(data: bytes) -> list[bytes]:
    """The lines of a log file read while containerd writes to it: a record it has begun but not yet
    finished (no newline yet) is left for the next read."""
    return data[: data.rfind(b"\n") + 1].splitlines()


def cri_record(line: bytes) -> tuple[datetime, bytes, bytes]:
    """One CRI log record, `TIME STREAM TAG TEXT`: (the time, the tag, the text; empty for an empty line)."""
    stamp, _, tag, text = [*line.split(b" ", 3), b""][:4]
    return datetime.fromisoformat(stamp.decode()), tag, text


def records(pod: dict[str, Any], container: str) -> list[tuple[datetime, bytes]]:
    return container_log(log_directory(pod, container))


def last_record(pod: dict[str, Any], container: str) -> tuple[datetime, bytes] | None:
    """The newest complete line of the container's log, read from the end of the newest plain file that
    has one (the kubelet may have just rotated the current file away); None until there is one."""
    try:
        plain = [f for f in log_files(log_directory(pod, container)) if not f.name.endswith(".gz")]
        newest = next(f for f in reversed(plain) if f.stat().st_size)
        with newest.open("rb") as log:
            # 32 KiB: more than two whole records (containerd splits lines at 16 KiB), whatever line the
            # read begins in the middle of.
            start = log.seek(max(0, newest.stat().st_size - 32768))
            lines = complete_lines(log.read())[1 if start else 0 :]
    except (FileNotFoundError, StopIteration):  # not started yet, or rotated since it was listed
        return None
    if not lines:
        return None
    stamp, _, text = cri_record(lines[-1])
    return stamp, text


def sidecar_shell(pod: dict[str, Any]) -> int:
    """The host pid of the sidecar's shell: the process whose cgroup names its container."""
    (status,) = pod["status"]["initContainerStatuses"]
    container_id = status["containerID"].split("://", 1)[1]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if container_id in (proc / "cgroup").read_text() and (proc / "cmdline").read_bytes().startswith(
                b"sh\0-c\0"
            ):
                return int(proc.name)
        except OSError:
            continue
    raise RuntimeError(f"no process of container {container_id}")


def cpu_seconds(pid: int) -> float:
    """The CPU time of the sidecar's container so far, every process of it (each cat, stat, sleep): its
    cgroup's cpuacct.usage (cgroup v1, as the kit's node runs) or cpu.stat's usage_usec (v2)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpuacct" in controllers.split(","):
            return int(Path(f"/sys/fs/cgroup/{controllers}{path}/cpuacct.usage").read_text()) / 1e9
        if controllers == "" and Path(f"/sys/fs/cgroup/{path}/cpu.stat").exists():
            stat = dict(s.split() for s in Path(f"/sys/fs/cgroup/{path}/cpu.stat").read_text().splitlines())
            return int(stat["usage_usec"]) / 1e6
    raise RuntimeError(f"no CPU accounting for process {pid}")


def memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def run(name: str, script: str, program: str) -> dict[str, Any]:
    kubectl("-n", NAMESPACE, "apply", "-f", "-", stdin=json.dumps(injected_pod(name, script, program)))
    return started(name)


def done(pod: dict[str, Any]) -> None:
    kubectl("-n", NAMESPACE, "delete", "pod", pod["metadata"]["name"], "--wait=true")


def idle(program: str, seconds: float) -> dict[str, float]:
    """After the app's one line, over `seconds`: the container's CPU and the shell's resident memory."""
    pod = run(f"idle-{program}", "echo hello >> /var/log/app.log; sleep 3600", program)
    wait_for(lambda: last_record(pod, "log-app"), "the idle line")
    shell = sidecar_shell(pod)
    before = cpu_seconds(shell)
    time.sleep(seconds)  # the measurement window itself
    measured = {
        "idle_cpu_millicores": round((cpu_seconds(shell) - before) / seconds * 1000, 2),
        "idle_rss_kib": memory_kib(shell, "VmRSS"),
    }
    done(pod)
    return measured


def latency(program: str, lines: int) -> dict[str, float]:
    """Each tick's time in the sidecar's log minus its time in the app's, both stamped by containerd."""
    script = (
        f"i=0; while [ $i -lt {lines} ]; do echo tick $i | tee -a /var/log/app.log; i=$((i + 1)); "
        "sleep 0.2; done; sleep 3600"
    )
    pod = run(f"ticks-{program}", script, program)
    last_tick = f"tick {lines - 1}".encode()
    wait_for(
        lambda: True if (r := last_record(pod, "log-app")) and r[1] == last_tick else None, "the last tick"
    )
    written = {text: stamp for stamp, text in records(pod, "app")}
    delays = sorted((stamp - written[text]).total_seconds() for stamp, text in records(pod, "log-app"))
    quantiles = statistics.quantiles(delays, n=100, method="inclusive")
    done(pod)
    return {
        "latency_p50_s": round(quantiles[49], 3),
        "latency_p99_s": round(quantiles[98], 3),
        "latency_max_s": round(delays[-1], 3),
    }


def burst(program: str, megabytes: int) -> dict[str, float]:
    """From the app's "burst" (its file, made beforehand in its own /tmp, appended at once) to the sidecar's
    last line; and the CPU the sidecar spent meanwhile."""
    count = megabytes * 1_000_000 // 45
    script = (
        f"seq 1 {count} | sed 's/^/{LINE} /' > /tmp/burst; echo burst; cat /tmp/burst >> /var/log/app.log; "
        "sleep 3600"
    )
    pod = run(f"burst-{program}", script, program)
    shell = sidecar_shell(pod)
    wait_for(lambda: True if (r := last_record(pod, "app")) and r[1] == b"burst" else None, "the burst")
    cpu_before = cpu_seconds(shell)
    last_line = f"{LINE} {count}".encode()
    end = wait_for(
        lambda: r if (r := last_record(pod, "log-app")) and r[1] == last_line else None, "the drain"
    )
    cpu_spent = cpu_seconds(shell) - cpu_before
    start = next(stamp for stamp, text in records(pod, "app") if text == b"burst")
    drained = (end[0] - start).total_seconds()
    size = sum(len(f"{LINE} {i}\n") for i in range(1, count + 1)) / 1e6
    measured = {
        "burst_mb": round(size, 1),
        "drain_mb_per_s": round(size / drained, 1),
        "drain_cpu_percent": round(cpu_spent / drained * 100, 1),
        "peak_rss_kib": memory_kib(shell, "VmHWM"),
    }
    done(pod)
    return measured


def measure(megabytes: int, lines: int, idle_seconds: float) -> list[Result]:
    """Each scenario for both programs back to back, so that both meet the same machine."""
    found: dict[str, dict[str, Any]] = {"previous": {}, "current": {}}
    for scenario in (
        lambda p: idle(p, idle_seconds),
        lambda p: latency(p, lines),
        lambda p: burst(p, megabytes),
    ):
        for program, results in found.items():
            results.update(scenario(program))
    return [Result(program=program, **results) for program, results in found.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sidecar", description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=int, default=100, help="size of the burst (default 100)")
    parser.add_argument("--lines", type=int, default=100, help="ticks for the latency, 5 a second (100)")
    parser.add_argument("--idle-seconds", type=float, default=30, help="idle window (default 30)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if not os.access(POD_LOGS, os.R_OK | os.X_OK):
        print(f"bench.sidecar needs the node's {POD_LOGS}: run it on the node, as root", file=sys.stderr)
        return 2
    # A namespace of its own, new: pods of an earlier run must not be taken for this run's.
    kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true")
    kubectl("create", "namespace", NAMESPACE)
    try:
        results = measure(args.megabytes, args.lines, args.idle_seconds)
    finally:
        subprocess.run(["kubectl", "delete", "namespace", NAMESPACE, "--wait=false"], capture_output=True)
    previous, current = results
    print(f"{'':24} {'previous':>10} {'current':>10} {'current/previous':>17}")
    for field in Result.__dataclass_fields__:
        if field == "program":
            continue
        old, new = getattr(previous, field), getattr(current, field)
        ratio = f"{new / old:.2f}x" if old else "-"
        print(f"{field:24} {old:>10} {new:>10} {ratio:>17}")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
