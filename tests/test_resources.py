"""The sidecar's requests and limits: the annotations over the server's defaults, within its maxima."""

import pytest
from pydantic import ValidationError

from tests.kube import container
from tests.test_engine import denial, injected, make_pod
from webhook.settings import Settings

LOG_PATH = "sidecar.example/log-path"
DEFAULTS = {"requests": {"cpu": "5m", "memory": "8Mi"}, "limits": {"cpu": "50m", "memory": "32Mi"}}
EXAMPLES = {"cpu": '"100m" or "0.5"', "memory": '"64Mi"'}


def resources(annotations: dict[str, str], settings: Settings) -> dict[str, dict[str, str]]:
    pod = injected(make_pod({LOG_PATH: "/var/log/app.log", **annotations}), settings)
    found: dict[str, dict[str, str]] = container(pod, "log-app")["resources"]
    return found


def test_without_annotations_the_sidecar_gets_the_server_defaults(settings: Settings) -> None:
    assert resources({}, settings) == DEFAULTS


def test_each_annotation_sets_its_own_field_as_written(settings: Settings) -> None:
    asked = {
        "sidecar.example/cpu-request": "20m",
        "sidecar.example/cpu-limit": "0.25",
        "sidecar.example/memory-request": "16Mi",
        "sidecar.example/memory-limit": "128M",
    }
    assert resources(asked, settings) == {
        "requests": {"cpu": "20m", "memory": "16Mi"},
        "limits": {"cpu": "0.25", "memory": "128M"},
    }
    assert resources({"sidecar.example/memory-request": "16Mi"}, settings) == {
        "requests": {"cpu": "5m", "memory": "16Mi"},
        "limits": DEFAULTS["limits"],
    }


def test_a_request_above_the_default_limit_raises_the_limit_to_it(settings: Settings) -> None:
    asked = {"sidecar.example/cpu-request": "200m", "sidecar.example/memory-request": "64Mi"}
    assert resources(asked, settings) == {"requests": asked_as(asked), "limits": asked_as(asked)}


def test_a_limit_below_the_default_request_lowers_the_request_to_it(settings: Settings) -> None:
    asked = {"sidecar.example/cpu-limit": "2m", "sidecar.example/memory-limit": "4Mi"}
    assert resources(asked, settings) == {"requests": asked_as(asked), "limits": asked_as(asked)}


def asked_as(annotations: dict[str, str]) -> dict[str, str]:
    return {name.split("/")[1].split("-")[0]: value for name, value in annotations.items()}


def test_a_request_equal_to_its_limit_written_differently_is_accepted(settings: Settings) -> None:
    asked = {"sidecar.example/cpu-request": "1000m", "sidecar.example/cpu-limit": "1"}
    assert resources(asked, settings)["requests"]["cpu"] == "1000m"


def test_a_zero_request_is_accepted(settings: Settings) -> None:
    assert resources({"sidecar.example/cpu-request": "0"}, settings)["requests"]["cpu"] == "0"


def test_a_request_above_its_limit_is_denied_naming_both(settings: Settings) -> None:
    asked = {"sidecar.example/memory-request": "64Mi", "sidecar.example/memory-limit": "64M"}
    assert denial(make_pod({LOG_PATH: "/l/a.log", **asked}), settings) == (
        'annotation sidecar.example/memory-request: "64Mi" is above the limit '
        'sidecar.example/memory-limit: "64M"; expected a memory request at most its limit'
    )


@pytest.mark.parametrize(
    ("annotation", "value", "problem"),
    [
        ("sidecar.example/cpu-limit", "1001m", "is above the maximum of 1 that this webhook allows"),
        ("sidecar.example/cpu-request", "1.000000001", "is above the maximum of 1 "),
        ("sidecar.example/memory-limit", "513Mi", "is above the maximum of 512Mi "),
        ("sidecar.example/memory-request", "1e999", "is above the maximum of 512Mi "),
        ("sidecar.example/cpu-request", "lots", "is not a Kubernetes quantity"),
        ("sidecar.example/cpu-request", " 10m", "is not a Kubernetes quantity"),
        ("sidecar.example/memory-limit", "64MB", "is not a Kubernetes quantity"),
        ("sidecar.example/cpu-request", "-1m", "is negative"),
        ("sidecar.example/memory-request", "128m", "is not a whole number of bytes"),
        ("sidecar.example/cpu-limit", "0", "is 0, which Kubernetes reads as no limit at all"),
        ("sidecar.example/memory-limit", "0Mi", "is 0, "),
    ],
)
def test_a_bad_quantity_is_denied_naming_annotation_value_and_expectation(
    annotation: str, value: str, problem: str, settings: Settings
) -> None:
    message = denial(make_pod({LOG_PATH: "/l/a.log", annotation: value}), settings)
    resource = annotation.split("/")[1].split("-")[0]
    maximum = {"cpu": "1", "memory": "512Mi"}[resource]
    assert message.startswith(f'annotation {annotation}: "{value}" {problem}')
    assert message.endswith(
        f"; expected a {resource} quantity of at most {maximum}, e.g. {EXAMPLES[resource]}"
    )


def test_maxima_are_settings(settings: Settings) -> None:
    roomy = settings.model_copy(update={"sidecar_cpu_max": "4", "sidecar_memory_max": "2Gi"})
    asked = {"sidecar.example/cpu-limit": "2", "sidecar.example/memory-limit": "1Gi"}
    assert resources(asked, roomy)["limits"] == {"cpu": "2", "memory": "1Gi"}
    message = denial(make_pod({LOG_PATH: "/l/a.log", "sidecar.example/cpu-limit": "5"}), roomy)
    assert "is above the maximum of 4 " in message


@pytest.mark.parametrize(
    ("variables", "says"),
    [
        ({"sidecar_cpu_limit": "0"}, "sidecar_cpu_limit is 0"),
        (
            {"sidecar_cpu_request": "100m"},
            "sidecar_cpu_request 100m, _limit 50m and _max 1 must be in that order",
        ),
        ({"sidecar_memory_max": "16Mi"}, "sidecar_memory_request 8Mi, _limit 32Mi and _max 16Mi"),
        ({"sidecar_memory_max": "lots"}, "not a Kubernetes quantity"),
        ({"sidecar_cpu_request": "-1"}, "is negative"),
    ],
)
def test_settings_that_would_break_every_injected_pod_are_refused_at_startup(
    variables: dict[str, str], says: str
) -> None:
    with pytest.raises(ValidationError, match=says):
        Settings.model_validate(variables)
