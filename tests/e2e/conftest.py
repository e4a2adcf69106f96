"""The end-to-end suite's fixtures: a cluster asked for with --e2e, the webhook installed once, a namespace
per test, and the timings it measured, printed at the end (measured, never asserted)."""

import shutil
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.e2e.cluster import MEASURED, install, kubectl

HOW_TO_RUN = (
    "end-to-end tests run only when asked: `pytest tests/e2e --e2e` against the cluster in KUBECONFIG "
    "(minikube, kind, ...; see tests/e2e/README.md); .ci/run runs them on the one-node cluster of CI's test "
    "kit (../shared/kube, which a clone does not have)"
)


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> None:
    if not request.config.getoption("--e2e"):
        pytest.skip(HOW_TO_RUN)
    if shutil.which("kubectl") is None:
        pytest.fail(
            "--e2e needs kubectl on PATH "
            "(in CI, its test kit's: export PATH=$(bash ../shared/kube/assets.sh | tail -1):$PATH)"
        )
    kubectl("get", "--raw", "/readyz", timeout=20)


@pytest.fixture(scope="session")
def image(cluster: None) -> None:
    """Build the image and make it available to the node, as deploy/README.md says."""
    started = time.monotonic()
    install("image")
    MEASURED["image built and loaded, s"] = time.monotonic() - started


@pytest.fixture(scope="session")
def installed(image: None) -> Iterator[None]:
    """Install deploy/ and wait for the rollout, as deploy/README.md says. Uninstalls at the end whatever
    happened (the last test checks that uninstalling leaves nothing behind)."""
    applied = time.monotonic()
    try:
        install("apply")
        MEASURED["install applied and rolled out, s"] = time.monotonic() - applied
        yield
    finally:
        install("down")


@pytest.fixture
def namespace(installed: None, request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"e2e-{request.node.name[5:30].rstrip('_').replace('_', '-')}-{uuid.uuid4().hex[:5]}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if MEASURED:
        terminalreporter.section("measured on the cluster (not asserted)")
        for what, value in MEASURED.items():
            terminalreporter.write_line(
                f"{what:<72} {value:8.1f}" if what.endswith(", s") else f"{what:<72} {value:6.0f}"
            )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The Helm chart's tests last: they install the same cluster-wide objects as deploy/, which Helm will
    not take over, so they run once the kustomize install is gone (test_on_a_node.py uninstalls it last)."""
    items.sort(key=lambda item: item.path.name == "test_helm.py")
