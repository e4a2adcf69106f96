"""The engine: from an admission request (or a bare pod) and the settings to a Decision. No I/O.

The engine is convergent: it compares what the annotation asks for with what the pod already has
and adds only what is missing. Run on its own output it finds nothing missing, which is what makes
the API server's reinvocation (after the built-in plugins change the pod) safe.
"""

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson
from pydantic import ValidationError

from webhook import annotations
from webhook.annotations import (
    CONTAINERS,
    INJECTED,
    LOG_PATH,
    LOG_VOLUME_SIZE,
    MODE,
    AnnotationError,
    LogRequest,
    Mode,
    directory_of,
    is_within,
)
from webhook.decision import Decision
from webhook.envelope import AdmissionRequest, error_details
from webhook.identity import sidecar_identity
from webhook.naming import sidecar_base_name, unique_name
from webhook.patch import Operation, add, extend, pointer
from webhook.pod import Container, Pod, PodSpec, Volume, VolumeMount
from webhook.settings import Settings
from webhook.sidecar import (
    LOG_VOLUME,
    NO_TOKEN_VOLUME,
    STATE_VOLUME,
    followed_file,
    log_mount,
    no_token_mount,
    sidecar_container,
    state_mount,
)

# Pods that are meant to finish: a classic sidecar never exits, so such a pod never completes.
_RUN_TO_COMPLETION = frozenset({"Never", "OnFailure"})

# Where the patch adds things: fixed, so escaped once.
_VOLUMES = pointer("spec", "volumes")
_CONTAINERS = pointer("spec", "containers")
_INIT_CONTAINERS = pointer("spec", "initContainers")
_MARKER = pointer("metadata", "annotations", INJECTED)

# What one review may cost. Kubernetes sets no number of containers, but every one is a process the
# kubelet and the runtime manage, and real pods have a handful, rarely tens. Each target container
# gets a mount for each of up to MAX_LOG_PATHS directories, so the work and the patch grow with their
# product: a pod of 26,500 containers took 0.5 to 2.8 s a review and a replica to 313 MiB. 250
# containers, tens of times any real pod, are 2,000 mounts at most, reviewed in milliseconds.
MAX_CONTAINERS = 250
# Each log directory is looked for among every mount of every target container: 48,000 mounts on
# one container took 1 s. Real containers have a few, at most tens; 2,500 in the pod review in 50 ms.
MAX_VOLUME_MOUNTS = 2_500
# The patched pod must fit in etcd's 1.5 MiB, as stored; a patch of 1 MiB of JSON is already more than
# any pod that can be stored would take (paths up to 4,096 bytes, times containers, times directories,
# could make 8 MiB).
MAX_PATCH_BYTES = 1024 * 1024

WINDOWS_WARNING = f"{LOG_PATH} ignored: Windows pods get no log sidecar (its busybox image is Linux-only)"


# recursiveReadOnly from weakest to strongest; None is not said, or Disabled.
_RECURSIVE_STRENGTH = {None: 0, "IfPossible": 1, "Enabled": 2}


@dataclass(frozen=True, slots=True)
class Access:
    """How a mount reaches its volume: readOnly, and recursiveReadOnly (None: Disabled or not said,
    which Kubernetes reads alike; a writable mount may not say it at all)."""

    read_only: bool = False
    recursive: str | None = None

    @classmethod
    def of(cls, mount: VolumeMount) -> "Access":
        recursive = mount.recursive_read_only if mount.read_only else None
        return cls(mount.read_only, None if recursive == "Disabled" else recursive)

    def __str__(self) -> str:
        if not self.read_only:
            return "writable"
        return f"read-only, recursiveReadOnly {self.recursive}" if self.recursive else "read-only"


@dataclass(frozen=True, slots=True)
class Place:
    """Where the log directory lives: a volume and the subPath that shows the directory, with the
    access a target container without it gets, and the sidecar's."""

    volume: str
    sub_path: str = ""
    access: Access = Access()  # a new emptyDir: the app writes its log there
    sidecar_access: Access = Access(read_only=True)


class MalformedObject(ValueError):
    """The object isn't shaped like a Pod: a broken manifest or call, not a pod author's mistake."""

    def __init__(self, details: list[str]) -> None:
        super().__init__("; ".join(details))
        self.details = details


