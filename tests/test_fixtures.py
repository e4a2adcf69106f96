"""Every AdmissionReview recorded from a real kube-apiserver, answered and checked by its effect."""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.kube import (
    SERVICE_ACCOUNT_DIR,
    apply,
    container,
    fixture_names,
    keeps,
    load_review,
    patch_ops,
    restricted_violations,
    run_service_account_plugin,
    schema_errors,
    volume,
)
from webhook.admission import review
from webhook.settings import Settings
from webhook.sidecar import follow_command, state_file

GOLDEN = Path(__file__).parent / "golden"


@dataclass(frozen=True)
class Injected:
    sidecars: dict[str, str]  # sidecar name -> file it tails
    mounts: dict[str, str]  # app container -> log directory it must mount
    volume: str = "sidecar-logs"  # the volume holding the log directory
    source: str = "emptyDir"  # that volume's source
    read_only: bool = False  # whether the apps' mounts of it are read-only (copied to those added)
    native: bool = False
    user: tuple[int, int] = (65534, 65534)  # the sidecar's runAsUser, runAsGroup
    requests: tuple[str, str] = ("5m", "8Mi")  # the sidecar's cpu, memory (the defaults unless annotated)
    limits: tuple[str, str] = ("50m", "32Mi")
    warns: tuple[str, ...] = ()  # words of the one warning, if any


@dataclass(frozen=True)
class Allowed:
    reason: str


@dataclass(frozen=True)
class Denied:
    says: tuple[str, ...] = field(default_factory=tuple)


# The outcomes tests/fixtures/README.md gives, one per recorded review.
EXPECTED: dict[str, Injected | Allowed | Denied] = {
    "seed-pod": Injected({"log-app": "/var/log/app.log"}, {"main-container": "/var/log"}),
    "seed-pod-v1beta1": Injected({"log-app": "/var/log/app.log"}, {"main-container": "/var/log"}),
    "dry-run": Injected({"log-app": "/var/log/app.log"}, {"main-container": "/var/log"}),
    "no-annotation": Allowed("no-annotation"),
    "update-operation": Allowed("not-create"),
    "generate-name": Injected({"log-access": "/var/log/nginx/access.log"}, {"nginx": "/var/log/nginx"}),
    "no-volumes": Injected({"log-out": "/logs/out.log"}, {"app": "/logs"}),
    "multi-container": Injected(
        {"log-app": "/var/log/app/app.log"}, {"api": "/var/log/app", "worker": "/var/log/app"}
    ),
    "existing-log-mount": Injected({"log-app": "/var/log/app.log"}, {"app": "/var/log"}, volume="logs"),
    "bad-relative-path": Denied(("sidecar.example/log-path", '"logs/app.log"', "absolute")),
    "two-log-paths": Injected(
        {"log-app": "/var/log/app/app.log", "log-access": "/var/log/app/access.log"}, {"app": "/var/log/app"}
    ),
    "native-sidecar-present": Injected({"log-app": "/var/log/app.log"}, {"app": "/var/log"}),
    "job-like-never-restart": Injected({"log-report": "/work/report.log"}, {"report": "/work"}, native=True),
    # The pod runs as 10001 and sets no runAsGroup: the sidecar borrows the uid, its group is 65534.
    "restricted-pss": Injected(
        {"log-service": "/var/log/svc/service.log"}, {"svc": "/var/log/svc"}, user=(10001, 65534)
    ),
    "reinvocation-after-injection": Allowed("already-injected"),
    "per-pod-resources": Injected(
        {"log-app": "/var/log/app.log"},
        {"app": "/var/log"},
        requests=("100m", "8Mi"),
        limits=("100m", "64Mi"),
    ),
    "request-above-limit": Denied(
        ("sidecar.example/cpu-request", '"500m"', "above the limit", "sidecar.example/cpu-limit", '"0.2"')
    ),
    "resources-above-maximum": Denied(("sidecar.example/memory-limit", '"1Gi"', "maximum of 512Mi")),
    "app-user": Injected({"log-app": "/var/log/app/app.log"}, {"app": "/var/log/app"}, user=(1000, 3000)),
    "different-users": Injected(
        {"log-app": "/var/log/app.log"},
        {"api": "/var/log", "worker": "/var/log"},
        warns=("uid 65534", "different users", "api: 1000, worker: 2000", "sidecar.example/containers"),
    ),
    "root-app": Injected(
        {"log-app": "/var/log/app.log"}, {"app": "/var/log"}, warns=("uid 65534", "'app'", "root")
    ),
    # Container a mounts a hostPath read-only: b gets it read-only too, not writable.
    "read-only-borrow": Injected(
        {"log-app": "/data/app.log"},
        {"a": "/data", "b": "/data"},
        volume="data",
        source="hostPath",
        read_only=True,
    ),
    "log-in-a-secret": Denied(
        ("sidecar.example/log-path", '"/etc/creds/password"', "secret volume 'creds'", "pod's logs")
    ),
    "different-access": Denied(
        (
            "sidecar.example/log-path",
            '"/data/app.log"',
            "container 'writer' mounts it writable; container 'reader' mounts it read-only",
            "cannot tell which to give 'other'",
        )
    ),
}


