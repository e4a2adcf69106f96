"""The annotation contract: the names a pod author writes, and a table of parsers for their values."""

import difflib
import functools
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from webhook.quantity import Quantity, parse_quantity
from webhook.settings import Settings

PREFIX = "sidecar.example/"
LOG_PATH = "sidecar.example/log-path"
CONTAINERS = "sidecar.example/containers"
MODE = "sidecar.example/mode"
INJECTED = "sidecar.example/injected"
CPU_REQUEST = "sidecar.example/cpu-request"
CPU_LIMIT = "sidecar.example/cpu-limit"
MEMORY_REQUEST = "sidecar.example/memory-request"
MEMORY_LIMIT = "sidecar.example/memory-limit"
LOG_VOLUME_SIZE = "sidecar.example/log-volume-size"
# resource -> (its request annotation, its limit annotation)
RESOURCE_ANNOTATIONS = {"cpu": (CPU_REQUEST, CPU_LIMIT), "memory": (MEMORY_REQUEST, MEMORY_LIMIT)}

MAX_LOG_PATHS = 8
# Linux PATH_MAX: no longer path can be opened, so a longer value is a mistake, not a log file.
MAX_PATH_BYTES = 4096
# The ServiceAccount admission plugin owns this directory: the sidecar mounts an empty volume there
# to keep the token out, so no log directory may be at or below it.
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
# Where each sidecar keeps its read position (webhook/sidecar.py): a volume of its own is mounted there,
# so no log directory may be at or below it either.
STATE_DIR = "/run/log-sidecar"
_CONTROL_CHARACTER = re.compile("[\x00-\x1f\x7f-\x9f]")


class Mode(StrEnum):
    AUTO = "auto"
    CLASSIC = "classic"
    NATIVE = "native"


class AnnotationError(ValueError):
    """An annotation value the webhook refuses; the message names the annotation, value and expectation."""

    def __init__(self, annotation: str, value: object, problem: str, expected: str) -> None:
        super().__init__(f"annotation {annotation}: {_quote(value)} {problem}; expected {expected}")


def _quote(value: object, limit: int = 200) -> str:
    """The value as JSON, so control characters stay visible and one log line stays one line."""
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "…(truncated)"


@dataclass(frozen=True, slots=True)
class Resources:
    """The sidecar's requests and limits, as quantities the API server accepts, by resource."""

    requests: tuple[tuple[str, str], ...]  # (resource, quantity): cpu, then memory
    limits: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class LogRequest:
    """What the pod author asked for, parsed and checked against everything but the pod itself."""

    files: tuple[str, ...]  # absolute, normalised: no empty, '.' or '..' segment, no trailing '/'
    containers: tuple[str, ...] | None  # None: every app container
    mode: Mode
    resources: Resources
    volume_size: str  # the sizeLimit of the log volumes the webhook adds; "" for none


_PATHS_EXPECTED = 'one or more absolute file paths separated by commas, e.g. "/var/log/app.log"'


def _split(annotation: str, value: object, expected: str) -> list[str]:
    if not isinstance(value, str):
        raise AnnotationError(annotation, value, "is not a string", expected)
    items = [item.strip() for item in value.split(",")]
    if not any(items):
        raise AnnotationError(annotation, value, "is empty", expected)
    if not all(items):
        raise AnnotationError(annotation, value, "has an empty entry between commas", expected)
    return list(dict.fromkeys(items))  # duplicates collapsed, order kept


def directory_of(file: str) -> str:
    """The directory of a checked absolute path: `/var/log/app.log` -> `/var/log`, `/app.log` -> `/`."""
    return file[: file.rfind("/")] or "/"


def is_within(path: str, directory: str) -> bool:
    """Whether `path` is `directory` or below it (both absolute and normalised)."""
    return path == directory or path.startswith(directory if directory == "/" else directory + "/")


