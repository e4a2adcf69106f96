"""Invariants over generated pods that no list of examples covers."""

import json
import re
from decimal import Decimal
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
from webhook.sidecar import FOLLOW, state_file

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
# Users to run as, None for not said; few, so targets often agree and often don't.
USERS = [None, None, 0, 1000, 1000, 2000]
GROUPS = [None, 0, 3000]
# Quantity annotations and their exact value, worked out by hand (None: not a quantity).
CPU_VALUES = {
    "0": Decimal(0),
    "1m": Decimal("0.001"),
    "5m": Decimal("0.005"),
    "100m": Decimal("0.1"),
    "0.5": Decimal("0.5"),
    "1": Decimal(1),
    "1001m": Decimal("1.001"),
    "1e-12": Decimal("1e-9"),
    "-1m": Decimal("-0.001"),
    "1Ki": Decimal(1024),
    "1 m": None,
    "one": None,
}
MEMORY_VALUES = {
    "0": Decimal(0),
    "4Mi": Decimal(4 * 2**20),
    "8Mi": Decimal(8 * 2**20),
    "64M": Decimal(64 * 10**6),
    "0.5Gi": Decimal(2**29),
    "512Mi": Decimal(2**29),
    "513Mi": Decimal(513 * 2**20),
    "128m": Decimal("0.128"),
    "-1Mi": Decimal(-(2**20)),
    "1e9": Decimal(10**9),
    "Mi": None,
}
VALUES = {"cpu": CPU_VALUES, "memory": MEMORY_VALUES}
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
    security = {**(RESTRICTED if restricted else {}), **draw(run_as())}
    if security:
        c["securityContext"] = security
    return c


@st.composite
def run_as(draw: st.DrawFn) -> dict[str, int]:
    user, group = draw(st.sampled_from(USERS)), draw(st.sampled_from(GROUPS))
    return {
        **({"runAsUser": user} if user is not None else {}),
        **({"runAsGroup": group} if group is not None else {}),
    }


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
    if pod_security := draw(run_as()):
        spec["securityContext"] = pod_security
    annotations = {
        "sidecar.example/log-path": ", ".join(draw(st.lists(st.sampled_from(FILES), min_size=1, max_size=4)))
    }
    if draw(st.booleans()):
        targets = draw(st.lists(st.sampled_from([*names, "missing"]), min_size=1, max_size=3))
        annotations["sidecar.example/containers"] = ",".join(targets)
    if mode := draw(st.sampled_from([None, "auto", "classic", "native", "bogus"])):
        annotations["sidecar.example/mode"] = mode
    for resource, values in VALUES.items():
        for kind in ("request", "limit"):
            if quantity := draw(st.sampled_from([None, None, *values])):
                annotations[f"sidecar.example/{resource}-{kind}"] = quantity
    return pod_with(annotations, spec)


def pod_with(annotations: dict[str, str], spec: dict[str, Any]) -> dict[str, Any]:
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
    tailed = [c["command"][-2] for c in all_containers(result) if c.get("command", [])[:-2] == list(FOLLOW)]
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
        # The program is fixed; the value reaches it only as an argument, the file.
        *program, file, state = sidecar["command"]
        assert program == list(FOLLOW) and state == state_file(sidecar["name"])
        assert file in value and file.startswith("/")
        assert "args" not in sidecar
    assert schema_errors(result) == []


def new_sidecars(pod: dict[str, Any], result: dict[str, Any]) -> list[dict[str, Any]]:
    before = {c["name"] for c in all_containers(pod)}
    return [c for c in all_containers(result) if c["name"] not in before]


def effective(pod: dict[str, Any], container: dict[str, Any], field: str) -> Any:
    own = (container.get("securityContext") or {}).get(field)
    return own if own is not None else (pod["spec"].get("securityContext") or {}).get(field)


