"""The webhook installed on a real cluster, and what only a node shows: the sidecar streams the log, stops
when asked, lets a Job complete, runs under Pod Security "restricted" and a ResourceQuota; the webhook never
blocks a pod it has no business with, survives its own rolling restart, and uninstalls cleanly.

The tests run in file order: the last one uninstalls."""

import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cluster import (
    INSTALL,
    MEASURED,
    NAMESPACE,
    ROOT,
    KubectlError,
    apply,
    container_states,
    create,
    get,
    install,
    kubectl,
    logs,
    wait_for,
    webhook_pods,
)

SEED_POD = ROOT / "tests" / "fixtures" / "manifests" / "01-seed-pod.yaml"
LOG_PATH = "sidecar.example/log-path"
IMAGE = "docker.io/library/busybox:1.37"
# `date`'s default format: the seed app writes one every 5 s.
DATE = re.compile(r"^\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \w+ \d{4}$")
# An app that stops on SIGTERM, as a well-behaved one does; it writes a line a second until then.
STOPS_ON_SIGTERM = "trap 'exit 0' TERM; while true; do date >> /var/log/app.log; sleep 1 & wait $!; done"


def pod(
    name: str, script: str, *, annotated: bool = True, spec: dict[str, Any] | None = None, **metadata: Any
) -> dict[str, Any]:
    """A pod whose app runs `script` in busybox's sh, annotated to get the log sidecar."""
    annotations = {LOG_PATH: "/var/log/app.log"} if annotated else {}
    app = {"name": "app", "image": IMAGE, "command": ["sh", "-c", script]}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations, **metadata},
        "spec": {"containers": [app], "terminationGracePeriodSeconds": 30, **(spec or {})},
    }


def container_names(namespace: str, name: str) -> list[str]:
    spec = get("-n", namespace, "pod", name)["spec"]
    return [c["name"] for c in [*spec.get("initContainers", []), *spec["containers"]]]


def wait_ready(namespace: str, name: str) -> None:
    kubectl("-n", namespace, "wait", "--for=condition=Ready", f"pod/{name}", "--timeout=120s", timeout=130)


def test_the_seed_pod_streams_the_dates_and_new_ones_keep_arriving(namespace: str) -> None:
    # Timed from the pod's creation: the install's own time is "install applied and rolled out", and the
    # tests of other files may run between the install and this one.
    created = time.monotonic()
    kubectl("-n", namespace, "apply", "-f", str(SEED_POD))
    assert container_names(namespace, "sidecar") == ["main-container", "log-app"]
    first = wait_for(lambda: logs(namespace, "sidecar", "log-app"), "the first line in the sidecar's log")
    MEASURED["the seed pod from kubectl apply to its first line in the sidecar's log, s"] = (
        time.monotonic() - created
    )

    def longer() -> list[str] | None:
        lines = logs(namespace, "sidecar", "log-app")
        return lines if len(lines) > len(first) else None

    more = wait_for(longer, "a new line in the sidecar's log", timeout=30)
    assert all(DATE.match(line) for line in more), more  # the app's lines, and nothing else
    assert more[: len(first)] == first


def test_a_job_completes_seconds_after_its_app_and_its_sidecar_exits_0_with_every_line(
    namespace: str,
) -> None:
    lines = [f"line {i}" for i in range(1, 31)] + ["the last line"]
    script = (
        "for i in $(seq 1 30); do echo line $i >> /var/log/app.log; sleep 0.1; done; "
        "echo the last line >> /var/log/app.log"
    )
    template = pod("unused", script)
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "three-seconds"},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"annotations": template["metadata"]["annotations"]},
                "spec": {**template["spec"], "restartPolicy": "Never"},
            },
        },
    }
    created = time.monotonic()
    apply(job, namespace)
    kubectl(
        "-n",
        namespace,
        "wait",
        "--for=condition=Complete",
        "job/three-seconds",
        "--timeout=120s",
        timeout=130,
    )
    MEASURED["a 3-second Job from creation to Complete, s"] = time.monotonic() - created

    (job_pod,) = get("-n", namespace, "pods", "-l", "job-name=three-seconds")["items"]
    name = job_pod["metadata"]["name"]
    states = container_states(job_pod)
    assert set(states) == {"app", "log-app"}
    assert [c["name"] for c in job_pod["spec"]["initContainers"]] == ["log-app"], "a native sidecar"
    assert states["app"]["terminated"]["exitCode"] == 0
    # Stopped by its own SIGTERM trap, not SIGKILLed at the end of the grace period (137, reason Error).
    assert (states["log-app"]["terminated"]["exitCode"], states["log-app"]["terminated"]["reason"]) == (
        0,
        "Completed",
    )
    assert logs(namespace, name, "log-app") == lines, "every line the app wrote, the last one included"