def _check_file(raw: str, value: str, settings: Settings) -> str:
    # Name the offending entry only when the value holds more than one.
    subject = "" if raw == value.strip() else f"has {_quote(raw)}, which "

    def refuse(problem: str) -> AnnotationError:
        return AnnotationError(LOG_PATH, value, subject + problem, _PATHS_EXPECTED)

    if _CONTROL_CHARACTER.search(raw):
        raise refuse("has a control character")
    if not raw.startswith("/"):
        raise refuse("is not an absolute path")
    if raw.endswith("/"):
        raise refuse("ends with '/', so names a directory, not a file")
    if len(raw.encode()) > MAX_PATH_BYTES:
        raise refuse(f"is longer than {MAX_PATH_BYTES} bytes")
    if any(segment in ("", ".", "..") for segment in raw.split("/")[1:]):
        raise refuse("has an empty, '.' or '..' segment")
    directory = directory_of(raw)
    if directory in settings.protected_dirs:
        raise refuse(f"puts the log directory at {directory}, a protected directory")
    for tree in (*settings.protected_trees, SERVICE_ACCOUNT_DIR, STATE_DIR):
        if is_within(directory, tree):
            raise refuse(f"puts the log directory under {tree}, a protected directory")
    return raw


def parse_log_paths(value: object, settings: Settings) -> tuple[str, ...]:
    entries = _split(LOG_PATH, value, _PATHS_EXPECTED)
    assert isinstance(value, str)  # _split refused anything else
    if len(entries) > MAX_LOG_PATHS:
        raise AnnotationError(
            LOG_PATH, value, f"has {len(entries)} paths", f"at most {MAX_LOG_PATHS} ({_PATHS_EXPECTED})"
        )
    return tuple(_check_file(entry, value, settings) for entry in entries)


def parse_container_names(value: object, settings: Settings) -> tuple[str, ...]:
    return tuple(_split(CONTAINERS, value, "container names from spec.containers separated by commas"))


def parse_mode(value: object, settings: Settings) -> Mode:
    choices = ", ".join(m.value for m in Mode)
    if not isinstance(value, str) or value.strip() not in {m.value for m in Mode}:
        raise AnnotationError(MODE, value, "is not a known mode", f"one of {choices}")
    return Mode(value.strip())


def _quantity_parser(
    annotation: str, what: str, maximum_of: Callable[[Settings], str], *, nonzero: bool
) -> Callable[[object, Settings], Quantity]:
    """The parser of one quantity annotation (cpu, memory or disk): a quantity the API server accepts,
    within the server's maximum. Whether a request fits its limit is checked in `parse`."""

    def parse_quantity_annotation(value: object, settings: Settings) -> Quantity:
        maximum = maximum_of(settings)
        example = '"100m" or "0.5"' if what == "cpu" else '"64Mi"' if what == "memory" else '"500Mi"'
        expected = f"a {what} quantity of at most {maximum}, e.g. {example}"

        def refuse(problem: str) -> AnnotationError:
            return AnnotationError(annotation, value, problem, expected)

        if not isinstance(value, str):
            raise refuse("is not a string")
        try:
            quantity = parse_quantity(value)
        except ValueError:
            raise refuse("is not a Kubernetes quantity") from None
        if quantity.value < 0:
            raise refuse("is negative")
        if what != "cpu" and quantity.value != quantity.value.to_integral_value():
            # "128m" is 0.128 bytes: a slip for 128Mi that the API server would only warn about.
            raise refuse("is not a whole number of bytes (m means thousandths; Mi means mebibytes)")
        if nonzero and quantity.value == 0:
            raise refuse(
                "is 0, which would get the pod evicted at the log's first byte"
                if what == "disk"
                else "is 0, which Kubernetes reads as no limit at all"
            )
        if quantity.value > parse_quantity(maximum).value:
            raise refuse(f"is above the maximum of {maximum} that this webhook allows")
        return quantity

    return parse_quantity_annotation


def _resource_maximum(resource: str) -> Callable[[Settings], str]:
    return lambda settings: str(getattr(settings, f"sidecar_{resource}_max"))


def _resources(values: Mapping[str, Any], settings: Settings) -> Resources:
    """Each annotation sets its own field and the server's defaults fill the rest; a default that
    would contradict an annotation gives way to it: a request above the default limit raises the
    limit to the request, a limit below the default request lowers the request to the limit."""
    requests = {"cpu": settings.sidecar_cpu_request, "memory": settings.sidecar_memory_request}
    limits = {"cpu": settings.sidecar_cpu_limit, "memory": settings.sidecar_memory_limit}
    for resource, (request_annotation, limit_annotation) in RESOURCE_ANNOTATIONS.items():
        request: Quantity | None = values[request_annotation]
        limit: Quantity | None = values[limit_annotation]
        if request is None and limit is None:
            continue  # the common case: the defaults, which need no parsing
        if request is not None and limit is not None and request.value > limit.value:
            raise AnnotationError(
                request_annotation,
                request.text,
                f"is above the limit {limit_annotation}: {_quote(limit.text)}",
                f"a {resource} request at most its limit",
            )
        if request is None:
            request = parse_quantity(requests[resource])
            if limit is not None and limit.value < request.value:
                request = limit
        if limit is None:
            limit = parse_quantity(limits[resource])
            if limit.value < request.value:
                limit = request
        requests[resource], limits[resource] = request.text, limit.text
    return Resources(tuple(requests.items()), tuple(limits.items()))


