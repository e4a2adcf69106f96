"""The engine's decisions, one rule of the annotation contract at a time."""

import json
from pathlib import Path
from typing import Any

import pytest

from tests.kube import apply, container, review_with
from webhook.decision import Decision
from webhook.engine import MalformedObject, decide, decide_pod
from webhook.envelope import AdmissionReview
from webhook.settings import Settings

LOG_PATH = "sidecar.example/log-path"


def make_pod(annotations: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    spec.setdefault("containers", [{"name": "app", "image": "alpine"}])
    metadata: dict[str, Any] = {"name": "p"}
    if annotations is not None:
        metadata["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def injected(pod: dict[str, Any], settings: Settings) -> dict[str, Any]:
    decision = decide_pod(pod, settings)
    assert decision.outcome == "patched", decision
    result = apply(pod, list(decision.patch))
    assert decide_pod(result, settings).outcome == "allowed", "a second pass adds nothing"
    return result


def denial(pod: dict[str, Any], settings: Settings) -> str:
    decision = decide_pod(pod, settings)
    assert decision.outcome == "denied", decision
    assert decision.reason == "invalid-annotation"
    return decision.message


# --- what is allowed without a patch


def test_pod_without_annotation_is_allowed_without_patch(settings: Settings) -> None:
    assert decide_pod(make_pod(), settings) == Decision.allow("no-annotation")
    assert decide_pod(make_pod({"other": "x"}), settings) == Decision.allow("no-annotation")


@pytest.mark.parametrize("operation", ["UPDATE", "DELETE", "CONNECT"])
def test_operations_other_than_create_are_allowed_without_patch(operation: str, settings: Settings) -> None:
    request = AdmissionReview.model_validate(review_with(make_pod({LOG_PATH: "/l/a.log"}), operation)).request
    assert decide(request, settings) == Decision.allow("not-create")


def test_objects_other_than_pods_and_pod_subresources_are_allowed_without_patch(settings: Settings) -> None:
    body = review_with(make_pod({LOG_PATH: "/l/a.log"}))
    body["request"]["kind"] = {"group": "apps", "version": "v1", "kind": "Deployment"}
    assert decide(AdmissionReview.model_validate(body).request, settings).reason == "not-a-pod"
    body = review_with(make_pod({LOG_PATH: "/l/a.log"}))
    body["request"]["subResource"] = "ephemeralcontainers"
    assert decide(AdmissionReview.model_validate(body).request, settings).reason == "not-a-pod"


def test_windows_pod_is_skipped_with_a_warning(settings: Settings) -> None:
    decision = decide_pod(make_pod({LOG_PATH: "/logs/a.log"}, os={"name": "windows"}), settings)
    assert decision.outcome == "allowed" and decision.reason == "windows"
    assert LOG_PATH in decision.warnings[0] and "Windows" in decision.warnings[0]


def test_object_that_is_not_pod_shaped_is_malformed(settings: Settings) -> None:
    with pytest.raises(MalformedObject, match=r"spec\.containers\.0\.name"):
        decide_pod(make_pod({LOG_PATH: "/l/a.log"}, containers=[{"name": 5}]), settings)
    with pytest.raises(MalformedObject, match=r"metadata\.annotations"):
        decide_pod(make_pod({LOG_PATH: 7}), settings)


# --- denials: each names the annotation, the value and what is expected


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "is empty"),
        ("  ", "is empty"),
        ("logs/app.log", "not an absolute path"),
        ("/var/log/", "names a directory"),
        ("/var/log/./a.log", "'.' or '..' segment"),
        ("/var/log/../etc/a.log", "'.' or '..' segment"),
        ("/var//log/a.log", "empty, '.' or '..' segment"),
        ("/var/log/a\x00.log", "control character"),
        ("/var/log/a\n.log", "control character"),
        ("/a/a.log,,/b/b.log", "empty entry"),
        (",".join(f"/l/{i}.log" for i in range(9)), "has 9 paths"),
        ("/app.log", "protected directory"),
        ("/etc/app.log", "protected directory"),
        ("/var/app.log", "protected directory"),
        ("/proc/self/a.log", "under /proc"),
        ("/dev/shm/a.log", "under /dev"),
        ("/var/run/secrets/kubernetes.io/serviceaccount/x/a.log", "protected"),
        ("/l/" + "x" * 4100 + ".log", "longer than 4096 bytes"),
    ],
)
def test_bad_log_path_is_denied_naming_annotation_value_and_expectation(
    value: str, problem: str, settings: Settings
) -> None:
    message = denial(make_pod({LOG_PATH: value}), settings)
    assert message.startswith(f"annotation {LOG_PATH}: ")
    assert problem in message
    assert "expected" in message and "absolute file paths" in message


