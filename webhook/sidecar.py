"""The sidecar, built as data from one table of names and defaults."""

import hashlib
from collections.abc import Sequence
from typing import Any

from webhook.annotations import SERVICE_ACCOUNT_DIR, STATE_DIR, Resources
from webhook.identity import Identity
from webhook.settings import Settings

LOG_VOLUME = "sidecar-logs"
# The sidecars' read positions, mounted at STATE_DIR in each: one file of a few hundred bytes per sidecar,
# named after its container.
STATE_VOLUME = "sidecar-state"
# An empty volume mounted at the ServiceAccount token path: the ServiceAccount admission plugin
# skips containers that already have a mount there, so the sidecar never receives API credentials.
NO_TOKEN_VOLUME = "sidecar-no-token"

# The sidecar's program, run by the image's `sh` (busybox) with the log file as "$1" and the file that keeps
# its read position as "$2": both are data, never part of the script, so no annotation value can change
# what runs. It replaces busybox's `tail -F`, which loses lines on copytruncate (it notices a truncation
# only when the file is smaller than its offset at a poll), on a rename while the app still writes to
# the old file (it drains the old file once), and replays the whole file when the sidecar restarts.
#
# How it follows, once a second (latency ~0.5 s, as tail's), like Fluent Bit's tail and Vector's file:
# - fd 3 holds the file; `cat <&3` prints what was added since the last round and moves fd 3's offset,
#   which /proc/self/fdinfo/3 reads back without a fork. The pause is `read -t` on a FIFO nobody writes
#   (fd 5), the checks are the shell's own builtins: `cat` is the only fork.
# - Idle rounds fork nothing: `cat` runs when the file's mtime is not older than "$2.m", rewritten just
#   before each `cat` (whole seconds, as busybox's `-nt` compares them; a write in the same second counts
#   as new). A write already timed but not yet visible to that `cat`, or a file on a volume whose clock
#   lags, is caught by the `cat` that runs every 10th round whatever the mtime, and by every round once
#   stopping: at worst ~10 s late, never lost.
# - Truncation: the file's first line (up to 255 bytes) is its fingerprint. When the first line is no
#   longer that (copytruncate, `: > file`, a rewrite), even if the file grew past the old offset within
#   the round, fd 3 goes back to the start. A file rewritten with the very same first line, and lines
#   written after the last round but before logrotate's copy, are what this cannot see.
# - Rotation: when the path names another file (renamed, removed, replaced) and a new one is readable,
#   the old one moves to fd 4 and is still read, before the new one each round, until it has been
#   quiet for 5 rounds: an app that keeps writing to its old descriptor until it reopens loses nothing.
# - Restarts: after each round that read something, the inode, offset and fingerprint go to "$2", in a
#   volume of the pod's own; a new instance resumes there when the file is still that file. A crash
#   repeats at most the last round's lines; a SIGTERM repeats none.
# - Stopping: SIGTERM (pod deletion, a Job's end) makes the rounds 0.5 s apart, and the first round
#   after that reads nothing ends the shell with 0: all the app wrote is printed, no line is cut, and
#   a sidecar with nothing left to read is gone in ~0.5 s. A foreground `cat` is never interrupted, so
#   a final burst is drained whole however long it takes. An app that goes on writing (a classic
#   sidecar's app ignoring its own SIGTERM) keeps it at most 10 rounds, ~5 s, well inside the default
#   grace period of 30 s: the kubelet never has to kill it mid-line.
# - Nothing of its own on stderr, which `kubectl logs` would show among the app's lines.
FOLLOW_SCRIPT = """\
f=$1 s=$2 i= fp= old= q= o= r=0
exec 2>/dev/null
trap 'q=${q:-1}' TERM INT
mkfifo "$s.t"
[ -p "$s.t" ] && exec 5<>"$s.t"
nap() { if [ -p "$s.t" ]; then read -t $1 z <&5; else sleep $1; fi; }
at() { read -r z p </proc/self/fdinfo/$1; }
line1() { IFS= read -r -n 255 h </proc/self/fd/3; }
open() { command exec 3<"$f" && set -- $(stat -L -c '%i %s' /proc/self/fd/3) && i=$1 z=$2 fp= o=1; }
if [ -r "$f" ] && open && { read -r si sp && IFS= read -r sf; } <"$s" && [ "$si" = "$i" ] &&
  [ "$sp" -le "$z" ] && { [ -z "$sf" ] || { line1 && [ "$h" = "$sf" ]; }; }; then
  dd bs=1 skip="$sp" count=0 <&3
  fp=$sf
fi
while :; do
  m=
  if [ -z "$i" ]; then [ -r "$f" ] && open
  elif ! [ "$f" -ef /proc/self/fd/3 ] && [ -r "$f" ]; then
    [ -n "$old" ] && cat <&4
    exec 4<&3; old=1 n=0; open
  fi
  if [ -n "$old" ]; then
    at 4; a=$p; cat <&4; at 4
    if [ "$p" != "$a" ]; then m=1 n=0; elif [ $((n += 1)) -ge 5 ]; then exec 4<&-; old=; fi
  fi
  if [ -n "$i" ]; then
    [ -n "$fp" ] && ! { line1 && [ "$h" = "$fp" ]; } && exec 3</proc/self/fd/3 && fp= o=1
    at 3; a=$p
    if [ -n "$q$o" ] || [ $((r += 1)) -ge 10 ] || ! [ "$s.m" -nt /proc/self/fd/3 ]; then
      true >"$s.m"; o= r=0; cat <&3
    fi
    at 3
    [ -z "$fp" ] && line1 && fp=$h
    [ "$p" != "$a" ] && m=1 && printf '%s %s\\n%s\\n' "$i" "$p" "$fp" >"$s"
  fi
  if [ -n "$q" ]; then { [ -z "$m" ] && [ $q -gt 1 ]; } || [ $q -gt 10 ] && exit 0; q=$((q + 1)); nap 0.5
  else nap 1; fi
done
"""
# $0 of the script: the name the shell gives itself in its own error messages.
FOLLOW = ("sh", "-c", FOLLOW_SCRIPT, "log-sidecar")
# What earlier versions of this webhook ran. Pods they injected are still in clusters: the engine must
# recognise their sidecars too, or it would inject a second one when such a pod is re-admitted.
# `tail -n +1 -F FILE` first; then `sh -c SCRIPT log-sidecar FILE [STATE]`, scripts kept here by their
# SHA-256 (tests/fixtures/earlier-sidecars.json has them whole): the one of commit 7dddbb4, which trapped
# SIGTERM around tail, and the first to follow the file itself (4e0cd34), which ran `cat` every round.
LEGACY_FOLLOW = ("tail", "-n", "+1", "-F")
_EARLIER_SCRIPTS = frozenset(
    {
        "bd62e1ed8e1ce2588584090584f74c38a7afa4bba58aab30be7955630f38ad95",
        "62ad9ed22134b5d7859dd6df0a069475a8a45da5ae08734485e45a950c098d50",
    }
)


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