def test_deleting_an_injected_pod_whose_app_stops_on_sigterm_takes_seconds_and_every_container_exits_0(
    namespace: str,
) -> None:
    # A finalizer keeps the pod's object after its containers stop, so their exit codes can be read.
    apply(pod("held", STOPS_ON_SIGTERM, finalizers=["e2e.sidecar.example/hold"]), namespace)
    apply(pod("timed", STOPS_ON_SIGTERM), namespace)
    for name in ("held", "timed"):
        wait_ready(namespace, name)
        wait_for(lambda name=name: logs(namespace, name, "log-app"), f"the sidecar of {name} streaming")

    started = time.monotonic()
    kubectl("-n", namespace, "delete", "pod", "timed", "--wait=true", "--timeout=90s", timeout=100)
    MEASURED["kubectl delete pod (an app that stops on SIGTERM), s"] = time.monotonic() - started

    kubectl("-n", namespace, "delete", "pod", "held", "--wait=false")
    try:

        def all_stopped() -> dict[str, dict[str, Any]] | None:
            states = container_states(get("-n", namespace, "pod", "held"))
            return states if states and all("terminated" in state for state in states.values()) else None

        states = wait_for(all_stopped, "every container of the deleted pod to stop")
        exits = {name: (s["terminated"]["exitCode"], s["terminated"]["reason"]) for name, s in states.items()}
        assert exits == {"app": (0, "Completed"), "log-app": (0, "Completed")}
    finally:
        kubectl(
            "-n",
            namespace,
            "patch",
            "pod",
            "held",
            "--type=json",
            "-p",
            '[{"op":"remove","path":"/metadata/finalizers"}]',
        )


RESTRICTED_APP = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}
NON_ROOT_POD = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def test_a_restricted_namespace_admits_and_runs_an_injected_pod_of_a_non_root_app(namespace: str) -> None:
    kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    restricted = pod("restricted", STOPS_ON_SIGTERM, spec={"securityContext": NON_ROOT_POD})
    restricted["spec"]["containers"][0]["securityContext"] = RESTRICTED_APP
    apply(restricted, namespace)  # Pod Security admission runs after the webhook: it sees the sidecar
    assert container_names(namespace, "restricted") == ["app", "log-app"]
    wait_ready(namespace, "restricted")
    lines = wait_for(lambda: logs(namespace, "restricted", "log-app"), "the sidecar showing the app's lines")
    assert all(DATE.match(line) for line in lines), lines


# An app that keeps its log to itself: umask 077 makes the file rw------- (0600), owned by its uid.
PRIVATE_LOG = "umask 077; " + STOPS_ON_SIGTERM


def private_log_pod(name: str, *users: int) -> dict[str, Any]:
    """A restricted pod whose containers (the first writes the log) run as `users`, all targets."""
    manifest = pod(name, PRIVATE_LOG, spec={"securityContext": NON_ROOT_POD})
    app = manifest["spec"]["containers"][0]
    manifest["spec"]["containers"] = [
        {
            **app,
            "name": f"app-{uid}",
            "securityContext": {**RESTRICTED_APP, "runAsUser": uid, "runAsGroup": uid},
        }
        for uid in users
    ]
    return manifest


