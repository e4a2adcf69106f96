"""Drive a real `sidecar-webhook serve` (TLS, production settings, one worker) with wrk and report
throughput, latency, CPU per review, peak memory and time to ready, for pods of several shapes; and
the same reviews posted to Kubernetes' own Go e2e webhook (`agnhost webhook`), pinned the same way
in the same run, with the ratios of ours to Go's."""

import argparse
import copy
import json
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "admission"
LUA = Path(__file__).with_name("post.lua")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# The Go peer: agnhost's sidecar-injecting handler, which decodes the whole pod and answers a patch.
GO_PATH = "/mutating-pods-sidecar"
GET_AGNHOST = (
    "agnhost (Kubernetes' e2e test server) is not on PATH nor in $KUBEBUILDER_ASSETS: put it on PATH (it is "
    "/agnhost in the image registry.k8s.io/e2e-test-images/agnhost:2.53), or in CI take the test kit's "
    "(not part of a clone): export PATH=$(bash ../shared/kube/assets.sh | tail -1):$PATH"
)
# The targets, as ratios of ours to Go's in one run: (scenario, throughput at least, p99 at most).
TARGETS = [("seed pod", 1.3, 0.5), ("1 MiB pod", 10.0, None), ("100 containers", 1.3, None)]
PEAK_RSS_TARGET_MIB = 80

Review = dict[str, Any]


def seed() -> Review:
    review: Review = json.loads((FIXTURES / "seed-pod.json").read_text())
    return review


def with_containers(n: int) -> Callable[[], Review]:
    def make() -> Review:
        review = seed()
        spec = review["request"]["object"]["spec"]
        app = spec["containers"][0]
        spec["containers"] = [{**copy.deepcopy(app), "name": f"app-{i}"} for i in range(n)]
        return review

    return make


def one_mebibyte() -> Review:
    # The shape of istio/istio#34799: 1,500 env vars of 600 bytes, about 1 MiB of pod.
    review = seed()
    app = review["request"]["object"]["spec"]["containers"][0]
    app["env"] = [{"name": f"VAR_{i:04d}", "value": "x" * 600} for i in range(1500)]
    return review


def unannotated() -> Review:
    review: Review = json.loads((FIXTURES / "no-annotation.json").read_text())
    return review


SCENARIOS: dict[str, Callable[[], Review]] = {
    "seed pod": seed,
    "no annotation": unannotated,
    "10 containers": with_containers(10),
    "100 containers": with_containers(100),
    "1 MiB pod": one_mebibyte,
}


@dataclass
class Result:
    name: str
    body_bytes: int
    requests: int
    seconds: float
    failures: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    server_cpu_s_per_1000: float
    client_cpu_share: float  # of one core: under 1, the load generator was not the bottleneck
    peak_rss_mib: float

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10, help="duration of each measurement (10)")
    parser.add_argument("--connections", type=int, default=16, help="keep-alive connections (16)")
    parser.add_argument("--scenarios", nargs="*", choices=list(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--startups", type=int, default=5, help="server starts to time (5)")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench: wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    agnhost = find_agnhost()
    if agnhost is None:
        print(f"bench: measuring ours only: {GET_AGNHOST}", file=sys.stderr)
    server_core, client_core = _cores()
    print(
        f"cores: servers on {server_core}, wrk on {client_core}; {args.connections} keep-alive connections, "
        f"{args.seconds:g} s per measurement; {os.uname().machine}, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.2f} at start"
    )

    def measure(port: int, path: str, body: Path | None, pid: int, name: str) -> Result:
        return _wrk(port, path, body, args.seconds, args.connections, client_core, pid, name)

    with tempfile.TemporaryDirectory(prefix="sidecar-webhook-bench-") as scratch:
        work = Path(scratch)
        startups = [_time_to_ready(work, server_core) for _ in range(args.startups)]
        ours, go = [], []
        with _server(work, server_core) as (port, pid), _go_peer(agnhost, work, server_core) as peer:
            _wrk(port, "/healthz", None, 1, args.connections, client_core, pid)  # warm up
            health = measure(port, "/healthz", None, pid, "/healthz")
            # Ours, then Go's, scenario by scenario: the two measurements of a ratio are seconds
            # apart, so a neighbour's load on this machine skews both alike.
            for name in args.scenarios:
                body = work / f"{name}.json"
                body.write_text(json.dumps(SCENARIOS[name]()))
                ours.append(measure(port, "/mutate", body, pid, name))
                if peer is not None:
                    go.append(measure(peer[0], GO_PATH, body, peer[1], name))

    _report(health, ours, go, startups)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "healthz": health.__dict__,
                    "mutate": [r.__dict__ for r in ours],
                    "go": [r.__dict__ for r in go],
                    "ratios": [ratio.__dict__ for ratio in ratios(ours, go)],
                    "startup_s": startups,
                },
                indent=2,
            )
        )
    return 1 if any(r.failures for r in [health, *ours, *go]) else 0