# annotation -> (parser, value when the annotation is absent)
_PARSERS: dict[str, tuple[Callable[[object, Settings], Any], Any]] = {
    LOG_PATH: (parse_log_paths, ()),
    CONTAINERS: (parse_container_names, None),
    MODE: (parse_mode, Mode.AUTO),
    **{
        annotation: (
            _quantity_parser(annotation, resource, _resource_maximum(resource), nonzero=is_limit),
            None,
        )
        for resource, pair in RESOURCE_ANNOTATIONS.items()
        for annotation, is_limit in zip(pair, (False, True), strict=True)
    },
    # An emptyDir's sizeLimit of 0 would make kubelet evict the pod at its first byte.
    LOG_VOLUME_SIZE: (
        _quantity_parser(LOG_VOLUME_SIZE, "disk", lambda s: s.log_volume_size_max, nonzero=True),
        None,
    ),
}


def parse(annotations: Mapping[str, str], settings: Settings) -> LogRequest:
    """Parse every annotation of the contract; raise AnnotationError for the first bad one."""
    found = tuple(annotations.get(name) for name in _PARSERS)
    if sum(len(value) for value in found if value is not None) > _REMEMBERED_BYTES:
        return _parse_values.__wrapped__(found, settings)
    return _parse_values(found, settings)


# The pods of one Deployment, Job or StatefulSet are made from one template, so they carry the same
# annotations: a set of values is parsed once, then remembered (7 of the 50 µs a seed-pod review took
# in-process). Bounded in entries and in size, so that pods with ever new or huge values can't make it
# hold much: 256 sets of at most 1,024 characters. A bad value raises, which is never remembered.
_REMEMBERED = 256
_REMEMBERED_BYTES = 1024


@functools.lru_cache(maxsize=_REMEMBERED)
def _parse_values(found: tuple[str | None, ...], settings: Settings) -> LogRequest:
    values = {
        name: default if value is None else parser(value, settings)
        for value, (name, (parser, default)) in zip(found, _PARSERS.items(), strict=True)
    }
    return LogRequest(
        files=values[LOG_PATH],
        containers=values[CONTAINERS],
        mode=values[MODE],
        resources=_resources(values, settings),
        volume_size=values[LOG_VOLUME_SIZE].text if values[LOG_VOLUME_SIZE] else settings.log_volume_size,
    )


# Every name of the contract: those a pod author writes, and the webhook's own marker.
KNOWN = frozenset({*_PARSERS, INJECTED})


# Warnings for unknown names, at most: each costs a fuzzy match on the review's path, and a pod may carry
# thousands of keys within the API server's 256 KiB of annotations. A person fixes a few slips at a time.
MAX_UNKNOWN_WARNINGS = 8


def unknown(found: Mapping[str, str]) -> tuple[str, ...]:
    """A warning for each sidecar.example/ annotation that is not one of the contract, naming the
    closest that is: a misspelled name (`sidecar.example/logpath`) would otherwise do nothing, silently."""
    names = [name for name in found if name.startswith(PREFIX) and name not in KNOWN]
    warnings = tuple(_unknown_warning(name) for name in names[:MAX_UNKNOWN_WARNINGS])
    if len(names) > MAX_UNKNOWN_WARNINGS:
        warnings += (f"and {len(names) - MAX_UNKNOWN_WARNINGS} more {PREFIX} annotations it does not know",)
    return warnings


def _unknown_warning(name: str) -> str:
    # Compared without the prefix, which every name shares and which would make any two look alike; the
    # marker is the webhook's to write, never a suggestion.
    written = sorted(known.removeprefix(PREFIX) for known in KNOWN - {INJECTED})
    closest = difflib.get_close_matches(name.removeprefix(PREFIX).lower(), written, n=1, cutoff=0.6)
    if closest:
        hint = f"did you mean {PREFIX}{closest[0]}?"
    else:
        hint = f"it knows {', '.join(PREFIX + w for w in written)}"
    return f"annotation {_quote(name)} is not one sidecar-webhook knows and does nothing: {hint}"