def test_the_sidecar_shows_a_log_its_app_writes_0600_as_uid_1000(namespace: str) -> None:
    apply(private_log_pod("private", 1000), namespace)
    wait_ready(namespace, "private")
    lines = wait_for(lambda: logs(namespace, "private", "log-app"), "the sidecar showing the private log")
    assert all(DATE.match(line) for line in lines), lines
    mode = kubectl(
        "-n", namespace, "exec", "private", "-c", "app-1000", "--", "stat", "-c", "%a %u", "/var/log/app.log"
    )
    assert mode.split() == ["600", "1000"]

    # The control: targets of different users keep the sidecar at 65534, which cannot read that file.
    apply(private_log_pod("two-users", 1000, 2000), namespace)
    wait_ready(namespace, "two-users")
    wait_for(
        lambda: kubectl(
            "-n", namespace, "exec", "two-users", "-c", "app-1000", "--", "ls", "/var/log/app.log"
        ),
        "the app to write its log",
    )
    with pytest.raises(KubectlError, match="Permission denied"):
        kubectl("-n", namespace, "exec", "two-users", "-c", "log-app", "--", "cat", "/var/log/app.log")


def test_a_namespace_with_a_resource_quota_accepts_an_injected_pod(namespace: str) -> None:
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "compute"},
        "spec": {
            "hard": {"requests.cpu": "1", "requests.memory": "1Gi", "limits.cpu": "2", "limits.memory": "2Gi"}
        },
    }
    apply(quota, namespace)
    wait_for(
        lambda: get("-n", namespace, "resourcequota", "compute").get("status", {}).get("hard"), "the quota"
    )
    quoted = pod("quoted", STOPS_ON_SIGTERM)
    quoted["spec"]["containers"][0]["resources"] = {
        "requests": {"cpu": "100m", "memory": "64Mi"},
        "limits": {"cpu": "200m", "memory": "128Mi"},
    }
    apply(quoted, namespace)  # a container without requests and limits would be refused
    wait_ready(namespace, "quoted")

    def counted() -> dict[str, str] | None:
        used: dict[str, str] = get("-n", namespace, "resourcequota", "compute")["status"].get("used", {})
        return used if used.get("requests.cpu") not in (None, "0") else None

    used = wait_for(counted, "the quota to count the pod")
    assert (used["requests.cpu"], used["limits.cpu"]) == ("105m", "250m"), "the app's and the sidecar's"
    assert wait_for(lambda: logs(namespace, "quoted", "log-app"), "the sidecar streaming")


def test_with_the_webhook_scaled_to_zero_a_pod_without_the_annotation_is_still_created(
    namespace: str,
) -> None:
    kubectl("-n", NAMESPACE, "scale", "deploy/sidecar-webhook", "--replicas=0")
    try:
        wait_for(lambda: webhook_pods() == [], "the webhook's pods to be gone")
        apply(pod("plain", STOPS_ON_SIGTERM, annotated=False), namespace)
        assert container_names(namespace, "plain") == ["app"]
        try:
            apply(pod("annotated", STOPS_ON_SIGTERM), namespace)
            refused = ""
        except KubectlError as error:
            refused = str(error)
        # failurePolicy Fail: a pod that asked for its log stream never starts without it.
        assert 'failed calling webhook "log-sidecar.sidecar.example"' in refused
    finally:
        kubectl("-n", NAMESPACE, "scale", "deploy/sidecar-webhook", "--replicas=2")
        kubectl("-n", NAMESPACE, "rollout", "status", "deploy/sidecar-webhook", "--timeout=180s", timeout=190)


def restart_finished(namespace: str = NAMESPACE) -> bool:
    deployment = get("-n", namespace, "deploy", "sidecar-webhook")
    status, wanted = deployment.get("status", {}), deployment["spec"]["replicas"]
    pods = webhook_pods(namespace)
    return (
        status.get("observedGeneration", 0) >= deployment["metadata"]["generation"]
        and status.get("updatedReplicas")
        == status.get("readyReplicas")
        == status.get("availableReplicas")
        == wanted
        and len(pods) == wanted
        and not any(p["metadata"].get("deletionTimestamp") for p in pods)
    )