def answer(name: str, settings: Settings) -> tuple[dict[str, Any], dict[str, Any]]:
    """The recorded review and the webhook's response to it."""
    recorded = load_review(name)
    reply = review(json.dumps(recorded).encode(), settings)
    assert reply.status_code == 200
    answered = json.loads(reply.body)
    assert answered["apiVersion"] == recorded["apiVersion"]
    assert answered["kind"] == "AdmissionReview"
    assert answered["response"]["uid"] == recorded["request"]["uid"]
    return recorded, answered["response"]


def test_every_recorded_review_has_an_expected_outcome() -> None:
    assert sorted(EXPECTED) == fixture_names()


def test_every_golden_file_belongs_to_a_recorded_review() -> None:
    assert sorted(p.stem for p in GOLDEN.glob("*.json")) == fixture_names()


@pytest.mark.parametrize("name", fixture_names())
def test_recorded_review_matches_its_golden_answer(name: str, settings: Settings) -> None:
    recorded, response = answer(name, settings)
    ops = patch_ops(response)
    result = {
        "allowed": response["allowed"],
        "status": response.get("status"),
        "warnings": response.get("warnings"),
        "pod": apply(recorded["request"]["object"], ops) if ops else None,
    }
    golden = GOLDEN / f"{name}.json"
    if os.environ.get("REFRESH_GOLDEN") == "1":
        golden.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    assert result == json.loads(golden.read_text())


@pytest.mark.parametrize("name", [n for n, e in EXPECTED.items() if isinstance(e, Allowed)])
def test_review_is_allowed_without_patch(name: str, settings: Settings) -> None:
    _, response = answer(name, settings)
    assert response["allowed"] is True
    assert "patch" not in response and "patchType" not in response and "status" not in response


@pytest.mark.parametrize("name", [n for n, e in EXPECTED.items() if isinstance(e, Denied)])
def test_review_is_denied_with_a_message_naming_annotation_value_and_expectation(
    name: str, settings: Settings
) -> None:
    expected = EXPECTED[name]
    assert isinstance(expected, Denied)
    _, response = answer(name, settings)
    assert response["allowed"] is False
    assert response["status"]["code"] == 400
    assert "patch" not in response
    for words in expected.says:
        assert words in response["status"]["message"]
    assert "expected" in response["status"]["message"]


INJECTED = [n for n, e in EXPECTED.items() if isinstance(e, Injected)]


