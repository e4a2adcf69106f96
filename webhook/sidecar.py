"""The sidecar, built as data from one table of names and defaults."""

from collections.abc import Sequence
from typing import Any

from webhook.annotations import SERVICE_ACCOUNT_DIR, Resources
from webhook.identity import Identity
from webhook.settings import Settings

LOG_VOLUME = "sidecar-logs"
# An empty volume mounted at the ServiceAccount token path: the ServiceAccount admission plugin
# skips containers that already have a mount there, so the sidecar never receives API credentials.
NO_TOKEN_VOLUME = "sidecar-no-token"

# The sidecar's program, run by the image's `sh` with the log file as its only argument ("$1"): the
# path is data, never part of the script, so no annotation value can change what runs.
#
# `tail -n +1 -F` prints the file from its first line and follows it by name: it usually doesn't exist
# yet when the sidecar starts, and is rotated later. Its notices on stderr ("can't open", "has
# appeared", "has been replaced") are dropped so that `kubectl logs` shows the app's lines only.
#
# Why a shell at all: as a container's first process, `tail` would ignore SIGTERM (PID 1 gets no
# default action and tail sets no handler), so every pod deletion and every Job would wait out the
# whole grace period and end with the sidecar SIGKILLed. The shell traps SIGTERM, lets tail read up
# to the end of the file (tail polls once a second; its read offset is in /proc/PID/fdinfo), gives
# its last write a tenth of a second, stops it and exits 0: within about 2 s, even with a backlog.
# The trap is set before tail starts, so a SIGTERM that arrives at once is not lost either, and it
# reads tail's pid from $!, which the shell sets as it starts tail, before any trap can run.
FOLLOW_SCRIPT = """\
log=$1
caught_up() {
  size=$(stat -L -c %s -- "$log" 2>/dev/null) || return 0
  for fd in /proc/$1/fd/*; do
    if [ "$fd" -ef "$log" ]; then
      pos=$(sed -n 's/^pos:[[:space:]]*//p' "/proc/$1/fdinfo/${fd##*/}")
      [ "${pos:-0}" -ge "$size" ]
      return
    fi
  done
  [ "$size" -eq 0 ]
}
stop() {
  tail=$!
  [ -n "$tail" ] || exit 0
  n=0
  until caught_up "$tail" || [ "$n" -ge 19 ]; do sleep 0.1; n=$((n + 1)); done
  sleep 0.1
  kill "$tail" 2>/dev/null
  exit 0
}
trap stop TERM INT
tail -n +1 -F -- "$log" 2>/dev/null &
wait "$!"
"""
# $0 of the script: the name the shell gives itself in its own error messages.
FOLLOW = ("sh", "-c", FOLLOW_SCRIPT, "log-sidecar")
# What this webhook ran before its sidecar trapped SIGTERM. Pods it injected are still in clusters: the engine
# must recognise their sidecars too, or it would inject a second one when such a pod is re-admitted.
LEGACY_FOLLOW = ("tail", "-n", "+1", "-F")


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


def follow_command(file: str) -> list[str]:
    return [*FOLLOW, file]


def followed_file(command: Sequence[str] | None) -> str | None:
    """The file a sidecar of this webhook (this version or an earlier one) follows; None for any other
    command."""
    if command and tuple(command[:-1]) in (FOLLOW, LEGACY_FOLLOW):
        return command[-1]
    return None


def log_mount(
    volume: str, directory: str, sub_path: str, *, read_only: bool, recursive_read_only: str | None = None
) -> dict[str, Any]:
    mount: dict[str, Any] = {"name": volume, "mountPath": directory}
    if sub_path:
        mount["subPath"] = sub_path
    if read_only:
        mount["readOnly"] = True
        # Only on a read-only mount: the API server refuses it on a writable one.
        if recursive_read_only:
            mount["recursiveReadOnly"] = recursive_read_only
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
        "command": follow_command(file),
        "resources": {"requests": dict(resources.requests), "limits": dict(resources.limits)},
        "securityContext": security_context(identity),
        "volumeMounts": mounts,
    }
    if native:
        # An init container with restartPolicy Always is a native sidecar (Kubernetes >= 1.29):
        # started before the app, stopped after it, and not counted when a Job completes.
        container["restartPolicy"] = "Always"
    return container