def create_pods_until(finished: Callable[[], bool], namespace: str, prefix: str) -> tuple[int, list[str]]:
    """Create annotated pods one after another until `finished()` (checked before each creation, so the
    last one comes after it); return how many were created and every refusal. The pods are never
    scheduled: what is tested is admission, not the node's capacity."""
    manifest = pod("unused", STOPS_ON_SIGTERM, spec={"nodeSelector": {"e2e.sidecar.example/nowhere": "true"}})
    del manifest["metadata"]["name"]
    manifest["metadata"]["generateName"] = prefix
    created, failures = 0, []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        done = finished()
        try:
            create(manifest, namespace)
            created += 1
        except KubectlError as error:
            failures.append(str(error))
        if done:
            return created, failures
    raise AssertionError(f"not finished within 300 s; {created} pods created, refusals: {failures[:3]}")


def assert_all_injected(namespace: str, created: int) -> None:
    pods = get("-n", namespace, "pods")["items"]
    assert len(pods) == created
    assert all([c["name"] for c in p["spec"]["containers"]] == ["app", "log-app"] for p in pods)


def test_a_rolling_restart_of_the_webhook_fails_no_pod_creation(namespace: str) -> None:
    kubectl("-n", NAMESPACE, "rollout", "restart", "deploy/sidecar-webhook")
    created, failures = create_pods_until(restart_finished, namespace, "during-restart-")
    MEASURED["pods created during the webhook's rolling restart"] = created
    assert failures == []
    assert created >= 10, "the loop ran across the restart"
    assert_all_injected(namespace, created)


def test_upgrading_an_install_of_the_file_mode_loses_no_call(namespace: str, tmp_path: Path) -> None:
    """An install made before the webhook kept its own certificates (certificates from `certs create`,
    the Secret and the caBundle from `certs manifests | kubectl apply`), upgraded by applying deploy/
    while pods are being created."""
    install("down")
    cli, certs = Path(sys.executable).with_name("sidecar-webhook"), tmp_path / "certs"
    subprocess.run(
        [cli, "certs", "create", "--service", NAMESPACE, "--namespace", NAMESPACE, "--out", certs], check=True
    )
    kubectl("apply", "-k", str(ROOT / "deploy" / "overlays" / "bring-your-own-certs"))
    shipped = subprocess.run(
        [cli, "certs", "manifests", "--dir", certs], check=True, capture_output=True, text=True
    )
    kubectl("apply", "-f", "-", stdin=shipped.stdout)
    kubectl("-n", NAMESPACE, "rollout", "status", "deploy/sidecar-webhook", "--timeout=180s", timeout=190)

    with subprocess.Popen(
        ["bash", str(INSTALL), "apply"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as upgrade:
        created, failures = create_pods_until(
            lambda: upgrade.poll() is not None and restart_finished(), namespace, "during-upgrade-"
        )
        output = upgrade.communicate()[0]
    MEASURED["pods created during the upgrade from the file mode"] = created
    assert upgrade.returncode == 0, output
    assert failures == []
    assert created >= 10, "the loop ran across the upgrade"
    assert_all_injected(namespace, created)
    assert get("-n", NAMESPACE, "secret", "sidecar-webhook-certs")["data"], "now in the cluster mode"


def test_uninstalling_leaves_nothing_behind(namespace: str) -> None:
    install("down")
    assert kubectl("get", "namespace", NAMESPACE, "--ignore-not-found", "-o", "name") == ""
    cluster_wide = (
        "mutatingwebhookconfigurations,validatingwebhookconfigurations,clusterroles,clusterrolebindings,"
        "validatingadmissionpolicies,validatingadmissionpolicybindings"
    )
    assert kubectl("get", cluster_wide, "-l", "app.kubernetes.io/name=sidecar-webhook", "-o", "name") == ""
    assert (
        kubectl("get", "mutatingwebhookconfiguration", "sidecar-webhook", "--ignore-not-found", "-o", "name")
        == ""
    )
    apply(pod("after", STOPS_ON_SIGTERM), namespace)
    assert container_names(namespace, "after") == ["app"], "nothing intercepts pods any more"
