"""Pods that borrow a volume, injected by the engine, then created on a real kube-apiserver with server-side
dry-run: the readOnly and recursiveReadOnly the webhook carries over are what the API server accepts."""

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.apiserver import control_plane
from tests.kube import apply, container
from webhook.engine import decide_pod
from webhook.settings import Settings


@pytest.fixture(scope="module")
def api() -> Iterator[httpx.Client]:
    with control_plane() as plane, plane.client() as client:
        yield client


def dry_run_create(api: httpx.Client, pod: dict[str, Any]) -> dict[str, Any]:
    response = api.post("/api/v1/namespaces/default/pods", params={"dryRun": "All"}, json=pod)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def data_mount(pod: dict[str, Any], name: str) -> dict[str, Any]:
    """The container's mount of volume `data` (the ServiceAccount plugin adds a token mount beside it)."""
    (mount,) = [m for m in container(pod, name)["volumeMounts"] if m["name"] == "data"]
    return mount


def borrowing(first: dict[str, Any], mount_path: str = "/srv") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "borrowing", "annotations": {"sidecar.example/log-path": "/srv/logs/app.log"}},
        "spec": {
            "containers": [
                {
                    "name": "a",
                    "image": "alpine",
                    "volumeMounts": [{"name": "data", "mountPath": mount_path, **first}],
                },
                {"name": "b", "image": "alpine"},
            ],
            "volumes": [{"name": "data", "hostPath": {"path": "/srv"}}],
        },
    }


@pytest.mark.parametrize(
    "access",
    [
        {"readOnly": True},
        {"readOnly": True, "recursiveReadOnly": "Disabled"},
        {"readOnly": True, "recursiveReadOnly": "IfPossible"},
        {"readOnly": True, "recursiveReadOnly": "Enabled"},
        {"readOnly": False},
    ],
)
@pytest.mark.parametrize("mount_path", ["/srv", "/srv/logs"])
def test_the_api_server_accepts_the_mounts_the_webhook_copies_from_a_borrowed_volume(
    api: httpx.Client, settings: Settings, access: dict[str, Any], mount_path: str
) -> None:
    pod = borrowing(access, mount_path)
    decision = decide_pod(pod, settings)
    assert decision.allowed, decision.message
    created = dry_run_create(api, apply(pod, list(decision.patch)))
    added, sidecar = data_mount(created, "b"), data_mount(created, "log-app")
    assert added.get("readOnly", False) is access["readOnly"]
    assert sidecar["readOnly"] is True
    if access.get("recursiveReadOnly") in ("IfPossible", "Enabled"):
        assert added["recursiveReadOnly"] == sidecar["recursiveReadOnly"] == access["recursiveReadOnly"]
    else:
        assert added.get("recursiveReadOnly") in (None, "Disabled")
        assert sidecar.get("recursiveReadOnly") in (None, "Disabled")


def test_the_api_server_accepts_a_sidecar_reading_recursively_where_only_one_target_does(
    api: httpx.Client, settings: Settings
) -> None:
    pod = borrowing({"readOnly": True, "recursiveReadOnly": "Enabled"})
    pod["spec"]["containers"][1]["volumeMounts"] = [
        {"name": "data", "mountPath": "/srv/logs", "subPath": "logs"}
    ]
    decision = decide_pod(pod, settings)
    assert decision.allowed, decision.message
    created = dry_run_create(api, apply(pod, list(decision.patch)))
    sidecar = data_mount(created, "log-app")
    assert (sidecar["readOnly"], sidecar["recursiveReadOnly"]) == (True, "Enabled")