@st.composite
def pods_with_users(draw: st.DrawFn) -> dict[str, Any]:
    """Pods that are always injected, whose containers and pod say (or don't) who they run as."""
    names = draw(st.lists(st.sampled_from(["app", "web", "worker"]), min_size=1, max_size=3, unique=True))
    spec: dict[str, Any] = {"containers": [{"name": n, "image": "alpine"} for n in names]}
    for c in spec["containers"]:
        if security := draw(run_as()):
            c["securityContext"] = security
    if security := draw(run_as()):
        spec["securityContext"] = security
    annotations = {"sidecar.example/log-path": draw(st.sampled_from(FILES))}
    if draw(st.booleans()):
        annotations["sidecar.example/containers"] = ",".join(
            draw(st.permutations(names))[: len(names) // 2 + 1]
        )
    return pod_with(annotations, spec)


@PROPERTY_RUN
@given(pods_with_users())
def test_sidecar_runs_as_the_targets_one_non_root_user_else_as_nobody_with_a_reason(
    settings: Settings, pod: dict[str, Any]
) -> None:
    decision = decide_pod(pod, settings)
    result = apply(pod, list(decision.patch))
    names = pod["metadata"]["annotations"].get("sidecar.example/containers")
    targets = [c for c in pod["spec"]["containers"] if names is None or c["name"] in names.split(",")]
    users = {effective(pod, c, "runAsUser") for c in targets}
    groups = {effective(pod, c, "runAsGroup") for c in targets}
    borrowed = len(users) == 1 and users != {None} and users != {0}
    uid = users.copy().pop() if borrowed else 65534
    gid = groups.copy().pop() if borrowed and len(groups) == 1 and groups not in ({None}, {0}) else 65534
    warned = [w for w in decision.warnings if "the log sidecar runs as uid 65534" in w]
    assert len(warned) == (1 if 0 in users or (len(users) > 1 and users != {None}) else 0)
    if 0 in users:
        assert "root" in warned[0]
    sidecars = new_sidecars(pod, result)
    for sidecar in sidecars:
        security = sidecar["securityContext"]
        assert (security["runAsUser"], security["runAsGroup"]) == (uid, gid)
        assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
    names_of_sidecars = {f"container {c['name']} " for c in sidecars}
    assert not [v for v in restricted_violations(result) if any(map(v.startswith, names_of_sidecars))]


def expected_resources(annotations: dict[str, str]) -> dict[str, dict[str, str]] | str:
    """The sidecar's resources by the rules of docs/injection.md, "Resources", or the annotation that must be
    denied: each value on its own first, in the table's order, then each request against its limit."""
    defaults = {
        "cpu": (("5m", Decimal("0.005")), ("50m", Decimal("0.05")), Decimal(1)),
        "memory": (("8Mi", Decimal(8 * 2**20)), ("32Mi", Decimal(32 * 2**20)), Decimal(2**29)),
    }
    asked: dict[tuple[str, str], tuple[str, Decimal]] = {}
    for resource, (_, _, maximum) in defaults.items():
        for kind in ("request", "limit"):
            name = f"sidecar.example/{resource}-{kind}"
            if name not in annotations:
                continue
            value = VALUES[resource][annotations[name]]
            if value is None or value < 0 or value > maximum or (kind == "limit" and value == 0):
                return name
            if resource == "memory" and value != value.to_integral_value():
                return name
            asked[resource, kind] = (annotations[name], value)
    for resource in defaults:
        asked_request, asked_limit = asked.get((resource, "request")), asked.get((resource, "limit"))
        if asked_request and asked_limit and asked_request[1] > asked_limit[1]:
            return f"sidecar.example/{resource}-request"
    requests, limits = {}, {}
    for resource, (default_request, default_limit, _) in defaults.items():
        request = asked.get((resource, "request"), default_request)
        limit = asked.get((resource, "limit"), default_limit)
        if request[1] > limit[1]:  # one of them is a default, which gives way to the annotation
            request, limit = (request, request) if (resource, "request") in asked else (limit, limit)
        requests[resource], limits[resource] = request[0], limit[0]
    return {"requests": requests, "limits": limits}


@PROPERTY_RUN
@given(
    st.fixed_dictionaries(
        {},
        optional={
            f"sidecar.example/{resource}-{kind}": st.sampled_from(list(values))
            for resource, values in VALUES.items()
            for kind in ("request", "limit")
        },
    )
)
def test_sidecar_resources_follow_the_annotations_within_the_maxima_else_are_denied(
    settings: Settings, annotations: dict[str, str]
) -> None:
    annotations["sidecar.example/log-path"] = "/var/log/app.log"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "alpine"}]},
    }
    expected = expected_resources(annotations)
    decision = decide_pod(pod, settings)
    if isinstance(expected, str):
        assert not decision.allowed
        assert decision.message.startswith(f"annotation {expected}: {json.dumps(annotations[expected])}")
        assert "expected" in decision.message
        return
    (sidecar,) = new_sidecars(pod, apply(pod, list(decision.patch)))
    assert sidecar["resources"] == expected


