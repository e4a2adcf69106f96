"""What the tests need of Kubernetes: recorded reviews, the patch applied, the plugins that run
after a webhook, Pod Security "restricted", and the API schema."""

import base64
import copy
import json
from pathlib import Path
from typing import Any

import jsonpatch
import kubernetes_validate

FIXTURES = Path(__file__).parent / "fixtures"
ADMISSION = FIXTURES / "admission"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
# The oldest Kubernetes we support and the newest schema kubernetes-validate ships.
SCHEMA_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())

Pod = dict[str, Any]


def fixture_names() -> list[str]:
    return sorted(path.stem for path in ADMISSION.glob("*.json"))


def load_review(name: str) -> dict[str, Any]:
    return json.loads((ADMISSION / f"{name}.json").read_text())


def review_with(
    pod: Pod, operation: str = "CREATE", api_version: str = "admission.k8s.io/v1"
) -> dict[str, Any]:
    """A minimal AdmissionReview for `pod`, shaped like the API server's."""
    return {
        "apiVersion": api_version,
        "kind": "AdmissionReview",
        "request": {
            "uid": "00000000-0000-0000-0000-000000000001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": operation,
            "namespace": "default",
            "object": pod,
        },
    }


def patch_ops(response: dict[str, Any]) -> list[dict[str, Any]]:
    """The JSONPatch of an AdmissionReview response ([] when it has none)."""
    if "patch" not in response:
        assert "patchType" not in response
        return []
    assert response["patchType"] == "JSONPatch"
    ops: list[dict[str, Any]] = json.loads(base64.b64decode(response["patch"], validate=True))
    return ops


def apply(pod: Pod, ops: list[dict[str, Any]]) -> Pod:
    assert all(op["op"] == "add" for op in ops), "the webhook only adds"
    patched: Pod = jsonpatch.apply_patch(pod, ops)
    return patched


def all_containers(pod: Pod) -> list[dict[str, Any]]:
    spec = pod.get("spec", {})
    return [
        *spec.get("initContainers", []),
        *spec.get("containers", []),
        *spec.get("ephemeralContainers", []),
    ]


def container(pod: Pod, name: str) -> dict[str, Any]:
    (found,) = [c for c in all_containers(pod) if c["name"] == name]
    return found


def volume(pod: Pod, name: str) -> dict[str, Any]:
    (found,) = [v for v in pod["spec"].get("volumes", []) if v["name"] == name]
    return found


def run_service_account_plugin(pod: Pod) -> Pod:
    """What the ServiceAccount admission plugin does when the API server re-runs it after a webhook:
    mount the pod's token volume into every container without a mount at SERVICE_ACCOUNT_DIR."""
    pod = copy.deepcopy(pod)
    token = [v["name"] for v in pod["spec"].get("volumes", []) if v["name"].startswith("kube-api-access-")]
    if not token:
        return pod
    mount = {"name": token[0], "mountPath": SERVICE_ACCOUNT_DIR, "readOnly": True}
    for c in [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]:
        if not any(m["mountPath"] == SERVICE_ACCOUNT_DIR for m in c.get("volumeMounts", [])):
            c.setdefault("volumeMounts", []).append(dict(mount))
    return pod


def keeps(original: Any, patched: Any) -> bool:
    """Every field of `original` is in `patched` unchanged; lists keep their items in order
    (new items may be inserted anywhere)."""
    if isinstance(original, dict):
        return isinstance(patched, dict) and all(
            k in patched and keeps(v, patched[k]) for k, v in original.items()
        )
    if isinstance(original, list):
        if not isinstance(patched, list):
            return False
        items = iter(patched)
        return all(any(keeps(item, candidate) for candidate in items) for item in original)
    return bool(original == patched)


def schema_errors(pod: Pod) -> list[str]:
    """Problems with `pod` against the Kubernetes API schema of each supported version."""
    errors = []
    for version in SCHEMA_VERSIONS:
        try:
            kubernetes_validate.validate(pod, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            errors.append(f"{version}: {error.message} at {'.'.join(map(str, error.path))}")
    return errors


RESTRICTED_VOLUME_TYPES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
ALLOWED_SECCOMP = frozenset({"RuntimeDefault", "Localhost"})


def restricted_violations(pod: Pod) -> list[str]:
    """Which rules of the Pod Security Standard "restricted" (baseline included) `pod` breaks:
    those of the pod spec and those of every container, with container settings over the pod's."""
    spec = pod.get("spec", {})
    found = [f"{key} is true" for key in ("hostNetwork", "hostPID", "hostIPC") if spec.get(key)]
    for volume in spec.get("volumes", []):
        types = set(volume) - {"name"}
        if not types <= RESTRICTED_VOLUME_TYPES:
            found.append(f"volume {volume['name']} is of type {sorted(types - RESTRICTED_VOLUME_TYPES)}")
    pod_security = spec.get("securityContext") or {}
    pod_seccomp = (pod_security.get("seccompProfile") or {}).get("type")
    if pod_seccomp is not None and pod_seccomp not in ALLOWED_SECCOMP:
        found.append(f"pod seccomp profile is {pod_seccomp}")
    for container in all_containers(pod):
        security = container.get("securityContext") or {}
        effective = {**pod_security, **security}
        capabilities = security.get("capabilities") or {}
        checks = {
            "is privileged": security.get("privileged", False) is not False,
            "allows privilege escalation": security.get("allowPrivilegeEscalation") is not False,
            "may run as root": effective.get("runAsNonRoot") is not True or effective.get("runAsUser") == 0,
            "has no RuntimeDefault or Localhost seccomp profile": (
                (effective.get("seccompProfile") or {}).get("type") not in ALLOWED_SECCOMP
            ),
            "does not drop ALL capabilities": "ALL" not in (capabilities.get("drop") or []),
            "adds a capability other than NET_BIND_SERVICE": bool(
                set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}
            ),
            "uses a host port": any(port.get("hostPort") for port in container.get("ports", [])),
            "has a procMount other than Default": security.get("procMount", "Default") != "Default",
            "is a Windows host process": bool((security.get("windowsOptions") or {}).get("hostProcess")),
        }
        found.extend(f"container {container['name']} {rule}" for rule, broken in checks.items() if broken)
    return found