def test_denial_shows_control_characters_escaped_and_long_values_truncated(settings: Settings) -> None:
    assert '"/var/log/a\\n.log"' in denial(make_pod({LOG_PATH: "/var/log/a\n.log"}), settings)
    message = denial(make_pod({LOG_PATH: "relative" * 1000}), settings)
    assert len(message) < 500 and "truncated" in message


def test_in_a_list_of_paths_the_denial_names_the_bad_one(settings: Settings) -> None:
    message = denial(make_pod({LOG_PATH: "/ok/a.log, bad.log"}), settings)
    assert 'has "bad.log", which is not an absolute path' in message


def test_unknown_mode_is_denied(settings: Settings) -> None:
    message = denial(make_pod({LOG_PATH: "/l/a.log", "sidecar.example/mode": "sidecar"}), settings)
    assert message == (
        'annotation sidecar.example/mode: "sidecar" is not a known mode; '
        "expected one of auto, classic, native"
    )


def test_containers_annotation_naming_a_missing_container_is_denied(settings: Settings) -> None:
    pod = make_pod({LOG_PATH: "/l/a.log", "sidecar.example/containers": "app, web"})
    message = denial(pod, settings)
    assert message.startswith('annotation sidecar.example/containers: "app, web" names web,')
    assert "expected names from spec.containers (app)" in message


def test_target_containers_with_different_volumes_at_the_log_directory_are_denied(settings: Settings) -> None:
    pod = make_pod(
        {LOG_PATH: "/var/log/app.log"},
        containers=[
            {"name": "a", "volumeMounts": [{"name": "one", "mountPath": "/var/log"}]},
            {"name": "b", "volumeMounts": [{"name": "two", "mountPath": "/var/log"}]},
        ],
        volumes=[{"name": "one", "emptyDir": {}}, {"name": "two", "emptyDir": {}}],
    )
    message = denial(pod, settings)
    assert "different volumes" in message and "'one'" in message and "'two'" in message


def test_log_directory_on_a_subpathexpr_mount_is_denied(settings: Settings) -> None:
    pod = make_pod(
        {LOG_PATH: "/var/log/app.log"},
        containers=[
            {"name": "a", "volumeMounts": [{"name": "v", "mountPath": "/var/log", "subPathExpr": "$(POD)"}]}
        ],
        volumes=[{"name": "v", "emptyDir": {}}],
    )
    assert "subPathExpr" in denial(pod, settings)


def test_protected_directories_are_configurable(settings: Settings) -> None:
    relaxed = settings.model_copy(update={"protected_dirs": frozenset({"/"})})
    assert decide_pod(make_pod({LOG_PATH: "/var/app.log"}), relaxed).outcome == "patched"


def test_the_same_annotations_are_decided_by_each_servers_settings(settings: Settings) -> None:
    # Parsed annotations are remembered (pods of one template carry the same ones): what is
    # remembered for one Settings must not answer for another, in either order.
    pod = make_pod({LOG_PATH: "/var/app.log"})
    relaxed = settings.model_copy(update={"protected_dirs": frozenset({"/"})})
    for _ in range(2):
        assert decide_pod(pod, settings).outcome == "denied"
        assert decide_pod(pod, relaxed).outcome == "patched"
    bigger = settings.model_copy(update={"sidecar_cpu_request": "20m"})
    for _ in range(2):
        requests = [
            injected(make_pod({LOG_PATH: "/l/a.log"}), s)["spec"]["containers"][-1]["resources"]["requests"]
            for s in (settings, bigger)
        ]
        assert [r["cpu"] for r in requests] == [settings.sidecar_cpu_request, "20m"]


def test_a_refused_annotation_is_refused_every_time(settings: Settings) -> None:
    pod = make_pod({LOG_PATH: "relative.log"})
    assert denial(pod, settings) == denial(pod, settings)
    assert "is not an absolute path" in denial(pod, settings)


