"""The log stream on a real node: every line the app writes reaches the sidecar's container log once, in
order, through rename rotation with a kept descriptor, copytruncate, a sidecar restart and a Job that ends
with a 100 MB burst at the default resources. Lines are compared one by one; timings are printed, never
asserted.

Each app is a busybox script that runs its scenario on its own clock (its sleeps are the scenario) and
ends with `written N`; the pods run to completion, so their sidecars are native and stop after the app."""

import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from bench.sidecar import POD_LOGS, container_log, log_directory
from tests.e2e.cluster import MEASURED, ROOT, apply, get, kubectl, wait_for

LOG_PATH = "sidecar.example/log-path"
IMAGE = "busybox:1.37"
# Numbered lines: `w FROM TO` writes "line FROM" .. "line TO-1" to stdout, one write each, as loggers do.
WRITE = 'w() { i=$1; while [ $i -lt $2 ]; do echo "line $i"; i=$((i + 1)); done; }; cd /var/log; '


def run_to_completion(name: str, script: str, namespace: str) -> None:
    """A pod whose app runs `script` once; the webhook gives it the log sidecar."""
    apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "annotations": {LOG_PATH: "/var/log/app.log"}},
            "spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "app", "image": IMAGE, "command": ["sh", "-c", WRITE + script]}],
            },
        },
        namespace,
    )


