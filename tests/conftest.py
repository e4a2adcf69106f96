"""Shared fixtures: one Settings for the tests, built without reading the environment."""

import pytest

from webhook.settings import Settings


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings.model_construct(**Settings.model_validate({}).model_dump())