@dataclass
class Ratio:
    """Ours over Go's for one scenario: throughput above 1, p99 and CPU per review below 1 are ours
    ahead. On a shared machine CPU per review moves least with what the neighbours take."""

    name: str
    throughput: float
    p99: float
    cpu_per_review: float


def ratios(ours: list[Result], go: list[Result]) -> list[Ratio]:
    theirs = {r.name: r for r in go}
    return [
        Ratio(
            r.name,
            r.per_second / theirs[r.name].per_second,
            r.p99_ms / theirs[r.name].p99_ms,
            r.server_cpu_s_per_1000 / theirs[r.name].server_cpu_s_per_1000,
        )
        for r in ours
        if r.name in theirs
    ]


def find_agnhost() -> str | None:
    """agnhost on PATH, else in $KUBEBUILDER_ASSETS (the envtest convention the kit follows)."""
    found = shutil.which("agnhost")
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if found is None and assets and (Path(assets) / "agnhost").is_file():
        found = str(Path(assets) / "agnhost")
    return found


def _cores() -> tuple[int, int]:
    cores = sorted(os.sched_getaffinity(0))
    return (cores[0], cores[1]) if len(cores) > 1 else (cores[0], cores[0])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(work: Path, core: int) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    certs = work / "certs"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "webhook",
            "certs",
            "create",
            "--service",
            "bench",
            "--namespace",
            "bench",
            "--host",
            "localhost",
            "--host",
            "127.0.0.1",
            "--out",
            str(certs),
        ],
        check=True,
        capture_output=True,
    )
    log = (work / "server.log").open("ab")  # production logging: one JSON line per review, to a file
    process = subprocess.Popen(
        [
            "taskset",
            "-c",
            str(core),
            sys.executable,
            "-m",
            "webhook",
            "serve",
            "--port",
            str(port),
            # No metrics port: nothing here reads it, and a fixed one could be taken on this machine.
            "--metrics-port",
            "0",
            "--cert-dir",
            str(certs),
        ],
        stdout=log,
        stderr=log,
    )
    return process, port


def _ready(port: int, ca: Path) -> bool:
    context = ssl.create_default_context(cafile=ca)
    try:
        with urllib.request.urlopen(f"https://localhost:{port}/readyz", context=context, timeout=1) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def _time_to_ready(work: Path, core: int) -> float:
    _start(work, core)[0].kill()  # certificates made once, outside the timing
    started = time.perf_counter()
    process, port = _start(work, core)
    try:
        while not _ready(port, work / "certs" / "ca.crt"):
            if process.poll() is not None or time.perf_counter() - started > 30:
                raise RuntimeError("the server did not become ready")
            time.sleep(0.005)
        return time.perf_counter() - started
    finally:
        process.kill()
        process.wait()


