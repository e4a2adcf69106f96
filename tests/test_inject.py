"""`sidecar-webhook inject`: manifests in, the pods the webhook would make out, checked by effect."""

import io
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given

from tests.kube import FIXTURES, apply, fixture_names, load_review, patch_ops, schema_errors
from tests.test_cli import sidecar_webhook
from tests.test_properties import PROPERTY_RUN, annotated_pods
from webhook import cli, manifests
from webhook.admission import review
from webhook.engine import decide_pod
from webhook.settings import Settings

INPUTS = FIXTURES / "inject"
# Per input NAME.yaml (or NAME.json): NAME.yaml is what inject prints, and NAME.stderr, only when
# it exits non-zero or warns, is `exit N` and what it writes on stderr.
GOLDEN = Path(__file__).parent / "golden" / "inject"


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str


Inject = Callable[..., Run]


@pytest.fixture
def inject(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Inject]:
    """`sidecar-webhook inject -f FILE` in this process, with the default settings."""
    for name in list(os.environ):
        if name.startswith("SIDECAR_WEBHOOK_"):
            monkeypatch.delenv(name)

    def run(file: str | Path, stdin: str = "") -> Run:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode())))
        code = cli.main(["inject", "-f", str(file)])
        out, err = capsys.readouterr()
        return Run(code, out, err)

    yield run


def input_names() -> list[str]:
    return sorted(p.name for p in INPUTS.iterdir() if p.suffix in (".yaml", ".json"))


def injected_names() -> list[str]:
    """The inputs inject prints (the others are refused)."""
    return [name for name in input_names() if not name.startswith("error-")]


def golden_output(name: str) -> Path:
    return GOLDEN / f"{Path(name).stem}.yaml"


def test_every_input_has_a_golden_output_and_every_golden_file_an_input() -> None:
    stems = [Path(name).stem for name in input_names()]
    assert len(stems) == len(set(stems)), "two inputs would share a golden file"
    outputs = {p.stem for p in GOLDEN.glob("*.yaml")}
    errors = {p.stem for p in GOLDEN.glob("*.stderr")}
    assert outputs == set(stems)
    assert errors <= set(stems)
    assert {p.name for p in GOLDEN.iterdir()} == {f"{s}.yaml" for s in outputs} | {
        f"{s}.stderr" for s in errors
    }