def decide(request: AdmissionRequest, settings: Settings) -> Decision:
    """The whole admission decision for one request."""
    if request.operation != "CREATE":
        return Decision.allow("not-create")
    if (request.kind.group, request.kind.kind) != ("", "Pod") or request.sub_resource:
        return Decision.allow("not-a-pod")
    return decide_view(request.object or Pod(), settings)


def decide_pod(obj: Mapping[str, Any], settings: Settings) -> Decision:
    """The decision for a pod given as a dict (a manifest); raises MalformedObject if it isn't Pod-shaped."""
    try:
        pod = Pod.model_validate(obj)
    except ValidationError as error:
        raise MalformedObject(error_details(error)) from None
    return decide_view(pod, settings)


def decide_view(pod: Pod, settings: Settings) -> Decision:
    """The decision for a pod being created, read through its view."""
    found = pod.metadata.annotations or {}
    # A pod without annotations, the most common by far, costs one look. A misspelled name of ours is
    # warned of, above all `sidecar.example/logpath` alone, which gets no sidecar: never silently.
    unknown = annotations.unknown(found) if found else ()
    if LOG_PATH not in found:
        return Decision.allow("no-annotation", unknown)
    if pod.spec.os is not None and pod.spec.os.name == "windows":
        return Decision.allow("windows", (WINDOWS_WARNING, *unknown))
    too_large = _too_large(pod.spec)
    if too_large:
        message = f"{too_large}: sidecar-webhook does not inject into a pod this large"
        return Decision.deny(message, "too-large")
    try:
        decision = _inject(pod.spec, found, annotations.parse(found, settings), settings)
    except AnnotationError as error:
        decision = Decision.deny(str(error), "invalid-annotation")
    if decision.patch and len(patch := orjson.dumps(decision.patch)) > MAX_PATCH_BYTES:
        decision = Decision.deny(
            f"the patch that injects {LOG_PATH} into this pod would be {len(patch)} bytes, more than the "
            f"{MAX_PATCH_BYTES} a pod that fits in etcd can take: fewer target containers "
            f"({CONTAINERS}) or shorter paths",
            "too-large",
        )
    return replace(decision, warnings=(*decision.warnings, *unknown)) if unknown else decision