def test_long_annotation_values_are_parsed_like_short_ones(settings: Settings) -> None:
    # Past 1 KiB the values are parsed each time rather than remembered; the answer is the same.
    long_directory = "/l/" + "d" * 2000
    pod = injected(make_pod({LOG_PATH: f"{long_directory}/a.log"}), settings)
    assert pod["spec"]["containers"][0]["volumeMounts"][0]["mountPath"] == long_directory
    assert "is not an absolute path" in denial(make_pod({LOG_PATH: "x" * 2000}), settings)


# --- what gets injected


def test_spaces_around_commas_are_ignored_and_duplicates_collapsed(settings: Settings) -> None:
    pod = injected(make_pod({LOG_PATH: " /l/a.log ,/l/b.log, /l/a.log"}), settings)
    assert [c["name"] for c in pod["spec"]["containers"]] == ["app", "log-a", "log-b"]
    assert pod["metadata"]["annotations"]["sidecar.example/injected"] == "log-a,log-b"


def test_eight_paths_are_accepted(settings: Settings) -> None:
    pod = injected(make_pod({LOG_PATH: ",".join(f"/l/{i}.log" for i in range(8))}), settings)
    assert len(pod["spec"]["containers"]) == 9


def test_each_distinct_directory_gets_one_volume_mounted_in_every_app_container(settings: Settings) -> None:
    containers = [{"name": "a"}, {"name": "b", "volumeMounts": []}]
    pod = injected(make_pod({LOG_PATH: "/x/1.log,/y/2.log,/x/3.log"}, containers=containers), settings)
    assert [v["name"] for v in pod["spec"]["volumes"]] == [
        "sidecar-logs",
        "sidecar-logs-2",
        "sidecar-state",
        "sidecar-no-token",
    ]
    for app in ("a", "b"):
        assert container(pod, app)["volumeMounts"] == [
            {"name": "sidecar-logs", "mountPath": "/x"},
            {"name": "sidecar-logs-2", "mountPath": "/y"},
        ]


def test_containers_annotation_limits_the_mount_to_the_named_containers(settings: Settings) -> None:
    containers = [{"name": "a"}, {"name": "b"}]
    pod = injected(
        make_pod({LOG_PATH: "/x/1.log", "sidecar.example/containers": "b"}, containers=containers), settings
    )
    assert "volumeMounts" not in container(pod, "a")
    assert container(pod, "b")["volumeMounts"] == [{"name": "sidecar-logs", "mountPath": "/x"}]


@pytest.mark.parametrize(
    ("restart_policy", "mode", "native", "warns"),
    [
        (None, "auto", False, False),
        ("Always", "auto", False, False),
        ("OnFailure", "auto", True, False),
        ("Never", "auto", True, False),
        ("Never", "classic", False, True),
        ("OnFailure", "classic", False, True),
        ("Always", "native", True, False),
    ],
)
def test_mode_chooses_classic_or_native_sidecar(
    restart_policy: str | None, mode: str, native: bool, warns: bool, settings: Settings
) -> None:
    spec: dict[str, Any] = {"initContainers": [{"name": "init"}]}
    if restart_policy:
        spec["restartPolicy"] = restart_policy
    pod = make_pod({LOG_PATH: "/l/a.log", "sidecar.example/mode": mode}, **spec)
    decision = decide_pod(pod, settings)
    result = apply(pod, list(decision.patch))
    if native:
        assert [c["name"] for c in result["spec"]["initContainers"]] == ["log-a", "init"]
        assert result["spec"]["initContainers"][0]["restartPolicy"] == "Always"
    else:
        assert result["spec"]["containers"][-1]["name"] == "log-a"
        assert "restartPolicy" not in result["spec"]["containers"][-1]
    assert bool(decision.warnings) == warns
    if warns:
        assert "will not complete" in decision.warnings[0]


def test_native_sidecars_are_inserted_first_in_their_order(settings: Settings) -> None:
    pod = injected(
        make_pod(
            {LOG_PATH: "/l/a.log,/l/b.log", "sidecar.example/mode": "native"},
            initContainers=[{"name": "init"}],
        ),
        settings,
    )
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["log-a", "log-b", "init"]


