"""What one review may cost: pods and bodies beyond the caps are refused with what is too large and
the limit, the largest pods within them are injected, and pods without the annotation are untouched."""

import json
from typing import Any

import orjson
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from tests.kube import review_with
from webhook import admission
from webhook.admission import COUNT_SLICE_BYTES, MAX_JSON_OBJECTS, json_objects
from webhook.engine import MAX_CONTAINERS, MAX_PATCH_BYTES, MAX_VOLUME_MOUNTS, decide_pod
from webhook.settings import Settings

LOG_PATH = "sidecar.example/log-path"
# Bounded: each example is up to 192 KiB.
settings_profile = hypothesis_settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
EIGHT_FILES = ",".join(f"/logs/{i}/app.log" for i in range(8))


def pod_of(containers: int, files: str = EIGHT_FILES, mounts: int = 0) -> dict[str, Any]:
    return {
        "metadata": {"name": "big", "annotations": {LOG_PATH: files}},
        "spec": {
            "containers": [
                {
                    "name": f"c{i}",
                    "image": "app",
                    "volumeMounts": [{"name": "data", "mountPath": f"/data/{j}"} for j in range(mounts)],
                }
                for i in range(containers)
            ],
            "volumes": [{"name": "data", "emptyDir": {}}],
        },
    }


def test_a_pod_with_more_containers_than_the_cap_is_denied_naming_count_and_cap(settings: Settings) -> None:
    decision = decide_pod(pod_of(MAX_CONTAINERS + 1), settings)
    assert (decision.allowed, decision.reason) == (False, "too-large")
    assert (
        f"{MAX_CONTAINERS + 1} containers and init containers, more than {MAX_CONTAINERS}" in decision.message
    )


def test_a_pod_at_the_container_cap_with_eight_log_directories_is_injected(settings: Settings) -> None:
    decision = decide_pod(pod_of(MAX_CONTAINERS), settings)
    assert (decision.allowed, decision.reason) == (True, "injected")
    assert len(orjson.dumps(decision.patch)) <= MAX_PATCH_BYTES


def test_a_pod_with_more_volume_mounts_than_the_cap_is_denied(settings: Settings) -> None:
    mounts = MAX_VOLUME_MOUNTS // 10 + 1
    decision = decide_pod(pod_of(10, mounts=mounts), settings)
    assert (decision.allowed, decision.reason) == (False, "too-large")
    assert f"{10 * mounts} volumeMounts, more than {MAX_VOLUME_MOUNTS}" in decision.message


def test_a_patch_larger_than_the_cap_is_denied_rather_than_sent(settings: Settings) -> None:
    # Eight directories of nearly the longest path allowed, mounted in every one of 250 containers.
    long_directory = "/" + "/".join(["d" * 200] * 19)
    files = ",".join(f"{long_directory}{i}/app.log" for i in range(8))
    decision = decide_pod(pod_of(MAX_CONTAINERS, files), settings)
    assert (decision.allowed, decision.reason) == (False, "too-large")
    assert f"more than the {MAX_PATCH_BYTES}" in decision.message


def test_a_large_pod_without_the_annotation_is_allowed_as_ever(settings: Settings) -> None:
    pod = pod_of(MAX_CONTAINERS * 4)
    del pod["metadata"]["annotations"]
    decision = decide_pod(pod, settings)
    assert (decision.allowed, decision.reason) == (True, "no-annotation")


def test_a_body_of_more_json_objects_than_the_cap_is_refused_with_413_before_it_is_parsed(
    settings: Settings,
) -> None:
    pod = pod_of(0)
    pod["spec"]["containers"] = [{"name": f"c{i}"} for i in range(MAX_JSON_OBJECTS)]
    reply = admission.review(json.dumps(review_with(pod)).encode(), settings)
    assert reply.status_code == 413
    assert f"more than the {MAX_JSON_OBJECTS}" in json.loads(reply.body)["error"]


# Bodies of runs of other bytes and of braces, across slice boundaries.
bodies = st.lists(st.tuples(st.integers(0, COUNT_SLICE_BYTES + 10), st.integers(0, 3000)), max_size=5).map(
    lambda runs: b"".join(b"x" * other + b"{" * braces for other, braces in runs)
)


@settings_profile
@given(body=bodies, stop_above=st.integers(0, 6000))
def test_the_sliced_count_is_the_bytes_count_up_to_the_cap_and_stops_past_it(
    body: bytes, stop_above: int
) -> None:
    found = json_objects(body, stop_above)
    if body.count(b"{") <= stop_above:
        assert found == body.count(b"{")
    else:
        # Past the cap: at least one more than it, and never beyond the slice that crossed it.
        assert stop_above < found <= body.count(b"{")
        crossed = next(
            end
            for end in range(COUNT_SLICE_BYTES, len(body) + COUNT_SLICE_BYTES, COUNT_SLICE_BYTES)
            if body[:end].count(b"{") > stop_above
        )
        assert found == body[:crossed].count(b"{")


def test_the_denial_reaches_the_api_server_as_allowed_false_with_its_message(settings: Settings) -> None:
    reply = admission.review(json.dumps(review_with(pod_of(MAX_CONTAINERS + 1))).encode(), settings)
    response = json.loads(reply.body)["response"]
    assert reply.status_code == 200 and response["allowed"] is False
    assert response["status"]["code"] == 400
    assert "does not inject into a pod this large" in response["status"]["message"]
