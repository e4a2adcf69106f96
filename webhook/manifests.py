"""Manifests: find the pod template of each workload and inject it with the webhook's own engine.

Pure: YAML text in, YAML text out, no files and no printing (`sidecar-webhook inject` does those).
Each pod template is handed to `decide_pod` as the Pod the workload controller would create, and the
engine's patch is applied to it, so the printed template holds exactly what the API server would
store after calling the webhook, and injecting a printed file again changes nothing.
"""

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jsonpatch
import yaml

from webhook.engine import MalformedObject, decide_pod
from webhook.settings import Settings
from webhook.workloads import POD_TEMPLATES, at, dotted, misplaced_annotation


@dataclass(frozen=True, slots=True)
class Note:
    """A warning or an error, and the document it is about."""

    where: str  # e.g. `web.yaml, document 2 (Deployment web)`
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class Rejected(ValueError):
    """Input the API server would refuse: invalid YAML, an object that isn't Pod-shaped, a denied pod."""

    def __init__(self, notes: Sequence[Note]) -> None:
        super().__init__("\n".join(map(str, notes)))
        self.notes = tuple(notes)


@dataclass(frozen=True, slots=True)
class Injected:
    """The documents to print, and the warnings to show with them."""

    documents: list[Any]
    warnings: list[Note]


def parse(text: str | bytes, source: str) -> list[Any]:
    """The documents of one YAML (or JSON) stream, an empty one (after a trailing `---`) as None."""
    try:
        return list(yaml.safe_load_all(text))
    except yaml.YAMLError as error:
        raise Rejected([Note(source, _yaml_problem(error))]) from None


def _yaml_problem(error: yaml.YAMLError) -> str:
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        context = f" ({error.context})" if error.context else ""
        return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {error.problem}{context}"
    return f"invalid YAML: {error}"  # an undecodable byte: the message gives its position


def inject(sources: Sequence[tuple[str, Sequence[Any]]], settings: Settings) -> Injected:
    """Every document of every (source, documents), in order, with its pod template injected;
    empty documents hold nothing and are left out, but count in the numbers that messages give.

    Raises Rejected naming every document the webhook would refuse, so that nothing is
    printed for a set of manifests that the API server would not take whole.
    """
    documents: list[Any] = []
    warnings: list[Note] = []
    errors: list[Note] = []
    for source, parsed in sources:
        for number, document in enumerate(parsed, start=1):
            if document is not None:
                where = f"{source}, document {number}"
                documents.append(_inject_object(document, where, settings, warnings, errors))
    if errors:
        raise Rejected(errors)
    return Injected(documents, warnings)


def render(documents: Sequence[Any]) -> str:
    """YAML in the input's key order, documents separated by `---`; multi-line strings as blocks."""
    return yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False, allow_unicode=True)


class _Dumper(yaml.SafeDumper):
    """Writes a multi-line string (a script in `args`) as a `|` block, as people write it, and an
    object the input shared through a YAML anchor in full, as kubectl does, never as `&id001`."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None  # PyYAML quotes it instead when a block can't hold it
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def _inject_object(
    document: Any, where: str, settings: Settings, warnings: list[Note], errors: list[Note]
) -> Any:
    if not isinstance(document, Mapping):
        return document
    api_version, kind = document.get("apiVersion"), document.get("kind")
    group = api_version.rpartition("/")[0] if isinstance(api_version, str) else ""
    if (group, kind) == ("", "List") and isinstance(document.get("items"), list):
        items = document["items"]
        return {
            **document,
            "items": [
                _inject_object(item, f"{where}, items[{index}]", settings, warnings, errors)
                for index, item in enumerate(items)
            ],
        }
    template_path = POD_TEMPLATES.get((group, str(kind)))
    if template_path is None:
        return document
    where = f"{where} ({kind} {_name(document)})"
    document = copy.deepcopy(document)  # the caller's objects are never changed
    template = at(document, template_path)
    if template is None:
        return document  # no pod template to inject; the API server will say what is wrong
    warnings.extend(Note(where, message) for message in misplaced_annotation(document, template_path))

    # The Pod the workload controller would create from the template: what the webhook would see.
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": template.get("metadata", {}),
        "spec": template.get("spec", {}),
    }
    try:
        decision = decide_pod(pod, settings)
    except MalformedObject as error:
        prefix = dotted(template_path)
        details = "; ".join(prefix + detail for detail in error.details)
        what = f"{prefix.rstrip('.')} is not a valid pod template" if prefix else "not a valid Pod"
        errors.append(Note(where, f"{what}: {details}"))
        return document
    warnings.extend(Note(where, warning) for warning in decision.warnings)
    if not decision.allowed:
        errors.append(Note(where, f"denied: {decision.message}"))
    elif decision.patch:
        patched = jsonpatch.apply_patch(pod, list(decision.patch))
        template["metadata"], template["spec"] = patched["metadata"], patched["spec"]
    return document


def _name(document: Mapping[str, Any]) -> str:
    metadata = document.get("metadata")
    name = metadata.get("name") or metadata.get("generateName") if isinstance(metadata, Mapping) else None
    return str(name or "(unnamed)")