def test_names_already_used_in_the_pod_get_a_number(settings: Settings) -> None:
    pod = make_pod(
        {LOG_PATH: "/l/app.log"},
        containers=[{"name": "app"}, {"name": "log-app"}],
        initContainers=[{"name": "log-app-2"}],
        ephemeralContainers=[{"name": "log-app-3"}],
        volumes=[{"name": "sidecar-logs", "emptyDir": {}}, {"name": "sidecar-state", "emptyDir": {}}],
    )
    result = injected(pod, settings)
    assert result["spec"]["containers"][-1]["name"] == "log-app-4"
    assert [v["name"] for v in result["spec"]["volumes"]] == [
        "sidecar-logs",
        "sidecar-state",
        "sidecar-logs-2",
        "sidecar-state-2",
        "sidecar-no-token",
    ]


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/l/App_Server.LOG", "log-app-server"),
        ("/l/api.v2.log", "log-api-v2"),
        ("/l/.hidden", "log--hidden"),
        ("/l/日志.log", "log"),
        ("/l/trailing_.log", "log-trailing"),
        ("/l/" + "a" * 100 + ".log", "log-" + "a" * 59),
    ],
)
def test_sidecar_name_is_the_file_stem_as_a_dns_label(path: str, name: str, settings: Settings) -> None:
    pod = injected(make_pod({LOG_PATH: path}), settings)
    assert pod["spec"]["containers"][-1]["name"] == name


def test_long_names_stay_within_63_characters_with_a_number(settings: Settings) -> None:
    long = "/l/" + "a" * 100 + ".log"
    pod = injected(make_pod({LOG_PATH: f"{long},/m/{'a' * 100}.log"}), settings)
    names = [c["name"] for c in pod["spec"]["containers"][1:]]
    assert names == ["log-" + "a" * 59, "log-" + "a" * 57 + "-2"]


def test_existing_mount_at_the_log_directory_is_reused_not_duplicated(settings: Settings) -> None:
    pod = make_pod(
        {LOG_PATH: "/var/log/app.log"},
        containers=[
            {"name": "app", "volumeMounts": [{"name": "data", "mountPath": "/var/log", "subPath": "logs"}]}
        ],
        volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "c"}}],
    )
    result = injected(pod, settings)
    assert container(result, "app")["volumeMounts"] == pod["spec"]["containers"][0]["volumeMounts"]
    assert container(result, "log-app")["volumeMounts"][0] == {
        "name": "data",
        "mountPath": "/var/log",
        "subPath": "logs",
        "readOnly": True,
    }
    assert [v["name"] for v in result["spec"]["volumes"]] == ["data", "sidecar-state", "sidecar-no-token"]


