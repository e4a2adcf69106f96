"""The log volume's size: sidecar.example/log-volume-size (or the server's default) becomes the emptyDir's
sizeLimit and an ephemeral-storage request of the sidecar, within the server's maximum; the API server
accepts what the webhook writes; the sidecar's own state volume is out of any log path's reach."""

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from tests.apiserver import control_plane
from tests.kube import apply, container
from webhook.annotations import LOG_PATH, LOG_VOLUME_SIZE, STATE_DIR
from webhook.engine import decide_pod
from webhook.settings import Settings


def make_pod(annotations: dict[str, str], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "alpine"}], **spec},
    }


def injected(pod: dict[str, Any], settings: Settings) -> dict[str, Any]:
    decision = decide_pod(pod, settings)
    assert decision.allowed, decision.message
    return apply(pod, list(decision.patch))


def volumes(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in pod["spec"]["volumes"]}


def ephemeral_request(pod: dict[str, Any], name: str) -> str | None:
    requests: dict[str, str] = container(pod, name)["resources"]["requests"]
    return requests.get("ephemeral-storage")


def test_without_a_size_the_log_volume_has_no_limit_and_no_disk_is_requested(settings: Settings) -> None:
    pod = injected(make_pod({LOG_PATH: "/var/log/app.log"}), settings)
    assert volumes(pod)["sidecar-logs"]["emptyDir"] == {}
    assert ephemeral_request(pod, "log-app") is None


def test_the_size_limits_the_volume_and_the_sidecar_requests_it_for_the_scheduler(settings: Settings) -> None:
    pod = injected(make_pod({LOG_PATH: "/var/log/app.log", LOG_VOLUME_SIZE: "500Mi"}), settings)
    assert volumes(pod)["sidecar-logs"]["emptyDir"] == {"sizeLimit": "500Mi"}
    assert ephemeral_request(pod, "log-app") == "500Mi"
    assert "ephemeral-storage" not in container(pod, "log-app")["resources"]["limits"], (
        "a limit would count the container's own log too, and evict it for that"
    )


def test_each_sized_volume_is_requested_once(settings: Settings) -> None:
    files = "/a/1.log,/a/2.log,/b/3.log"
    pod = injected(make_pod({LOG_PATH: files, LOG_VOLUME_SIZE: "1Gi"}), settings)
    assert [v["emptyDir"] for n, v in volumes(pod).items() if n.startswith("sidecar-logs")] == [
        {"sizeLimit": "1Gi"},
        {"sizeLimit": "1Gi"},
    ]
    assert [ephemeral_request(pod, name) for name in ("log-1", "log-2", "log-3")] == ["1Gi", None, "1Gi"]


def test_the_servers_default_applies_and_the_annotation_overrides_it(settings: Settings) -> None:
    sized = settings.model_copy(update={"log_volume_size": "2Gi"})
    default = injected(make_pod({LOG_PATH: "/var/log/app.log"}), sized)
    chosen = injected(make_pod({LOG_PATH: "/var/log/app.log", LOG_VOLUME_SIZE: "100Mi"}), sized)
    assert volumes(default)["sidecar-logs"]["emptyDir"] == {"sizeLimit": "2Gi"}
    assert volumes(chosen)["sidecar-logs"]["emptyDir"] == {"sizeLimit": "100Mi"}


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("lots", "is not a Kubernetes quantity"),
        ("-1Gi", "is negative"),
        ("0", "is 0, which would get the pod evicted at the log's first byte"),
        ("500m", "is not a whole number of bytes"),
        ("11Gi", "is above the maximum of 10Gi that this webhook allows"),
    ],
)
def test_a_bad_size_is_denied_naming_annotation_value_and_expectation(
    settings: Settings, value: str, problem: str
) -> None:
    decision = decide_pod(make_pod({LOG_PATH: "/var/log/app.log", LOG_VOLUME_SIZE: value}), settings)
    assert not decision.allowed
    assert decision.message.startswith(f'annotation {LOG_VOLUME_SIZE}: "{value}" {problem}')
    assert decision.message.endswith('expected a disk quantity of at most 10Gi, e.g. "500Mi"')


def test_a_size_for_a_directory_on_the_pods_own_volume_is_ignored_with_a_warning(settings: Settings) -> None:
    pod = make_pod(
        {LOG_PATH: "/var/log/app.log", LOG_VOLUME_SIZE: "1Gi"},
        containers=[{"name": "app", "volumeMounts": [{"name": "data", "mountPath": "/var/log"}]}],
        volumes=[{"name": "data", "emptyDir": {"sizeLimit": "5Gi"}}],
    )
    decision = decide_pod(pod, settings)
    assert decision.allowed
    assert decision.warnings == (
        f"{LOG_VOLUME_SIZE} ignored for /var/log: it is on the pod's own volume 'data', whose size the pod "
        "sets itself",
    )
    result = apply(pod, list(decision.patch))
    assert volumes(result)["data"] == {"name": "data", "emptyDir": {"sizeLimit": "5Gi"}}
    assert ephemeral_request(result, "log-app") is None


@pytest.mark.parametrize("size", ["0", "20Gi"])
def test_a_default_size_outside_the_maximum_is_refused_at_startup(size: str) -> None:
    with pytest.raises(ValidationError, match="log_volume_size"):
        Settings(log_volume_size=size)


@pytest.mark.parametrize("path", [f"{STATE_DIR}/app.log", f"{STATE_DIR}/x/app.log"])
def test_no_log_directory_may_be_the_sidecars_own_state_directory(settings: Settings, path: str) -> None:
    decision = decide_pod(make_pod({LOG_PATH: path}), settings)
    assert not decision.allowed
    assert f"under {STATE_DIR}, a protected directory" in decision.message


@pytest.fixture(scope="module")
def api() -> Iterator[httpx.Client]:
    with control_plane() as plane, plane.client() as client:
        yield client


def test_the_api_server_stores_the_sized_volume_and_the_request(
    api: httpx.Client, settings: Settings
) -> None:
    pod = injected(make_pod({LOG_PATH: "/a/app.log,/b/app.log", LOG_VOLUME_SIZE: "750Mi"}), settings)
    response = api.post("/api/v1/namespaces/default/pods", params={"dryRun": "All"}, json=pod)
    assert response.status_code == 201, response.text
    stored = response.json()
    assert volumes(stored)["sidecar-logs"]["emptyDir"] == {"sizeLimit": "750Mi"}
    assert volumes(stored)["sidecar-state"]["emptyDir"] == {}
    assert ephemeral_request(stored, "log-app") == "750Mi"
    assert [m["mountPath"] for m in container(stored, "log-app-2")["volumeMounts"]][:2] == ["/b", STATE_DIR]
