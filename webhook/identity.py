"""Who the sidecar runs as: the app's own non-root user when there is one, so that it can read a log
file the app keeps to itself (mode 0600); else nobody (65534). Root is never borrowed."""

from collections.abc import Sequence
from dataclasses import dataclass

from webhook.pod import Container, SecurityContext

NOBODY = 65534  # busybox's `nobody` and `nogroup`: ids the image knows
# The API server refuses larger ids (and negative ones); such a pod fails validation anyway.
MAX_ID = 2**31 - 1


@dataclass(frozen=True, slots=True)
class Identity:
    uid: int
    gid: int


AS_NOBODY = Identity(NOBODY, NOBODY)
_NOTHING_SAID = SecurityContext()


def sidecar_identity(
    pod_context: SecurityContext | None, targets: Sequence[Container]
) -> tuple[Identity, str | None]:
    """The sidecar's uid and gid for these target containers, and a warning when it can't be theirs
    and that could matter: they run as root, or as different users (some saying none).

    The gid is the targets' runAsGroup when they agree on a non-root one, else 65534: the uid
    already owns the app's files, so a group adds nothing to reading them, and left unset the
    group would be 0, as busybox's /etc/passwd doesn't know the app's uid.
    """
    pod_context = pod_context or _NOTHING_SAID
    users: dict[str, int | None] = {}
    groups: set[int | None] = set()
    for container in targets:
        own = container.security_context or _NOTHING_SAID
        users[container.name] = own.run_as_user if own.run_as_user is not None else pod_context.run_as_user
        groups.add(own.run_as_group if own.run_as_group is not None else pod_context.run_as_group)
    said = set(users.values())
    if said <= {None}:
        return AS_NOBODY, None  # the image's user, unknown here: nothing to borrow, nothing said
    roots = [name for name, uid in users.items() if uid == 0]
    if roots:
        return AS_NOBODY, (
            f"the log sidecar runs as uid {NOBODY}, not as the app: {_containers(roots)} "
            "as root (runAsUser 0), which a sidecar never borrows, so it can read only a log file "
            "that others may read"
        )
    if len(said) > 1:
        who = ", ".join(f"{name}: {'unset' if uid is None else uid}" for name, uid in users.items())
        return AS_NOBODY, (
            f"the log sidecar runs as uid {NOBODY}: the containers that write the log run as different "
            f"users ({who}), so it can read only a log file that others may read; give them one "
            "runAsUser, or name the one that writes the log in sidecar.example/containers"
        )
    (uid,) = said
    assert uid is not None
    if not 0 < uid <= MAX_ID:
        return AS_NOBODY, None  # the API server refuses this pod for its own containers
    (gid,) = groups if len(groups) == 1 else (None,)
    return Identity(uid, gid if gid is not None and 0 < gid <= MAX_ID else NOBODY), None


def _containers(names: Sequence[str]) -> str:
    if len(names) == 1:
        return f"container {names[0]!r} runs"
    return "containers " + ", ".join(repr(n) for n in names) + " run"