def test_mount_at_a_parent_directory_is_reused_through_a_subpath(settings: Settings) -> None:
    # An emptyDir at /data/logs would hide what the app's volume has there: share that volume instead.
    pod = make_pod(
        {LOG_PATH: "/data/logs/app.log"},
        containers=[
            {"name": "app", "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
            {"name": "helper"},
        ],
        volumes=[{"name": "data", "emptyDir": {}}],
    )
    result = injected(pod, settings)
    shared = {"name": "data", "mountPath": "/data/logs", "subPath": "logs"}
    assert container(result, "helper")["volumeMounts"] == [shared]
    assert container(result, "log-app")["volumeMounts"][0] == {**shared, "readOnly": True}
    assert container(result, "app")["volumeMounts"] == [{"name": "data", "mountPath": "/data"}]


# --- what the pod may borrow: a reused volume is reached no more widely than the pod reaches it


def borrowing(*mounts: dict[str, Any] | None, volume: dict[str, Any] | None = None) -> dict[str, Any]:
    """A pod whose containers a, b, ... mount volume `data` as given (None: not at all), logging in /data."""
    return make_pod(
        {LOG_PATH: "/data/app.log"},
        containers=[
            {"name": name, "image": "alpine", **({"volumeMounts": [mount]} if mount else {})}
            for name, mount in zip("abc", mounts, strict=False)
        ],
        volumes=[volume or {"name": "data", "hostPath": {"path": "/srv/data"}}],
    )


def test_a_target_without_the_mount_gets_it_read_only_where_the_others_have_it_read_only(
    settings: Settings,
) -> None:
    # The security review's case: a read-only hostPath /data in a became a writable /data in b.
    read_only = {"name": "data", "mountPath": "/data", "readOnly": True}
    result = injected(borrowing(read_only, None), settings)
    assert container(result, "b")["volumeMounts"] == [read_only]
    assert container(result, "log-app")["volumeMounts"][0] == read_only


def test_recursive_read_only_is_carried_to_every_mount_the_webhook_adds(settings: Settings) -> None:
    mount = {"name": "data", "mountPath": "/srv", "readOnly": True, "recursiveReadOnly": "Enabled"}
    result = injected(
        make_pod(
            {LOG_PATH: "/srv/logs/app.log"},
            containers=[{"name": "a", "volumeMounts": [mount]}, {"name": "b"}],
            volumes=[{"name": "data", "hostPath": {"path": "/srv"}}],
        ),
        settings,
    )
    expected = {**mount, "mountPath": "/srv/logs", "subPath": "logs"}
    assert container(result, "b")["volumeMounts"] == [expected]
    assert container(result, "log-app")["volumeMounts"][0] == expected


def test_recursive_read_only_disabled_is_left_unsaid_as_kubernetes_reads_it_alike(settings: Settings) -> None:
    mount = {"name": "data", "mountPath": "/data", "readOnly": True, "recursiveReadOnly": "Disabled"}
    result = injected(borrowing(mount, None), settings)
    assert container(result, "b")["volumeMounts"] == [
        {"name": "data", "mountPath": "/data", "readOnly": True}
    ]


def test_a_target_without_the_mount_gets_it_writable_where_the_others_write(settings: Settings) -> None:
    writable = {"name": "data", "mountPath": "/data", "readOnly": False}
    result = injected(borrowing(writable, None), settings)
    assert container(result, "b")["volumeMounts"] == [{"name": "data", "mountPath": "/data"}]
    assert container(result, "log-app")["volumeMounts"][0] == {**writable, "readOnly": True}


@pytest.mark.parametrize(
    ("first", "second", "says"),
    [
        ({"readOnly": True}, {}, "container 'a' mounts it read-only; container 'b' mounts it writable"),
        (
            {"readOnly": True, "recursiveReadOnly": "Enabled"},
            {"readOnly": True},
            "container 'a' mounts it read-only, recursiveReadOnly Enabled; container 'b' mounts it read-only",
        ),
    ],
)
def test_targets_that_mount_the_log_directory_with_different_access_are_denied_when_another_lacks_it(
    first: dict[str, Any], second: dict[str, Any], says: str, settings: Settings
) -> None:
    at = {"name": "data", "mountPath": "/data"}
    message = denial(borrowing({**at, **first}, {**at, **second}, None), settings)
    assert message.startswith('annotation sidecar.example/log-path: "/data/app.log" has its directory /data')
    assert f"different access ({says})" in message
    assert "cannot tell which to give 'c'" in message
    assert "expected the target containers to mount the log directory alike" in message


def test_targets_with_different_access_that_all_have_the_mount_share_it_and_the_sidecar_reads_strictest(
    settings: Settings,
) -> None:
    # A writer and a reader of one volume: nothing is added to either, so nothing is to choose for them.
    writer = {"name": "data", "mountPath": "/data"}
    reader = {**writer, "readOnly": True, "recursiveReadOnly": "IfPossible"}
    result = injected(borrowing(writer, reader), settings)
    assert container(result, "a")["volumeMounts"] == [writer]
    assert container(result, "b")["volumeMounts"] == [reader]
    assert container(result, "log-app")["volumeMounts"][0] == reader


@pytest.mark.parametrize(
    ("source", "kind"),
    [
        ({"secret": {"secretName": "creds"}}, "secret"),
        ({"configMap": {"name": "settings"}}, "configMap"),
        ({"projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}, "projected"),
        (
            {"downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
            "downwardAPI",
        ),
    ],
)
@pytest.mark.parametrize("mount_path", ["/data", "/"])
def test_log_directory_on_a_volume_of_api_objects_is_denied_saying_why(
    source: dict[str, Any], kind: str, mount_path: str, settings: Settings
) -> None:
    pod = borrowing(
        {"name": "data", "mountPath": mount_path, "readOnly": True}, volume={"name": "data", **source}
    )
    message = denial(pod, settings)
    assert message.startswith('annotation sidecar.example/log-path: "/data/app.log" has its directory /data')
    assert f"on the {kind} volume 'data' of container 'a'" in message
    assert "the sidecar would show them to whoever may read the pod's logs" in message
    assert "expected a log directory on a volume of the pod's own files" in message


def test_a_secret_volume_beside_the_log_directory_is_no_reason_to_deny(settings: Settings) -> None:
    pod = make_pod(
        {LOG_PATH: "/var/log/app/app.log"},
        containers=[{"name": "app", "volumeMounts": [{"name": "creds", "mountPath": "/var/log/app/creds"}]}],
        volumes=[{"name": "creds", "secret": {"secretName": "creds"}}],
    )
    result = injected(pod, settings)
    assert container(result, "log-app")["volumeMounts"][0]["name"] == "sidecar-logs"


def test_pod_with_automount_off_gets_no_token_volume(settings: Settings) -> None:
    pod = injected(make_pod({LOG_PATH: "/l/a.log"}, automountServiceAccountToken=False), settings)
    assert [v["name"] for v in pod["spec"]["volumes"]] == ["sidecar-logs", "sidecar-state"]
    assert [m["mountPath"] for m in container(pod, "log-a")["volumeMounts"]] == ["/l", "/run/log-sidecar"]


def test_absent_arrays_and_maps_are_created_whole(settings: Settings) -> None:
    pod = make_pod({LOG_PATH: "/l/a.log"}, restartPolicy="Never")
    ops = list(decide_pod(pod, settings).patch)
    assert {op["path"] for op in ops} == {
        "/spec/volumes",
        "/spec/containers/0/volumeMounts",
        "/spec/initContainers",
        "/metadata/annotations/sidecar.example~1injected",
    }


def test_settings_choose_image_and_resources(settings: Settings) -> None:
    custom = settings.model_copy(
        update={"sidecar_image": "registry.local/busybox:1.37", "sidecar_memory_limit": "64Mi"}
    )
    decision = decide_pod(make_pod({LOG_PATH: "/l/a.log"}), custom)
    sidecar = container(apply(make_pod({LOG_PATH: "/l/a.log"}), list(decision.patch)), "log-a")
    assert sidecar["image"] == "registry.local/busybox:1.37"
    assert sidecar["resources"]["limits"]["memory"] == "64Mi"


def test_marker_copied_without_its_sidecar_does_not_stop_injection(settings: Settings) -> None:
    # A pod template copied from an injected pod keeps the marker but not the sidecar.
    pod = injected(make_pod({LOG_PATH: "/l/a.log", "sidecar.example/injected": "log-a"}), settings)
    assert [c["name"] for c in pod["spec"]["containers"]] == ["app", "log-a"]


def test_json_pointer_segments_are_escaped() -> None:
    from webhook.patch import pointer

    assert pointer("metadata", "annotations", "a~b/c") == "/metadata/annotations/a~0b~1c"
    assert pointer("x", "~1") == "/x/~01"


# --- sidecars of earlier versions


EARLIER_SIDECARS: dict[str, list[str]] = json.loads(
    (Path(__file__).parent / "fixtures" / "earlier-sidecars.json").read_text()
)["commands"]


@pytest.mark.parametrize("native", [False, True])
@pytest.mark.parametrize("version", EARLIER_SIDECARS)
def test_a_pod_injected_by_an_earlier_version_gets_no_second_sidecar(
    settings: Settings, native: bool, version: str
) -> None:
    """Pods injected by earlier versions are in clusters today and are admitted again (reinvocation, a
    ReplicaSet's template copied from one)."""
    pod = injected(
        make_pod({LOG_PATH: "/var/log/app.log"}, restartPolicy="Never" if native else "Always"), settings
    )
    container(pod, "log-app")["command"] = EARLIER_SIDECARS[version]
    assert decide_pod(pod, settings) == Decision.allow("already-injected")


def test_a_changed_copy_of_an_earlier_program_is_not_taken_for_a_sidecar(settings: Settings) -> None:
    sh, dash_c, script, name, file = EARLIER_SIDECARS[
        "sh around tail with a SIGTERM trap (7dddbb4 to f6dcd80)"
    ]
    own = {"name": "own", "command": [sh, dash_c, script + "touch /tmp/x\n", name, file]}
    result = injected(make_pod({LOG_PATH: "/var/log/app.log"}, containers=[{"name": "app"}, own]), settings)
    assert container(result, "log-app")["command"][-2] == "/var/log/app.log"


def test_a_sidecar_is_recognised_by_its_command_whatever_its_image(settings: Settings) -> None:
    """Earlier versions wrote the short `busybox:1.37`; a new image setting must not inject twice."""
    pod = injected(make_pod({LOG_PATH: "/var/log/app.log"}), settings)
    container(pod, "log-app")["image"] = "busybox:1.37"
    assert decide_pod(pod, settings) == Decision.allow("already-injected")


def test_a_container_that_only_resembles_the_sidecar_is_not_taken_for_it(settings: Settings) -> None:
    pod = make_pod(
        {LOG_PATH: "/var/log/app.log"},
        containers=[
            {"name": "app", "image": "alpine"},
            {"name": "own-tail", "image": "alpine", "command": ["tail", "-F", "/var/log/app.log"]},
        ],
    )
    result = injected(pod, settings)
    assert container(result, "log-app")["command"][-2] == "/var/log/app.log"


# --- names of ours that are not ours: warned of, never refused


@pytest.mark.parametrize(
    ("written", "meant"),
    [
        ("sidecar.example/cpu-requests", "sidecar.example/cpu-request"),
        ("sidecar.example/Memory-Limit", "sidecar.example/memory-limit"),
        ("sidecar.example/container", "sidecar.example/containers"),
        ("sidecar.example/volume-size", "sidecar.example/log-volume-size"),
    ],
)
def test_an_unknown_annotation_beside_log_path_is_warned_of_naming_the_closest_known_one(
    written: str, meant: str, settings: Settings
) -> None:
    pod = make_pod({LOG_PATH: "/l/a.log", written: "100m"})
    decision = decide_pod(pod, settings)
    assert decision.outcome == "patched"
    assert decision.warnings == (
        f'annotation "{written}" is not one sidecar-webhook knows and does nothing: did you mean {meant}?',
    )
    assert decision.patch == decide_pod(make_pod({LOG_PATH: "/l/a.log"}), settings).patch


def test_a_misspelled_log_path_alone_gets_no_sidecar_but_a_warning(settings: Settings) -> None:
    decision = decide_pod(make_pod({"sidecar.example/logpath": "/l/a.log"}), settings)
    assert (decision.outcome, decision.reason) == ("allowed", "no-annotation")
    assert decision.warnings == (
        'annotation "sidecar.example/logpath" is not one sidecar-webhook knows and does nothing: '
        "did you mean sidecar.example/log-path?",
    )


def test_an_unknown_annotation_nothing_is_close_to_is_warned_of_with_the_known_ones(
    settings: Settings,
) -> None:
    (warning,) = decide_pod(make_pod({"sidecar.example/enabled": "true"}), settings).warnings
    assert warning.startswith('annotation "sidecar.example/enabled" is not one sidecar-webhook knows')
    assert "it knows sidecar.example/containers, sidecar.example/cpu-limit," in warning


def test_thousands_of_unknown_annotations_get_a_bounded_number_of_warnings(settings: Settings) -> None:
    from webhook.annotations import MAX_UNKNOWN_WARNINGS

    many = {f"sidecar.example/x{i}": "" for i in range(3000)}
    warnings = decide_pod(make_pod({LOG_PATH: "/l/a.log", **many}), settings).warnings
    assert len(warnings) == MAX_UNKNOWN_WARNINGS + 1
    assert (
        warnings[-1]
        == f"and {3000 - MAX_UNKNOWN_WARNINGS} more sidecar.example/ annotations it does not know"
    )


def test_every_known_annotation_and_other_prefixes_get_no_warning(settings: Settings) -> None:
    from webhook.annotations import KNOWN

    assert "sidecar.example/injected" in KNOWN, "the webhook's own marker"
    assert {"sidecar.example/log-path", "sidecar.example/log-volume-size"} <= KNOWN
    pod = make_pod({LOG_PATH: "/l/a.log", "other.example/logpath": "x", "sidecar.example": "x"})
    assert decide_pod(pod, settings).warnings == ()
    assert decide_pod(injected(pod, settings), settings) == Decision.allow("already-injected")


def test_a_denied_pod_still_hears_of_its_misspelled_annotation(settings: Settings) -> None:
    decision = decide_pod(make_pod({LOG_PATH: "relative.log", "sidecar.example/mod": "native"}), settings)
    assert decision.outcome == "denied"
    assert decision.warnings and "did you mean sidecar.example/mode?" in decision.warnings[0]
