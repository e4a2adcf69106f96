"""Who the sidecar runs as: the app's own non-root user, else nobody, with a reason when it matters."""

from typing import Any

import pytest

from tests.kube import apply, container, restricted_violations
from tests.test_engine import injected, make_pod
from webhook.engine import decide_pod
from webhook.settings import Settings

LOG_PATH = "sidecar.example/log-path"


def app(name: str = "app", **security: Any) -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "image": "alpine"}
    if security:
        c["securityContext"] = security
    return c


def sidecar_user(pod: dict[str, Any], settings: Settings) -> tuple[int, int]:
    security = container(injected(pod, settings), "log-app")["securityContext"]
    assert security["runAsNonRoot"] is True
    return security["runAsUser"], security["runAsGroup"]


def warnings(pod: dict[str, Any], settings: Settings) -> tuple[str, ...]:
    return decide_pod(pod, settings).warnings


@pytest.mark.parametrize(
    ("spec", "user"),
    [
        # the container's securityContext over the pod's, for the user and the group alike
        ({"containers": [app(runAsUser=1000)]}, (1000, 65534)),
        ({"containers": [app()], "securityContext": {"runAsUser": 1000, "runAsGroup": 3000}}, (1000, 3000)),
        (
            {"containers": [app(runAsUser=1000)], "securityContext": {"runAsUser": 2000, "runAsGroup": 3000}},
            (1000, 3000),
        ),
        ({"containers": [app(runAsGroup=4000)], "securityContext": {"runAsUser": 1000}}, (1000, 4000)),
        # several targets: one uid; the group only when they agree on one
        ({"containers": [app(runAsUser=1000), app("web", runAsUser=1000)]}, (1000, 65534)),
        (
            {"containers": [app(runAsUser=1000, runAsGroup=5), app("web", runAsUser=1000, runAsGroup=6)]},
            (1000, 65534),
        ),
        # root's group is never borrowed either
        ({"containers": [app(runAsUser=1000, runAsGroup=0)]}, (1000, 65534)),
        # ids the API server refuses (it rejects the pod for its own containers): not borrowed
        ({"containers": [app(runAsUser=-1)]}, (65534, 65534)),
        ({"containers": [app(runAsUser=2**31)]}, (65534, 65534)),
        # nothing said: the image's user, unknown here
        ({"containers": [app(runAsNonRoot=True)]}, (65534, 65534)),
    ],
)
def test_sidecar_runs_as_the_targets_one_non_root_user(
    spec: dict[str, Any], user: tuple[int, int], settings: Settings
) -> None:
    pod = make_pod({LOG_PATH: "/var/log/app.log"}, **spec)
    assert sidecar_user(pod, settings) == user
    assert warnings(pod, settings) == ()


def test_only_the_target_containers_count(settings: Settings) -> None:
    pod = make_pod(
        {LOG_PATH: "/var/log/app.log", "sidecar.example/containers": "app"},
        containers=[app(runAsUser=1000), app("proxy", runAsUser=1337)],
    )
    assert sidecar_user(pod, settings) == (1000, 65534)
    assert warnings(pod, settings) == ()


def test_root_is_never_borrowed_and_the_warning_says_why(settings: Settings) -> None:
    pod = make_pod({LOG_PATH: "/var/log/app.log"}, securityContext={"runAsUser": 0})
    assert sidecar_user(pod, settings) == (65534, 65534)
    assert warnings(pod, settings) == (
        "the log sidecar runs as uid 65534, not as the app: container 'app' runs as root (runAsUser 0), "
        "which a sidecar never borrows, so it can read only a log file that others may read",
    )
    two = make_pod({LOG_PATH: "/var/log/app.log"}, containers=[app(runAsUser=0), app("web", runAsUser=0)])
    (warning,) = warnings(two, settings)
    assert "containers 'app', 'web' run as root" in warning


def test_different_users_keep_nobody_and_the_warning_names_each(settings: Settings) -> None:
    pod = make_pod({LOG_PATH: "/var/log/app.log"}, containers=[app(runAsUser=1000), app("web")])
    assert sidecar_user(pod, settings) == (65534, 65534)
    (warning,) = warnings(pod, settings)
    assert "different users (app: 1000, web: unset)" in warning
    assert "sidecar.example/containers" in warning


def test_the_warning_is_given_once_however_many_sidecars(settings: Settings) -> None:
    pod = make_pod({LOG_PATH: "/l/a.log,/l/b.log"}, securityContext={"runAsUser": 0})
    assert len(warnings(pod, settings)) == 1


def test_an_injected_pod_gets_no_warning_and_no_patch_on_a_second_pass(settings: Settings) -> None:
    pod = make_pod({LOG_PATH: "/var/log/app.log"}, securityContext={"runAsUser": 0})
    again = decide_pod(apply(pod, list(decide_pod(pod, settings).patch)), settings)
    assert (again.outcome, again.patch, again.warnings) == ("allowed", (), ())


def test_a_borrowed_user_keeps_the_sidecar_restricted_compliant(settings: Settings) -> None:
    pod = make_pod({LOG_PATH: "/var/log/app.log"}, containers=[app(runAsUser=1000)])
    assert not [v for v in restricted_violations(injected(pod, settings)) if "log-app" in v]