@contextmanager
def _server(work: Path, core: int) -> Iterator[tuple[int, int]]:
    process, port = _start(work, core)
    try:
        deadline = time.monotonic() + 30
        while not _ready(port, work / "certs" / "ca.crt"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not become ready")
            time.sleep(0.05)
        yield port, process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


@contextmanager
def _go_peer(agnhost: str | None, work: Path, core: int) -> Iterator[tuple[int, int] | None]:
    """`agnhost webhook` on the same certificate, pinned to the same core (Go then runs on one
    thread: GOMAXPROCS follows the affinity); its port and pid, or None without agnhost."""
    if agnhost is None:
        yield None
        return
    port, certs = _free_port(), work / "certs"
    log = (work / "agnhost.log").open("ab")
    process = subprocess.Popen(
        [
            "taskset",
            "-c",
            str(core),
            agnhost,
            "webhook",
            f"--port={port}",
            f"--tls-cert-file={certs / 'tls.crt'}",
            f"--tls-private-key-file={certs / 'tls.key'}",
            "--sidecar-image=docker.io/library/busybox:1.37",
        ],
        stdout=log,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 30
        while not _ready(port, certs / "ca.crt"):
            if process.poll() is not None or time.monotonic() > deadline:
                log_text = (work / "agnhost.log").read_text()
                raise RuntimeError(f"agnhost webhook did not become ready: {log_text}")
            time.sleep(0.05)
        yield port, process.pid
    finally:
        process.terminate()
        process.wait(timeout=30)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _wrk(
    port: int,
    path: str,
    body: Path | None,
    seconds: float,
    connections: int,
    core: int,
    pid: int,
    name: str = "warm-up",
) -> Result:
    command = [
        "taskset",
        "-c",
        str(core),
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout=30s",  # a slow answer is a latency to report, not an error (wrk's default is 2 s)
        "-s",
        str(LUA),
        f"https://127.0.0.1:{port}{path}",
    ]
    if body is not None:
        command += ["--", str(body)]
    server_before, client_before = _cpu_seconds(pid), os.times()
    started = time.perf_counter()
    wrk = subprocess.run(command, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - started
    server_cpu = _cpu_seconds(pid) - server_before
    client_after = os.times()
    client_cpu = (
        client_after.children_user
        - client_before.children_user
        + client_after.children_system
        - client_before.children_system
    )
    stats = json.loads(wrk.stdout.strip().splitlines()[-1])
    result = Result(
        name=name,
        body_bytes=body.stat().st_size if body else 0,
        requests=stats["requests"],
        seconds=stats["duration_us"] / 1e6,
        failures=stats["errors"] + stats["non_2xx"],
        p50_ms=stats["p50"] / 1000,
        p90_ms=stats["p90"] / 1000,
        p99_ms=stats["p99"] / 1000,
        max_ms=stats["max"] / 1000,
        server_cpu_s_per_1000=server_cpu / max(stats["requests"], 1) * 1000,
        client_cpu_share=client_cpu / wall,
        peak_rss_mib=_peak_rss_mib(pid),
    )
    return result


def _report(health: Result, ours: list[Result], go: list[Result], startups: list[float]) -> None:
    header = (
        f"{'':16} {'body':>9} {'reviews/s':>10} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} {'max ms':>7} "
        f"{'cpu s/1k':>8} {'wrk cpu':>7} {'rss MiB':>7} {'failed':>6}"
    )
    for title, rows in [("sidecar-webhook", [health, *ours]), (f"Go peer: agnhost webhook {GO_PATH}", go)]:
        if not rows:
            continue
        print(f"\n{title}\n{header}")
        for r in rows:
            print(
                f"{r.name:16} {r.body_bytes:>9} {r.per_second:>10.0f} {r.p50_ms:>7.2f} {r.p90_ms:>7.2f} "
                f"{r.p99_ms:>7.2f} {r.max_ms:>7.2f} {r.server_cpu_s_per_1000:>8.3f} "
                f"{r.client_cpu_share:>7.0%} {r.peak_rss_mib:>7.1f} {r.failures:>6}"
            )
    found = ratios(ours, go)
    if found:
        print(f"\nours / Go\n{'':16} {'throughput':>10} {'p99':>7} {'cpu/review':>10}")
        for ratio in found:
            print(
                f"{ratio.name:16} {ratio.throughput:>9.2f}x {ratio.p99:>6.2f}x {ratio.cpu_per_review:>9.2f}x"
            )
    by_name = {ratio.name: ratio for ratio in found}
    for name, throughput, p99 in TARGETS:
        if name in by_name:
            got = by_name[name]
            met = _verdict(got.throughput >= throughput)
            print(f"target {name}: throughput >= {throughput:g}x Go's: {met}")
            if p99 is not None:
                print(f"target {name}: p99 <= {p99:g}x Go's: {_verdict(got.p99 <= p99)}")
    peak = max(r.peak_rss_mib for r in [health, *ours])
    met = _verdict(peak <= PEAK_RSS_TARGET_MIB)
    print(f"target peak RSS <= {PEAK_RSS_TARGET_MIB} MiB: {peak:.1f}, {met}")
    print(
        f"time to ready (serve start to /readyz 200): median {statistics.median(startups):.2f} s, "
        f"max {max(startups):.2f} s over {len(startups)} starts"
    )


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"