@pytest.mark.parametrize("name", INJECTED)
def test_injected_pod_has_its_sidecars_mounts_and_volume(name: str, settings: Settings) -> None:
    expected = EXPECTED[name]
    assert isinstance(expected, Injected)
    recorded, response = answer(name, settings)
    original = recorded["request"]["object"]
    pod = apply(original, patch_ops(response))

    assert keeps(original, pod), "a field the user wrote was replaced or removed"
    assert pod["metadata"]["annotations"]["sidecar.example/injected"] == ",".join(expected.sidecars)
    where = pod["spec"]["initContainers" if expected.native else "containers"]
    for name_, file in expected.sidecars.items():
        sidecar = container(pod, name_)
        assert sidecar in where
        assert sidecar["command"] == follow_command(file, state_file(name_))
        assert "args" not in sidecar, "the path is data, never passed through a shell"
        assert sidecar["image"] == "docker.io/library/busybox:1.37"
        assert sidecar.get("restartPolicy") == ("Always" if expected.native else None)
        directory = file.rsplit("/", 1)[0]
        (log_mount,) = [m for m in sidecar["volumeMounts"] if m["mountPath"] == directory]
        assert log_mount == {"name": expected.volume, "mountPath": directory, "readOnly": True}
        resources = sidecar["resources"]
        assert resources == {
            "requests": dict(zip(("cpu", "memory"), expected.requests, strict=True)),
            "limits": dict(zip(("cpu", "memory"), expected.limits, strict=True)),
        }
        user = sidecar["securityContext"]["runAsUser"], sidecar["securityContext"]["runAsGroup"]
        assert user == expected.user
    if expected.native:
        assert pod["spec"]["initContainers"][0]["name"] in expected.sidecars, "a native sidecar starts first"
    for app, directory in expected.mounts.items():
        mounts = [m for m in container(pod, app)["volumeMounts"] if m["mountPath"] == directory]
        assert len(mounts) == 1 and mounts[0]["name"] == expected.volume, mounts
        assert mounts[0].get("readOnly", False) is expected.read_only, mounts
    assert expected.source in volume(pod, expected.volume)
    volume_names = [v["name"] for v in pod["spec"]["volumes"]]
    assert len(volume_names) == len(set(volume_names))


@pytest.mark.parametrize("name", INJECTED)
def test_injected_pod_is_valid_for_the_kubernetes_schema(name: str, settings: Settings) -> None:
    recorded, response = answer(name, settings)
    assert schema_errors(apply(recorded["request"]["object"], patch_ops(response))) == []


@pytest.mark.parametrize("name", INJECTED)
def test_sidecar_gets_no_service_account_token_when_the_plugin_runs_again(
    name: str, settings: Settings
) -> None:
    expected = EXPECTED[name]
    assert isinstance(expected, Injected)
    recorded, response = answer(name, settings)
    pod = run_service_account_plugin(apply(recorded["request"]["object"], patch_ops(response)))
    for sidecar in expected.sidecars:
        mounted = {m["name"] for m in container(pod, sidecar)["volumeMounts"]}
        assert not any(v.startswith("kube-api-access-") for v in mounted)
        at_token_dir = [
            m for m in container(pod, sidecar)["volumeMounts"] if m["mountPath"] == SERVICE_ACCOUNT_DIR
        ]
        automount = recorded["request"]["object"]["spec"].get("automountServiceAccountToken", True)
        assert len(at_token_dir) == (1 if automount else 0)
        for mount in at_token_dir:
            assert volume(pod, mount["name"]) == {"name": mount["name"], "emptyDir": {}}


@pytest.mark.parametrize("name", INJECTED)
def test_second_call_after_the_plugins_ran_again_adds_nothing(name: str, settings: Settings) -> None:
    recorded, response = answer(name, settings)
    pod = run_service_account_plugin(apply(recorded["request"]["object"], patch_ops(response)))
    recorded["request"]["object"] = pod
    again = json.loads(review(json.dumps(recorded).encode(), settings).body)["response"]
    assert again["allowed"] is True
    assert patch_ops(again) == []


@pytest.mark.parametrize("name", INJECTED)
def test_injection_keeps_a_compliant_pod_compliant_with_pod_security_restricted(
    name: str, settings: Settings
) -> None:
    recorded, response = answer(name, settings)
    before = set(restricted_violations(recorded["request"]["object"]))
    after = set(restricted_violations(apply(recorded["request"]["object"], patch_ops(response))))
    assert after <= before
    if name in ("restricted-pss", "app-user"):
        assert before == after == set()


@pytest.mark.parametrize("name", INJECTED)
def test_injected_pod_gets_exactly_the_warnings_its_case_calls_for(name: str, settings: Settings) -> None:
    expected = EXPECTED[name]
    assert isinstance(expected, Injected)
    warnings = answer(name, settings)[1].get("warnings", [])
    if not expected.warns:
        assert warnings == []
        return
    (warning,) = warnings
    for words in expected.warns:
        assert words in warning