def _inject(spec: PodSpec, found: Mapping[str, str], wanted: LogRequest, settings: Settings) -> Decision:
    containers = spec.containers or []
    restart_policy = spec.restart_policy or "Always"
    run_to_completion = restart_policy in _RUN_TO_COMPLETION
    native = wanted.mode is Mode.NATIVE or (wanted.mode is Mode.AUTO and run_to_completion)
    warnings: tuple[str, ...] = ()
    if wanted.mode is Mode.CLASSIC and run_to_completion:
        warnings = (
            f"{MODE}=classic on a pod with restartPolicy {restart_policy}: the pod will not complete "
            "while the sidecar runs (use native or auto)",
        )

    existing = _existing_sidecars([*containers, *(spec.init_containers or [])], wanted.files)
    targets = _targets(containers, wanted.containers, found.get(CONTAINERS, ""), set(existing.values()))
    taken = _names_in_use(spec)
    identity, identity_warning = sidecar_identity(spec.security_context, [c for _, c in targets])

    new_volumes: list[dict[str, Any]] = []
    new_mounts: dict[int, list[dict[str, Any]]] = defaultdict(list)
    place_at: dict[str, Place] = {}
    sized: set[str] = set()  # the directories on a new volume of wanted.volume_size
    for directory in dict.fromkeys(directory_of(file) for file in wanted.files):
        place = _shared_place(directory, targets, spec.volumes or [], found[LOG_PATH])
        if place is None:
            place = Place(unique_name(LOG_VOLUME, taken))
            new_volumes.append({"name": place.volume, "emptyDir": _empty_dir(wanted.volume_size)})
            if wanted.volume_size:
                sized.add(directory)
        elif LOG_VOLUME_SIZE in found:
            warnings += (
                f"{LOG_VOLUME_SIZE} ignored for {directory}: it is on the pod's own volume {place.volume!r}, "
                "whose size the pod sets itself",
            )
        place_at[directory] = place
        for index, container in targets:
            if _covering_mount(container, directory) is None:
                new_mounts[index].append(_log_mount(place, directory, place.access))

    new_sidecars: list[dict[str, Any]] = []
    no_token_volume = state_volume = ""
    for file in wanted.files:
        if file in existing:
            continue
        directory = directory_of(file)
        place = place_at[directory]
        if not state_volume:
            state_volume = unique_name(STATE_VOLUME, taken)
            new_volumes.append({"name": state_volume, "emptyDir": {}})
        mounts = [_log_mount(place, directory, place.sidecar_access), state_mount(state_volume)]
        # With automount off at pod level the plugin adds no token, so there is nothing to keep out.
        if spec.automount_service_account_token is not False:
            if not no_token_volume:
                no_token_volume = unique_name(NO_TOKEN_VOLUME, taken)
                new_volumes.append({"name": no_token_volume, "emptyDir": {}})
            mounts.append(no_token_mount(no_token_volume))
        name = unique_name(sidecar_base_name(file), taken)
        existing[file] = name
        new_sidecars.append(
            sidecar_container(
                name,
                file,
                mounts,
                native=native,
                resources=wanted.resources,
                identity=identity,
                settings=settings,
                # The first sidecar of each sized volume asks the scheduler for its disk.
                ephemeral_storage=wanted.volume_size if directory in sized else "",
            )
        )
        sized.discard(directory)

    ops: list[Operation] = extend(_VOLUMES, spec.volumes is not None, new_volumes)
    for index, mounts in new_mounts.items():
        path = f"{_CONTAINERS}/{index}/volumeMounts"
        ops += extend(path, containers[index].volume_mounts is not None, mounts)
    if native:
        ops += extend(_INIT_CONTAINERS, spec.init_containers is not None, new_sidecars, at=0)
    else:
        ops += extend(_CONTAINERS, spec.containers is not None, new_sidecars)
    marker = ",".join(dict.fromkeys(existing[file] for file in wanted.files))
    if found.get(INJECTED) != marker:
        ops.append(add(_MARKER, marker))

    if not ops:
        return Decision.allow("already-injected")
    if new_sidecars and identity_warning:
        warnings += (identity_warning,)
    return Decision.patched(ops, "injected", warnings)


def _too_large(spec: PodSpec) -> str:
    """What of the pod is beyond what one review may cost, or ''."""
    containers = [*(spec.containers or ()), *(spec.init_containers or ())]
    if len(containers) > MAX_CONTAINERS:
        return f"the pod has {len(containers)} containers and init containers, more than {MAX_CONTAINERS}"
    mounts = sum(len(c.volume_mounts or ()) for c in containers)
    if mounts > MAX_VOLUME_MOUNTS:
        return f"its containers have {mounts} volumeMounts, more than {MAX_VOLUME_MOUNTS}"
    return ""


def _empty_dir(size: str) -> dict[str, Any]:
    return {"sizeLimit": size} if size else {}


def _existing_sidecars(containers: Sequence[Container], files: Sequence[str]) -> dict[str, str]:
    """Containers that already follow a requested file, by file: the sidecars a first pass added."""
    wanted = set(files)
    found: dict[str, str] = {}
    for container in containers:
        file = followed_file(container.command)
        if file in wanted:
            found.setdefault(file, container.name)
    return found


def _targets(
    containers: Sequence[Container], names: tuple[str, ...] | None, value: str, sidecars: set[str]
) -> list[tuple[int, Container]]:
    """The app containers that get the log mount, with their index in spec.containers."""
    if names is None:
        return [(i, c) for i, c in enumerate(containers) if c.name not in sidecars]
    index: dict[str, int] = {}
    for i, container in enumerate(containers):
        index.setdefault(container.name, i)
    missing = [name for name in names if name not in index]
    if missing:
        raise AnnotationError(
            CONTAINERS,
            value,
            f"names {', '.join(missing)}, which the pod does not have in spec.containers",
            f"names from spec.containers ({', '.join(index) or 'none'})",
        )
    return [(index[name], containers[index[name]]) for name in names]


def _names_in_use(spec: PodSpec) -> set[str]:
    groups = (spec.containers, spec.init_containers, spec.ephemeral_containers, spec.volumes)
    return {item.name for group in groups for item in group or ()}