def follow_command(file: str, state: str) -> list[str]:
    return [*FOLLOW, file, state]


def state_file(container: str) -> str:
    return f"{STATE_DIR}/{container}"


def followed_file(command: Sequence[str] | None) -> str | None:
    """The file a sidecar of this webhook (this version or an earlier one) follows; None for any other
    command."""
    if not command:
        return None
    if len(command) == 6 and tuple(command[:4]) == FOLLOW:
        return command[4]
    if tuple(command[:-1]) == LEGACY_FOLLOW:
        return command[-1]
    earlier = len(command) in (5, 6) and command[3] == FOLLOW[3] and tuple(command[:2]) == FOLLOW[:2]
    if earlier and hashlib.sha256(command[2].encode()).hexdigest() in _EARLIER_SCRIPTS:
        return command[4]
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


def state_mount(volume: str) -> dict[str, Any]:
    return {"name": volume, "mountPath": STATE_DIR}


def sidecar_container(
    name: str,
    file: str,
    mounts: list[dict[str, Any]],
    *,
    native: bool,
    resources: Resources,
    identity: Identity,
    settings: Settings,
    ephemeral_storage: str = "",
) -> dict[str, Any]:
    """The sidecar; `ephemeral_storage`, when given, is requested for the log volume it comes with, so
    that the scheduler places the pod where that much disk is free."""
    requests = dict(resources.requests)
    if ephemeral_storage:
        requests["ephemeral-storage"] = ephemeral_storage
    container: dict[str, Any] = {
        "name": name,
        "image": settings.sidecar_image,
        "imagePullPolicy": "IfNotPresent",
        "command": follow_command(file, state_file(name)),
        "resources": {"requests": requests, "limits": dict(resources.limits)},
        "securityContext": security_context(identity),
        "volumeMounts": mounts,
    }
    if native:
        # An init container with restartPolicy Always is a native sidecar (Kubernetes >= 1.29):
        # started before the app, stopped after it, and not counted when a Job completes.
        container["restartPolicy"] = "Always"
    return container
