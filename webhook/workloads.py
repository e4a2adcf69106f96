"""Workloads: where each kind keeps its pod template, and the trigger annotation put beside it instead.

Pure, and free of yaml: `inject` reads manifests with it, and the server's /warn route reads the
workloads the API server sends.
"""

from collections.abc import Mapping, Sequence
from typing import Any

from webhook import annotations
from webhook.annotations import LOG_PATH

# (API group, kind) -> where its pod template is. A Pod is its own template. Any other kind,
# including a namesake in another API group (a custom resource), has none.
POD_TEMPLATES: dict[tuple[str, str], tuple[str, ...]] = {
    ("", "Pod"): (),
    ("", "ReplicationController"): ("spec", "template"),
    ("apps", "Deployment"): ("spec", "template"),
    ("apps", "StatefulSet"): ("spec", "template"),
    ("apps", "DaemonSet"): ("spec", "template"),
    ("apps", "ReplicaSet"): ("spec", "template"),
    ("batch", "Job"): ("spec", "template"),
    ("batch", "CronJob"): ("spec", "jobTemplate", "spec", "template"),
}


def slips(group: str, kind: str, document: Mapping[str, Any]) -> tuple[str, ...]:
    """The warnings for whoever writes `document` (a Pod or a workload): the trigger annotation beside
    the pod template instead of in it, and names of ours that are not ours in the template. Warnings
    only: nothing here changes or refuses an object."""
    template_path = POD_TEMPLATES.get((group, kind))
    if template_path is None:
        return ()
    template = annotations_of(at(document, template_path))
    return (*misplaced_annotation(document, template_path), *annotations.unknown(template))


def misplaced_annotation(document: Mapping[str, Any], template_path: Sequence[str]) -> list[str]:
    """The trigger annotation on the workload's own metadata (or on a CronJob's job template) while the
    pod template has none: the webhook only sees pods, so it would inject nothing. A common mistake."""
    if LOG_PATH in annotations_of(at(document, template_path)):
        return []
    target = dotted(template_path) + "metadata.annotations"
    return [
        f"{LOG_PATH} is in {dotted(template_path[:depth])}metadata.annotations, which the webhook "
        f"never sees: left unchanged; put it in {target} to get the sidecar"
        for depth in range(len(template_path))
        if LOG_PATH in annotations_of(at(document, template_path[:depth]))
    ]


def at(document: Mapping[str, Any], path: Sequence[str]) -> Any:
    """The mapping at `path`, or None when a step is missing or not a mapping."""
    node: Any = document
    for key in path:
        node = node.get(key) if isinstance(node, Mapping) else None
    return node if isinstance(node, Mapping) else None


def dotted(path: Sequence[str]) -> str:
    return "".join(f"{key}." for key in path)


def annotations_of(node: Mapping[str, Any] | None) -> Mapping[str, Any]:
    metadata = node.get("metadata") if node is not None else None
    annotations = metadata.get("annotations") if isinstance(metadata, Mapping) else None
    return annotations if isinstance(annotations, Mapping) else {}