@pytest.mark.parametrize("name", input_names())
def test_inject_prints_the_golden_output_of_each_input(
    name: str, inject: Inject, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(INPUTS)  # messages name the file as given: `deployment.yaml`, wherever the checkout is
    run = inject(name)
    errors = f"exit {run.code}\n{run.stderr}" if run.code or run.stderr else None
    output, error_file = golden_output(name), GOLDEN / f"{Path(name).stem}.stderr"
    if os.environ.get("REFRESH_GOLDEN") == "1":
        output.write_text(run.stdout)
        if errors is None:
            error_file.unlink(missing_ok=True)
        else:
            error_file.write_text(errors)
    assert run.stdout == output.read_text()
    assert errors == (error_file.read_text() if error_file.exists() else None)


@pytest.mark.parametrize("name", fixture_names())
def test_injected_pod_equals_what_the_api_server_stores_after_calling_the_webhook(
    name: str, inject: Inject, settings: Settings, tmp_path: Path
) -> None:
    recorded = load_review(name)
    pod = recorded["request"]["object"]
    response = json.loads(review(json.dumps(recorded).encode(), settings).body)["response"]
    manifest = tmp_path / f"{name}.yaml"
    manifest.write_text(yaml.safe_dump(pod))

    run = inject(manifest)

    if response["allowed"]:
        assert run.code == 0, run.stderr
        assert yaml.safe_load(run.stdout) == apply(pod, patch_ops(response))
        printed = [line.partition("): ")[2] for line in run.stderr.splitlines()]
        assert printed == response.get("warnings", [])
    else:
        assert run.code == 1
        assert run.stdout == ""
        assert response["status"]["message"] in run.stderr


@pytest.mark.parametrize("name", injected_names())
def test_injecting_an_injected_manifest_changes_nothing(name: str, inject: Inject) -> None:
    once = golden_output(name)
    twice = inject(once)
    assert twice.code == 0
    assert twice.stdout == once.read_text()


@pytest.mark.parametrize("name", injected_names())
def test_every_injected_workload_is_valid_for_the_kubernetes_schema(name: str) -> None:
    documents = yaml.safe_load_all(golden_output(name).read_text())
    objects = [item for d in documents for item in (d["items"] if d["kind"] == "List" else [d])]
    workloads = [
        o for o in objects if (o["apiVersion"].rpartition("/")[0], o["kind"]) in manifests.POD_TEMPLATES
    ]
    assert workloads
    for workload in workloads:
        assert schema_errors(workload) == [], workload["metadata"]["name"]


def test_every_workload_kind_has_a_golden_input() -> None:
    kinds = set()
    for name in injected_names():
        for document in yaml.safe_load_all(golden_output(name).read_text()):
            items = document["items"] if document["kind"] == "List" else [document]
            kinds |= {(item["apiVersion"].rpartition("/")[0], item["kind"]) for item in items}
    assert set(manifests.POD_TEMPLATES) <= kinds


def test_workloads_get_the_sidecar_where_their_pods_run_it(inject: Inject) -> None:
    def template(name: str, *path: str) -> dict[str, Any]:
        (document,) = yaml.safe_load_all(golden_output(name).read_text())
        for key in path:
            document = document[key]
        return document

    deployment = template("deployment.yaml", "spec", "template", "spec")
    assert [c["name"] for c in deployment["containers"]] == ["nginx", "log-access", "log-error"]
    job = template("job.yaml", "spec", "template", "spec")
    assert job["initContainers"][0]["restartPolicy"] == "Always", "a Job's pods get a native sidecar"
    cronjob = template("cronjob.yaml", "spec", "jobTemplate", "spec", "template", "spec")
    assert cronjob["initContainers"][0]["name"] == "log-backup"
    ledger = template("app-user-and-resources.yaml", "spec", "template", "spec")["containers"][1]
    assert (ledger["securityContext"]["runAsUser"], ledger["securityContext"]["runAsGroup"]) == (1000, 1000)
    assert ledger["resources"] == {
        "requests": {"cpu": "100m", "memory": "8Mi"},
        "limits": {"cpu": "500m", "memory": "64Mi"},
    }
    statefulset = template("statefulset.yaml", "spec", "template", "spec")
    assert statefulset["containers"][1]["volumeMounts"][0] == {
        "name": "data",
        "mountPath": "/data/log",
        "subPath": "log",
        "readOnly": True,
    }


def test_misplaced_annotation_is_left_unchanged_with_a_warning_pointing_at_the_pod_template(
    inject: Inject,
) -> None:
    source = INPUTS / "misplaced-annotation.yaml"
    run = inject(source)
    assert run.code == 0
    assert list(yaml.safe_load_all(run.stdout)) == list(yaml.safe_load_all(source.read_text()))
    deployment, cronjob = run.stderr.splitlines()
    assert deployment.startswith(f"sidecar-webhook inject: warning: {source}, document 1 (Deployment web): ")
    assert "sidecar.example/log-path is in metadata.annotations" in deployment
    assert deployment.endswith("put it in spec.template.metadata.annotations to get the sidecar")
    assert "is in spec.jobTemplate.metadata.annotations" in cronjob
    assert "put it in spec.jobTemplate.spec.template.metadata.annotations" in cronjob


def test_multi_document_file_keeps_order_and_passes_other_kinds_through(inject: Inject) -> None:
    source = INPUTS / "multi-document.yaml"
    run = inject(source)
    before, after = list(yaml.safe_load_all(source.read_text())), list(yaml.safe_load_all(run.stdout))
    assert [(d["kind"], d["metadata"]["name"]) for d in after] == [
        (d["kind"], d["metadata"]["name"]) for d in before if d is not None
    ]
    changed = [i for i, (b, a) in enumerate(zip(before, after, strict=False)) if a != b]
    assert changed == [1], "only the annotated apps/v1 Deployment changes"
    assert run.stdout.count("\n---\n") == len(after) - 1
    assert "nginx.conf: |\n" in run.stdout, "a multi-line string stays a block"


def test_list_items_are_injected_in_place(inject: Inject) -> None:
    run = inject(INPUTS / "list.yaml")
    (listed,) = yaml.safe_load_all(run.stdout)
    assert listed["kind"] == "List"
    assert [item["metadata"]["name"] for item in listed["items"]] == ["api", "migrate"]
    for item in listed["items"]:
        annotations = item["spec"]["template"]["metadata"]["annotations"]
        assert annotations["sidecar.example/injected"].startswith("log-")


def test_directory_input_injects_its_manifests_in_name_order_and_nothing_else(
    inject: Inject, tmp_path: Path
) -> None:
    for name, copy in [("pod.yaml", "c.yml"), ("job.yaml", "a.yaml"), ("json-list.json", "b.json")]:
        shutil.copy(INPUTS / name, tmp_path / copy)
    (tmp_path / "notes.md").write_text("kind: Pod\n")
    (tmp_path / "nested").mkdir()
    shutil.copy(INPUTS / "deployment.yaml", tmp_path / "nested" / "d.yaml")

    run = inject(tmp_path)

    assert run.code == 0, run.stderr
    expected = [golden_output(name).read_text() for name in ("job.yaml", "json-list.json", "pod.yaml")]
    assert list(yaml.safe_load_all(run.stdout)) == [yaml.safe_load(text) for text in expected]


def test_denial_exits_1_naming_each_refused_document_and_prints_nothing(inject: Inject) -> None:
    source = INPUTS / "error-denied.yaml"
    run = inject(source)
    assert run.code == 1
    assert run.stdout == ""
    denied, malformed = run.stderr.splitlines()
    assert denied.startswith(f"sidecar-webhook inject: {source}, document 2 (Deployment bad-path): denied: ")
    assert 'annotation sidecar.example/log-path: "logs/app.log" is not an absolute path' in denied
    assert malformed.startswith(f"sidecar-webhook inject: {source}, document 3, items[0] (Job odd): ")
    assert "spec.template.spec.containers: Input should be a valid list" in malformed


def test_invalid_yaml_exits_1_naming_the_line_and_prints_nothing(inject: Inject) -> None:
    run = inject("-", stdin="kind: Pod\nmetadata:\n  name: [unclosed\n")
    assert run.code == 1
    assert run.stdout == ""
    assert run.stderr.startswith("sidecar-webhook inject: <stdin>: invalid YAML at line 4, column 1: ")


def test_empty_documents_are_left_out_but_counted_in_messages(inject: Inject) -> None:
    pod = (INPUTS / "pod.yaml").read_text()
    printed = inject("-", stdin=f"---\n{pod}---\n---\n{pod}---\n")
    assert [d["kind"] for d in yaml.safe_load_all(printed.stdout)] == ["Pod", "Pod"]
    denied = inject("-", stdin=f"{pod}---\n---\n{pod.replace('/var/log/app.log', 'app.log')}")
    assert denied.stderr.startswith("sidecar-webhook inject: <stdin>, document 3 (Pod sidecar): denied: ")


def test_unreadable_input_and_directory_without_manifests_exit_2(inject: Inject, tmp_path: Path) -> None:
    missing = inject(tmp_path / "nope.yaml")
    assert (missing.code, missing.stdout) == (2, "")
    assert "cannot read" in missing.stderr and "No such file" in missing.stderr
    empty = inject(tmp_path)
    assert (empty.code, empty.stdout) == (2, "")
    assert "no .yaml, .yml or .json file in" in empty.stderr


def test_inject_reads_stdin_and_uses_the_settings_from_the_environment() -> None:
    run = sidecar_webhook(
        "inject",
        "-f",
        "-",
        stdin=(INPUTS / "pod.yaml").read_bytes(),
        env={"SIDECAR_WEBHOOK_SIDECAR_IMAGE": "registry.example/busybox:1.37"},
    )
    assert run.returncode == 0, run.stderr
    (pod,) = yaml.safe_load_all(run.stdout)
    assert pod["spec"]["containers"][1]["image"] == "registry.example/busybox:1.37"


def test_inject_leaves_the_callers_documents_unchanged(settings: Settings) -> None:
    parsed = manifests.parse((INPUTS / "list.yaml").read_bytes(), "list.yaml")
    before = json.dumps(parsed)
    injected = manifests.inject([("list.yaml", parsed)], settings)
    assert json.dumps(parsed) == before
    assert injected.documents != parsed


@PROPERTY_RUN
@given(annotated_pods())
def test_a_workload_template_gets_exactly_what_the_webhook_gives_its_pods(pod: dict[str, Any]) -> None:
    settings = Settings.model_construct(**Settings.model_validate({}).model_dump())
    decision = decide_pod(pod, settings)
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "generated"},
        "spec": {"template": {"metadata": pod["metadata"], "spec": pod["spec"]}},
    }
    try:
        injected = manifests.inject([("generated.yaml", [deployment])], settings)
    except manifests.Rejected as refused:
        assert not decision.allowed
        (note,) = refused.notes
        assert note.message == f"denied: {decision.message}"
        return
    expected = apply(pod, list(decision.patch))
    (printed,) = yaml.safe_load_all(manifests.render(injected.documents))
    assert printed["spec"]["template"] == {"metadata": expected["metadata"], "spec": expected["spec"]}


def test_a_misspelled_annotation_is_warned_of_by_inject(inject: Inject, tmp_path: Path) -> None:
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations:\n"
        "    sidecar.example/logpath: /var/log/app.log\n"
        "spec:\n  containers: [{name: app, image: alpine}]\n"
    )
    run = inject(manifest)
    assert run.code == 0
    assert run.stderr == (
        f"sidecar-webhook inject: warning: {manifest}, document 1 (Pod p): annotation "
        '"sidecar.example/logpath" is not one sidecar-webhook knows and does nothing: '
        "did you mean sidecar.example/log-path?\n"
    )
