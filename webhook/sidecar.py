"""The sidecar, built as data from one table of names and defaults."""

from typing import Any

from webhook.annotations import SERVICE_ACCOUNT_DIR, Resources
from webhook.identity import Identity
from webhook.settings import Settings

LOG_VOLUME = "sidecar-logs"
# An empty volume mounted at the ServiceAccount token path: the ServiceAccount admission plugin
# skips containers that already have a mount there, so the sidecar never receives API credentials.
NO_TOKEN_VOLUME = "sidecar-no-token"

# `-F` follows the file by name: it usually doesn't exist yet when the sidecar starts, and is
# rotated later. `-n +1` prints it from its first line. Exec form: the path is data, never shell.
TAIL = ("tail", "-n", "+1", "-F")


def security_context(identity: Identity) -> dict[str, Any]:
    """Pod Security Standard "restricted", met by the sidecar on its own. A new dict each time:
    a patched pod must not share mutable parts with another."""
    return {
        "runAsNonRoot": True,
        "runAsUser": identity.uid,
        "runAsGroup": identity.gid,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def tail_command(file: str) -> list[str]:
    return [*TAIL, file]


def log_mount(volume: str, directory: str, sub_path: str, *, read_only: bool) -> dict[str, Any]:
    mount: dict[str, Any] = {"name": volume, "mountPath": directory}
    if sub_path:
        mount["subPath"] = sub_path
    if read_only:
        mount["readOnly"] = True
    return mount


def no_token_mount(volume: str) -> dict[str, Any]:
    return {"name": volume, "mountPath": SERVICE_ACCOUNT_DIR, "readOnly": True}


def sidecar_container(
    name: str,
    file: str,
    mounts: list[dict[str, Any]],
    *,
    native: bool,
    resources: Resources,
    identity: Identity,
    settings: Settings,
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name,
        "image": settings.sidecar_image,
        "imagePullPolicy": "IfNotPresent",
        "command": tail_command(file),
        "resources": {"requests": dict(resources.requests), "limits": dict(resources.limits)},
        "securityContext": security_context(identity),
        "volumeMounts": mounts,
    }
    if native:
        # An init container with restartPolicy Always is a native sidecar (Kubernetes >= 1.29):
        # started before the app, stopped after it, and not counted when a Job completes.
        container["restartPolicy"] = "Always"
    return container