def succeeded(namespace: str, name: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        pod: dict[str, Any] = get("-n", namespace, "pod", name)
        phase = pod.get("status", {}).get("phase")
        assert phase != "Failed", f"pod {name} failed: {pod['status']}"
        return pod if phase == "Succeeded" else None

    return wait_for(done, f"pod {name} to succeed", timeout=180)


def sidecar_log(namespace: str, name: str, *, previous: bool = False) -> list[str]:
    flags = ["--previous"] if previous else []
    return kubectl("-n", namespace, "logs", name, "-c", "log-app", *flags).splitlines()


def numbered(count: int) -> list[str]:
    return [f"line {i}" for i in range(count)]


def written(lines: list[str]) -> int:
    """The count the app announced on its last line."""
    assert lines and lines[-1].startswith("written "), f"the app's last line is missing: {lines[-3:]}"
    return int(lines[-1].split()[1])


def sidecar_state(pod: dict[str, Any]) -> dict[str, Any]:
    (status,) = [s for s in pod["status"]["initContainerStatuses"] if s["name"] == "log-app"]
    return status


def test_rename_rotation_while_the_app_writes_to_the_old_file_for_4_s_loses_no_line(namespace: str) -> None:
    """logrotate's `create`: the file renamed and a new one made at once, while the app keeps writing to
    its old descriptor for 4 s before it reopens (what a logger does until its SIGHUP)."""
    run_to_completion(
        "rename",
        "exec 3>>app.log; w 0 5000 >&3; sleep 2; mv app.log app.log.1; : > app.log; "
        "n=5000; end=$(($(date +%s) + 4)); "
        "while [ $(date +%s) -lt $end ]; do w $n $((n + 50)) >&3; n=$((n + 50)); sleep 0.1; done; "
        'exec 3>>app.log; w $n $((n + 5000)) >&3; echo "written $((n + 5000))" >&3',
        namespace,
    )
    succeeded(namespace, "rename")
    lines = sidecar_log(namespace, "rename")
    assert lines[:-1] == numbered(written(lines)), "every line of both files once, in file order"
    MEASURED["rename rotation with a kept descriptor: lines"] = written(lines)


@pytest.mark.parametrize("pause", ["0", "2"], ids=["at-once", "after-2-s"])
def test_copytruncate_loses_no_line_written_after_the_truncate(namespace: str, pause: str) -> None:
    """logrotate's `copytruncate`: the file copied, then truncated in place; the app (O_APPEND) writes
    5,000 lines at once, more than the file held, at once or after a pause."""
    run_to_completion(
        "copytruncate",
        f"w 0 5000 >> app.log; sleep 2; cp app.log app.log.1; : > app.log; sleep {pause}; "
        'w 5000 10000 >> app.log; echo "written 10000" >> app.log',
        namespace,
    )
    succeeded(namespace, "copytruncate")
    lines = sidecar_log(namespace, "copytruncate")
    assert lines[:-1] == numbered(written(lines))


def test_a_restarted_sidecar_resumes_where_it_stopped(namespace: str) -> None:
    """The sidecar's process ends (SIGTERM to it alone) while the app writes, within ~5 s even though the
    app never pauses; the kubelet starts it again, and the new instance goes on from the position the
    last one kept in the pod's state volume."""
    run_to_completion(
        "restart",
        "n=0; while [ $n -lt 3000 ]; do w $n $((n + 20)) >> app.log; n=$((n + 20)); sleep 0.1; done; "
        'echo "written 3000" >> app.log',
        namespace,
    )
    wait_for(lambda: len(sidecar_log(namespace, "restart")) >= 200, "the sidecar streaming")
    kubectl("-n", namespace, "exec", "restart", "-c", "log-app", "--", "kill", "1")
    wait_for(
        lambda: sidecar_state(get("-n", namespace, "pod", "restart"))["restartCount"] == 1,
        "the sidecar's restart",
    )
    # Read while the pod runs: once it has completed, the kubelet may remove the exited instance.
    before = sidecar_log(namespace, "restart", previous=True)
    pod = succeeded(namespace, "restart")
    assert sidecar_state(pod)["restartCount"] == 1
    after = sidecar_log(namespace, "restart")
    assert before + after[:-1] == numbered(written(after)), "none lost, none repeated"
    MEASURED["sidecar restart: lines before / after"] = len(before)


def node_log_lines(pod: dict[str, Any], container: str) -> list[bytes]:
    """The container's log as the node keeps it, rotated files included (`kubectl logs` shows only the
    current file): what a node log agent ships."""
    return [line for _, line in container_log(log_directory(pod, container))]


def seconds_between(earlier: str, later: str) -> float:
    return (datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds()


def test_a_job_ending_with_a_100_mb_burst_gets_every_line_at_the_default_resources(namespace: str) -> None:
    if not os.access(POD_LOGS, os.R_OK | os.X_OK):
        pytest.skip(
            f"reading the node's container logs needs {POD_LOGS} (CI's test kit runs its node here, as root)"
        )
    count = 2_000_000  # 54 bytes a line: 108 MB, written as fast as sed goes, then the app exits
    run_to_completion(
        "burst",
        f"echo start >> app.log; sleep 2; seq 1 {count} | sed 's/^/line padded to fifty bytes of text /' "
        ">> app.log; echo the last line >> app.log",
        namespace,
    )
    pod = succeeded(namespace, "burst")
    sidecar = sidecar_state(pod)["state"]["terminated"]
    app = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (sidecar["exitCode"], sidecar["reason"]) == (0, "Completed"), (
        "drained, not killed at the grace end"
    )
    lines = node_log_lines(pod, "log-app")
    expected = [
        b"start",
        *(b"line padded to fifty bytes of text %d" % i for i in range(1, count + 1)),
        b"the last line",
    ]
    assert len(lines) == len(expected) and lines == expected, "every line once, none cut"
    MEASURED["100 MB final burst: the sidecar's exit after the app's, s"] = seconds_between(
        app["finishedAt"], sidecar["finishedAt"]
    )
    MEASURED["100 MB final burst: app start to sidecar exit, s"] = seconds_between(
        app["startedAt"], sidecar["finishedAt"]
    )


def test_a_log_volume_over_its_size_gets_the_pod_evicted_naming_the_volume(namespace: str) -> None:
    """sidecar.example/log-volume-size: 10Mi, and an app that writes 23 MB: the kubelet evicts the pod, as
    docs/logs.md says."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "full",
            "annotations": {LOG_PATH: "/var/log/app.log", "sidecar.example/log-volume-size": "10Mi"},
        },
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": IMAGE,
                    "command": ["sh", "-c", "seq 1 3000000 >> /var/log/app.log; sleep 3600"],
                }
            ]
        },
    }
    apply(pod, namespace)
    created = time.monotonic()

    def evicted() -> dict[str, Any] | None:
        status: dict[str, Any] = get("-n", namespace, "pod", "full")["status"]
        return status if status.get("phase") == "Failed" else None

    status = wait_for(evicted, "the eviction", timeout=180)
    assert status["reason"] == "Evicted"
    assert 'EmptyDir volume "sidecar-logs" exceeds the limit "10Mi"' in status["message"]
    MEASURED["a log volume over its 10Mi: created to evicted, s"] = time.monotonic() - created


def test_the_sidecar_benchmark_measures_both_programs(cluster: None, tmp_path: Path) -> None:
    """bench/sidecar.py, briefly: it reports each figure for the previous program and the current one (the
    figures are the benchmark's to judge, not the test's)."""
    if not os.access(POD_LOGS, os.R_OK | os.X_OK):
        pytest.skip(
            f"the sidecar's benchmark reads the node's {POD_LOGS} (CI's test kit runs its node here, as root)"
        )
    out = tmp_path / "sidecar.json"
    args = ["--megabytes", "5", "--lines", "10", "--idle-seconds", "2", "--json", str(out)]
    result = subprocess.run(
        [sys.executable, "-m", "bench.sidecar", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    print(result.stdout)
    assert result.returncode == 0, result.stderr
    previous, current = json.loads(out.read_text())
    assert (previous["program"], current["program"]) == ("previous", "current")
    for figures in (previous, current):
        assert figures["burst_mb"] > 4 and figures["drain_mb_per_s"] > 0 and figures["latency_p50_s"] > 0
        assert figures["idle_rss_kib"] > 0
