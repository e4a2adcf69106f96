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


_ALLOWED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def restricted_violations(pod: Pod) -> list[str]:
    """Which rules of the Pod Security Standard "restricted" (baseline included) `pod` breaks."""
    spec = pod.get("spec", {})
    pod_sc = spec.get("securityContext") or {}
    found = []
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            found.append(f"pod: {key}")
    for v in spec.get("volumes", []):
        kinds = set(v) - {"name"}
        if not kinds <= _ALLOWED_VOLUMES:
            found.append(f"volume {v['name']}: type {sorted(kinds - _ALLOWED_VOLUMES)}")
    for c in all_containers(pod):
        sc = c.get("securityContext") or {}
        where = f"container {c['name']}"

        def setting(key: str, sc: dict[str, Any] = sc) -> Any:
            return sc.get(key, pod_sc.get(key))

        if sc.get("privileged"):
            found.append(f"{where}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            found.append(f"{where}: allowPrivilegeEscalation not false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            found.append(f"{where}: capabilities do not drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            found.append(f"{where}: adds capabilities {caps['add']}")
        if setting("runAsNonRoot") is not True:
            found.append(f"{where}: runAsNonRoot not true")
        if setting("runAsUser") == 0:
            found.append(f"{where}: runAsUser 0")
        seccomp = (setting("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"{where}: seccompProfile {seccomp}")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            found.append(f"{where}: hostPort")
        if sc.get("procMount", "Default") != "Default":
            found.append(f"{where}: procMount")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            found.append(f"{where}: hostProcess")
    return found