def _covering_mount(container: Container, directory: str) -> VolumeMount | None:
    """The container's mount that holds `directory`: at it, or else at its nearest parent."""
    best: VolumeMount | None = None
    longest = -1  # of mount paths that all hold the directory, the longest is the nearest
    for mount in container.volume_mounts or ():
        path = mount.mount_path.rstrip("/") or "/"
        if path.startswith("/") and is_within(directory, path) and len(path) > longest:
            best, longest = mount, len(path)
    return best


def _log_mount(place: Place, directory: str, access: Access) -> dict[str, Any]:
    return log_mount(
        place.volume,
        directory,
        place.sub_path,
        read_only=access.read_only,
        recursive_read_only=access.recursive,
    )


def _shared_place(
    directory: str, targets: Sequence[tuple[int, Container]], volumes: Sequence[Volume], value: str
) -> Place | None:
    """The place (volume, subPath) that the target containers already have at `directory`, if any,
    and how the mounts the webhook adds of it may reach it.

    Mounts are compared by what they show at the directory: volume V mounted at /var/log and the
    same V mounted at /var are one place, (V, "log") in the second case; the sidecar and any target
    without a mount then mount that place at the directory itself.
    """
    places: dict[tuple[str, str], str] = {}
    accesses: dict[Access, str] = {}
    lacking: list[str] = []
    for _, container in targets:
        mount = _covering_mount(container, directory)
        if mount is None:
            lacking.append(container.name)
            continue
        if mount.sub_path_expr:
            raise AnnotationError(
                LOG_PATH,
                value,
                f"has its directory {directory} on volume {mount.name!r} of container {container.name!r}, "
                "mounted with subPathExpr, which the sidecar cannot reproduce",
                "a log directory on a volume mounted with a plain subPath or none",
            )
        relative = directory[len(mount.mount_path.rstrip("/")) :].strip("/")
        sub_path = "/".join(p for p in (mount.sub_path.strip("/"), relative) if p)
        places.setdefault((mount.name, sub_path), container.name)
        accesses.setdefault(Access.of(mount), container.name)
    if not places:
        return None
    if len(places) > 1:
        seen = "; ".join(
            f"container {c!r} has volume {v!r}" + (f" subPath {s!r}" if s else "")
            for (v, s), c in places.items()
        )
        raise AnnotationError(
            LOG_PATH,
            value,
            f"has its directory {directory} on different volumes in the target containers ({seen})",
            "the target containers to share one volume at the log directory, or to have none there",
        )
    ((name, sub_path), holder) = next(iter(places.items()))
    source = next((v.api_object_source for v in volumes if v.name == name), None)
    if source is not None:
        # The sidecar prints the file to whoever may read the pod's logs (the `view` role may),
        # who need not be allowed to read the Secret or ConfigMap behind it (`view` may not).
        raise AnnotationError(
            LOG_PATH,
            value,
            f"has its directory {directory} on the {source} volume {name!r} of container {holder!r}, "
            "whose files are API objects: the sidecar would show them to whoever may read the pod's logs",
            "a log directory on a volume of the pod's own files (emptyDir, persistentVolumeClaim, ...) "
            "or on none",
        )
    if lacking and len(accesses) > 1:
        # A target without the mount gets a copy of the others' access, never more than the pod
        # gave. When they differ there is no copy to make: granting the writable one would widen
        # a read-only mount, and the read-only one would keep an app from writing its log.
        seen = "; ".join(f"container {c!r} mounts it {a}" for a, c in accesses.items())
        raise AnnotationError(
            LOG_PATH,
            value,
            f"has its directory {directory} on volume {name!r}, which the target containers mount with "
            f"different access ({seen}), so the webhook cannot tell which to give "
            f"{', '.join(repr(c) for c in lacking)}",
            f"the target containers to mount the log directory alike, or {CONTAINERS} to name those "
            "that should get it",
        )
    # The sidecar only reads: read-only always, and recursively so where any target's mount is.
    recursive = max((a.recursive for a in accesses), key=lambda r: _RECURSIVE_STRENGTH.get(r, 0))
    return Place(name, sub_path, next(iter(accesses)), Access(read_only=True, recursive=recursive))
