"""JSONPatch (RFC 6902) `add` operations, the only kind the webhook emits."""

from typing import Any

Operation = dict[str, Any]


def pointer(*segments: str | int) -> str:
    """A JSON Pointer (RFC 6901): `~` becomes `~0` before `/` becomes `~1`."""
    return "/" + "/".join(map(_escape, segments))


def _escape(segment: str | int) -> str:
    text = str(segment)
    return text.replace("~", "~0").replace("/", "~1") if "~" in text or "/" in text else text


def add(path: str, value: Any) -> Operation:
    return {"op": "add", "path": path, "value": value}


def extend(array: str, exists: bool, items: list[Any], *, at: int | None = None) -> list[Operation]:
    """Add items to the array at `array`: created whole with one op when absent, else one op per item
    at its end, or from index `at` on (items keep their order)."""
    if not items:
        return []
    if not exists:
        return [add(array, items)]
    if at is None:
        return [add(f"{array}/-", item) for item in items]
    return [add(f"{array}/{at + i}", item) for i, item in enumerate(items)]
