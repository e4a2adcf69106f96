"""Predictable names for what the webhook adds: valid DNS-1123 labels, unique within the pod."""

import re

MAX_NAME = 63  # DNS-1123 label, the limit for container and volume names
_NOT_LABEL_CHAR = re.compile(r"[^a-z0-9-]")


def sidecar_base_name(file: str) -> str:
    """`/x/app.log` -> `log-app`: the file stem lowercased, anything outside [a-z0-9-] made `-`."""
    name = file[file.rfind("/") + 1 :]
    dot = name.rfind(".")
    stem = name[:dot] if 0 < dot < len(name) - 1 else name  # `.hidden` and `name.` keep their dot
    return _trim(f"log-{_NOT_LABEL_CHAR.sub('-', stem.lower())}", MAX_NAME)


def unique_name(base: str, taken: set[str]) -> str:
    """`base`, or `base-2`, `base-3`, ... whichever is free; the name is then taken."""
    name, n = base, 1
    while name in taken:
        n += 1
        suffix = f"-{n}"
        name = _trim(base, MAX_NAME - len(suffix)) + suffix
    taken.add(name)
    return name


def _trim(name: str, length: int) -> str:
    # A label ends with an alphanumeric; the "log" prefix guarantees one is left.
    return name[:length].rstrip("-")
