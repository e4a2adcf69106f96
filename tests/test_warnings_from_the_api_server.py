"""The warning webhook behind a real kube-apiserver: `kubectl apply` shows its warnings, and nothing it
is sent is ever refused or changed."""

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.apiserver import ControlPlane, control_plane
from tests.server import RunningServer, running_server

LOG_PATH = "sidecar.example/log-path"
MISPLACED = (
    "Warning: sidecar.example/log-path is in metadata.annotations, which the webhook never sees: left "
    "unchanged; put it in spec.template.metadata.annotations to get the sidecar"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("warnings") / "certs") as running:
        yield running


@pytest.fixture(scope="module")
def api(server: RunningServer) -> Iterator[ControlPlane]:
    """A control plane with deploy/'s webhook configuration calling `server`, as `certs manifests --url`
    prints it: both webhooks, each at its path."""
    printed = subprocess.run(
        [
            *(sys.executable, "-m", "webhook", "certs", "manifests"),
            *("--dir", str(server.cert_dir), "--url", f"https://127.0.0.1:{server.port}"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    with control_plane() as plane:
        plane.kubectl("apply", "-f", "-", input=printed.stdout)
        # The API server starts calling a new configuration within a moment of its creation, not at once.
        deadline = time.monotonic() + 30
        while MISPLACED not in kubectl_apply(
            plane, deployment("probe", on_workload=True), "--dry-run=server"
        ):
            assert time.monotonic() < deadline, "the API server never called the warning webhook"
            time.sleep(0.1)
        yield plane


def kubectl_apply(api: ControlPlane, manifest: dict[str, Any], *flags: str) -> str:
    """`kubectl apply -f -`; what it printed on stderr (where kubectl prints warnings), after success."""
    result = subprocess.run(
        [str(api.kubectl_path), "--kubeconfig", str(api.kubeconfig), "apply", "-f", "-", *flags],
        input=yaml.safe_dump(manifest),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stderr


def deployment(name: str, *, on_workload: bool) -> dict[str, Any]:
    annotations = {LOG_PATH: "/var/log/app.log"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, **({"annotations": annotations} if on_workload else {})},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {
                    "labels": {"app": name},
                    **({} if on_workload else {"annotations": annotations}),
                },
                "spec": {"containers": [{"name": "app", "image": "docker.io/library/busybox:1.37"}]},
            },
        },
    }


def test_kubectl_apply_of_a_deployment_annotated_on_its_own_metadata_warns_and_creates_it(
    api: ControlPlane,
) -> None:
    printed = kubectl_apply(api, deployment("misplaced", on_workload=True))
    assert printed.splitlines() == [MISPLACED]
    assert api.kubectl("get", "deployment", "misplaced", "-o", "name") == "deployment.apps/misplaced\n"
    created = yaml.safe_load(api.kubectl("get", "deployment", "misplaced", "-o", "yaml"))
    template = created["spec"]["template"]
    assert [c["name"] for c in template["spec"]["containers"]] == ["app"], "left unchanged"
    assert LOG_PATH not in (template["metadata"].get("annotations") or {})
    # Changed and applied again (an UPDATE; unchanged, kubectl sends nothing), it is warned of again.
    changed = deployment("misplaced", on_workload=True)
    changed["metadata"]["labels"] = {"revision": "2"}
    assert kubectl_apply(api, changed).splitlines() == [MISPLACED]


def test_kubectl_apply_of_a_deployment_annotated_on_its_pod_template_gets_no_warning(
    api: ControlPlane,
) -> None:
    assert kubectl_apply(api, deployment("right", on_workload=False)) == ""
    assert api.kubectl("get", "deployment", "right", "-o", "name") == "deployment.apps/right\n"


@pytest.mark.parametrize("kind", ["StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"])
def test_every_workload_kind_annotated_on_its_own_metadata_is_warned_of(api: ControlPlane, kind: str) -> None:
    name = kind.lower()
    template = deployment(name, on_workload=False)["spec"]["template"]
    template["metadata"].pop("annotations")
    spec: dict[str, Any] = {"selector": {"matchLabels": {"app": name}}, "template": template}
    group = "apps/v1"
    if kind == "StatefulSet":
        spec["serviceName"] = name
    if kind in ("Job", "CronJob"):
        group = "batch/v1"
        template["spec"]["restartPolicy"] = "Never"
        spec = {"template": template}
        if kind == "CronJob":
            spec = {"schedule": "0 * * * *", "jobTemplate": {"spec": spec}}
    workload = {
        "apiVersion": group,
        "kind": kind,
        "metadata": {"name": name, "annotations": {LOG_PATH: "/var/log/app.log"}},
        "spec": spec,
    }
    (warning,) = kubectl_apply(api, workload, "--dry-run=server").splitlines()
    assert warning.startswith(f"Warning: {LOG_PATH} is in metadata.annotations, which the webhook never sees")


def test_a_pod_with_a_misspelled_annotation_is_warned_of_and_created(api: ControlPlane) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "typo", "annotations": {"sidecar.example/logpath": "/var/log/app.log"}},
        "spec": {"containers": [{"name": "app", "image": "docker.io/library/busybox:1.37"}]},
    }
    assert kubectl_apply(api, pod, "--dry-run=server").splitlines() == [
        'Warning: annotation "sidecar.example/logpath" is not one sidecar-webhook knows and does nothing: '
        "did you mean sidecar.example/log-path?"
    ]


def test_a_pod_with_log_path_and_a_misspelled_annotation_is_injected_and_warned_of_once(
    api: ControlPlane,
) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "typo-injected",
            "annotations": {LOG_PATH: "/var/log/app.log", "sidecar.example/cpu-requests": "100m"},
        },
        "spec": {"containers": [{"name": "app", "image": "docker.io/library/busybox:1.37"}]},
    }
    printed = kubectl_apply(api, pod, "--dry-run=server", "-o", "yaml")
    assert printed.splitlines() == [
        'Warning: annotation "sidecar.example/cpu-requests" is not one sidecar-webhook knows and does '
        "nothing: did you mean sidecar.example/cpu-request?"
    ]


def test_the_warning_webhook_never_blocks_a_workload_when_the_server_is_away(
    api: ControlPlane, tmp_path: Path
) -> None:
    configuration = yaml.safe_load(
        api.kubectl("get", "mutatingwebhookconfiguration", "sidecar-webhook", "-o", "yaml")
    )
    hook = configuration["webhooks"][1]
    assert hook["failurePolicy"] == "Ignore"
    away = {**configuration, "metadata": {"name": "sidecar-webhook-away"}}
    away["webhooks"] = [{**hook, "clientConfig": {**hook["clientConfig"], "url": "https://127.0.0.1:1/warn"}}]
    api.kubectl("apply", "-f", "-", input=yaml.safe_dump(away))
    try:
        printed = kubectl_apply(api, deployment("while-away", on_workload=True), "--dry-run=server")
        assert MISPLACED in printed
    finally:
        api.kubectl("delete", "mutatingwebhookconfiguration", "sidecar-webhook-away")
