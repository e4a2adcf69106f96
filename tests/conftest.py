"""Shared fixtures: one Settings built without reading the environment, and the real server process,
started once per test module that asks for it, with a client that trusts only its CA."""

from collections.abc import Iterator

import httpx
import pytest

from tests.server import RunningServer, running_server
from webhook.settings import Settings


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--e2e",
        action="store_true",
        help="run tests/e2e against the cluster in KUBECONFIG: it builds the image, installs the webhook "
        "and removes it (see tests/e2e/README.md)",
    )


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings.model_construct(**Settings.model_validate({}).model_dump())


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp(request.module.__name__) / "certs") as running:
        yield running


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c