SOURCES = {
    "hostPath": {"path": "/srv"},
    "persistentVolumeClaim": {"claimName": "c"},
    "emptyDir": {},
    "secret": {"secretName": "s"},
    "configMap": {"name": "m"},
    "projected": {"sources": [{"configMap": {"name": "m"}}]},
    "downwardAPI": {"items": [{"path": "l", "fieldRef": {"fieldPath": "metadata.labels"}}]},
}
API_OBJECT_SOURCES = {"secret", "configMap", "projected", "downwardAPI"}
# How a container may mount the volume (None: not at all); recursiveReadOnly only where readOnly is.
ACCESSES: list[dict[str, Any] | None] = [
    None,
    {},
    {"readOnly": False},
    {"readOnly": True},
    {"readOnly": True, "recursiveReadOnly": "Disabled"},
    {"readOnly": True, "recursiveReadOnly": "IfPossible"},
    {"readOnly": True, "recursiveReadOnly": "Enabled"},
]
STRENGTH = {None: 0, "Disabled": 0, "IfPossible": 1, "Enabled": 2}


@st.composite
def borrowing_pods(draw: st.DrawFn) -> dict[str, Any]:
    """Pods logging to /srv/data/app.log whose containers mount one volume of any source at or above
    that directory, each with its own access, or not at all."""
    source = draw(st.sampled_from(list(SOURCES)))
    spec: dict[str, Any] = {"containers": [], "volumes": [{"name": "data", source: SOURCES[source]}]}
    for name in ("a", "b", "c"):
        container: dict[str, Any] = {"name": name, "image": "alpine"}
        if (access := draw(st.sampled_from(ACCESSES))) is not None:
            path = draw(st.sampled_from(["/srv", "/srv/data"]))
            container["volumeMounts"] = [{"name": "data", "mountPath": path, **access}]
        spec["containers"].append(container)
    annotations = {"sidecar.example/log-path": "/srv/data/app.log"}
    if draw(st.booleans()):
        annotations["sidecar.example/containers"] = ",".join(
            draw(st.permutations("abc"))[: draw(st.integers(1, 3))]
        )
    return pod_with(annotations, spec)


@PROPERTY_RUN
@given(borrowing_pods())
def test_a_borrowed_volume_is_never_reached_more_widely_than_the_targets_reach_it_nor_shown_if_api_objects(
    settings: Settings, pod: dict[str, Any]
) -> None:
    names = pod["metadata"]["annotations"].get("sidecar.example/containers", "a,b,c").split(",")
    targets = [c for c in pod["spec"]["containers"] if c["name"] in names]
    mounts = [m for c in targets for m in c.get("volumeMounts", [])]
    source = next(k for k in pod["spec"]["volumes"][0] if k != "name")
    decision = decide_pod(pod, settings)
    if not decision.allowed:
        assert decision.message.startswith('annotation sidecar.example/log-path: "/srv/data/app.log" ')
        assert "expected" in decision.message
        return
    assert not (mounts and source in API_OBJECT_SOURCES), "a log directory on API objects is denied"
    result = apply(pod, list(decision.patch))
    before = {c["name"]: c.get("volumeMounts", []) for c in all_containers(pod)}
    added = [
        m
        for c in all_containers(result)
        for m in c.get("volumeMounts", [])
        if m["name"] == "data" and m not in before.get(c["name"], [])
    ]
    assert bool(added) == bool(mounts), "the volume is borrowed exactly when a target has it there"
    for mount in added:
        for original in mounts:
            assert mount.get("readOnly", False) >= original.get("readOnly", False), (mount, original)
            strongest = STRENGTH[mount.get("recursiveReadOnly")]
            assert strongest >= STRENGTH[original.get("recursiveReadOnly")], (mount, original)
        if not mount.get("readOnly"):
            assert "recursiveReadOnly" not in mount, "the API server refuses it on a writable mount"
    assert schema_errors(result) == []
