"""Invariants over generated pods that no list of examples covers."""

import re
from typing import Any

from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from tests.kube import (
    SERVICE_ACCOUNT_DIR,
    all_containers,
    apply,
    keeps,
    restricted_violations,
    run_service_account_plugin,
    schema_errors,
)
from webhook.engine import decide_pod
from webhook.settings import Settings
from webhook.sidecar import FOLLOW

# Small pools, so collisions (names, directories, nested mounts) happen often.
CONTAINER_NAMES = ["app", "web", "log-a", "log-a-2", "log-b", "sidecar-logs", "init"]
VOLUME_NAMES = [
    "data",
    "logs",
    "sidecar-logs",
    "sidecar-logs-2",
    "sidecar-no-token",
    "log-a",
    "kube-api-access-x1",
]
DIRECTORIES = ["/var/log", "/var/log/app", "/data", "/data/logs", "/l", "/x/y/z"]
FILES = [f"{d}/{f}" for d in DIRECTORIES for f in ("a.log", "b.log", "A_b.LOG")]
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
RESTRICTED = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
PROPERTY_RUN = hypothesis_settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def volume_source(name: str) -> dict[str, Any]:
    if name.startswith("kube-api-access-"):
        return {"projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}
    return {"emptyDir": {}}


@st.composite
def containers(draw: st.DrawFn, name: str, volumes: list[str], restricted: bool) -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "image": "alpine"}
    chosen = draw(st.lists(st.sampled_from(volumes), unique=True, max_size=3)) if volumes else []
    paths = draw(
        st.lists(
            st.sampled_from([*DIRECTORIES, SERVICE_ACCOUNT_DIR]),
            min_size=len(chosen),
            max_size=len(chosen),
            unique=True,
        )
    )
    mounts = []
    for volume, path in zip(chosen, paths, strict=True):
        mount: dict[str, Any] = {"name": volume, "mountPath": path}
        if draw(st.booleans()) and not volume.startswith("kube-api-access-"):
            mount["subPath"] = draw(st.sampled_from(["s", "a/b"]))
        mounts.append(mount)
    if mounts or draw(st.booleans()):
        c["volumeMounts"] = mounts
    if restricted:
        c["securityContext"] = RESTRICTED
    return c


@st.composite
def annotated_pods(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(st.sampled_from(CONTAINER_NAMES), min_size=1, max_size=4, unique=True))
    n_init = draw(st.integers(0, len(names) - 1))
    volumes = draw(st.lists(st.sampled_from(VOLUME_NAMES), unique=True, max_size=4))
    restricted = draw(st.booleans())
    spec: dict[str, Any] = {
        "containers": [draw(containers(n, volumes, restricted)) for n in names[n_init:]],
    }
    if n_init:
        spec["initContainers"] = [draw(containers(n, volumes, restricted)) for n in names[:n_init]]
    if volumes or draw(st.booleans()):
        spec["volumes"] = [{"name": v, **volume_source(v)} for v in volumes]
    if policy := draw(st.sampled_from([None, "Always", "OnFailure", "Never"])):
        spec["restartPolicy"] = policy
    if draw(st.booleans()):
        spec["automountServiceAccountToken"] = False
    annotations = {
        "sidecar.example/log-path": ", ".join(draw(st.lists(st.sampled_from(FILES), min_size=1, max_size=4)))
    }
    if draw(st.booleans()):
        targets = draw(st.lists(st.sampled_from([*names, "missing"]), min_size=1, max_size=3))
        annotations["sidecar.example/containers"] = ",".join(targets)
    if mode := draw(st.sampled_from([None, "auto", "classic", "native", "bogus"])):
        annotations["sidecar.example/mode"] = mode
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "annotations": annotations},
        "spec": spec,
    }


def check_pod_is_well_formed(pod: dict[str, Any]) -> None:
    every = all_containers(pod)
    container_names = [c["name"] for c in every]
    volume_names = [v["name"] for v in pod["spec"].get("volumes", [])]
    assert len(container_names) == len(set(container_names)), container_names
    assert len(volume_names) == len(set(volume_names)), volume_names
    assert all(DNS_LABEL.match(n) for n in [*container_names, *volume_names])
    for c in every:
        mounts = c.get("volumeMounts", [])
        assert all(m["name"] in volume_names for m in mounts), "every mount references a volume"
        paths = [m["mountPath"] for m in mounts]
        assert len(paths) == len(set(paths)), f"{c['name']} mounts twice at one path: {paths}"


@PROPERTY_RUN
@given(annotated_pods())
def test_patch_applies_and_keeps_the_pod_well_formed_and_a_second_pass_adds_nothing(
    settings: Settings, pod: dict[str, Any]
) -> None:
    check_pod_is_well_formed(pod)
    decision = decide_pod(pod, settings)
    if not decision.allowed:
        assert decision.message.startswith("annotation sidecar.example/")
        assert "expected" in decision.message
        return
    assert decision.patch, "an annotated pod without our sidecars always gets a patch"
    result = apply(pod, list(decision.patch))
    check_pod_is_well_formed(result)
    assert keeps(pod, result)
    assert schema_errors(result) == []
    assert set(restricted_violations(result)) <= set(restricted_violations(pod))
    files = [f.strip() for f in pod["metadata"]["annotations"]["sidecar.example/log-path"].split(",")]
    tailed = [c["command"][-1] for c in all_containers(result) if c.get("command", [])[:-1] == list(FOLLOW)]
    assert sorted(tailed) == sorted(set(files))
    again = run_service_account_plugin(result)
    assert decide_pod(again, settings).patch == ()
    assert decide_pod(result, settings).patch == ()


@PROPERTY_RUN
@given(
    value=st.one_of(
        st.text(max_size=80),
        st.lists(
            st.sampled_from(
                ["/", "..", ".", ",", " ", "a", "日", "$(id)", ";rm -rf /", "\x00", "\n", "`x`", "log"]
            ),
            max_size=20,
        ).map("".join),
    )
)
def test_any_log_path_value_is_either_denied_clearly_or_tailed_without_a_shell(
    settings: Settings, value: str
) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "annotations": {"sidecar.example/log-path": value}},
        "spec": {"containers": [{"name": "app", "image": "alpine"}]},
    }
    decision = decide_pod(pod, settings)
    if not decision.allowed:
        assert decision.message.startswith("annotation sidecar.example/log-path: ")
        assert "expected" in decision.message
        return
    result = apply(pod, list(decision.patch))
    for sidecar in result["spec"]["containers"][1:]:
        # The program is fixed; the value reaches it only as its last argument, the file.
        assert sidecar["command"][:-1] == list(FOLLOW)
        assert sidecar["command"][-1] in value and sidecar["command"][-1].startswith("/")
        assert "args" not in sidecar
    assert schema_errors(result) == []
