"""The package as users install it: a wheel in a fresh virtualenv, run outside the checkout."""

import base64
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import yaml

from webhook import certs

ROOT = Path(__file__).resolve().parent.parent


def test_packaged_webhook_configuration_is_a_copy_of_deploys() -> None:
    # `certs manifests` reads the copy; kustomize reads deploy/'s. Changed one? Copy it over the other:
    # cp deploy/base/mutatingwebhookconfiguration.yaml webhook/deploy/
    packaged = certs.DEPLOY_DIR / certs.WEBHOOK_CONFIGURATION
    assert packaged.read_bytes() == (ROOT / "deploy" / "base" / certs.WEBHOOK_CONFIGURATION).read_bytes()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_certs_manifests_works_from_a_wheel_installed_in_a_fresh_virtualenv(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", tmp_path, ROOT],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("sidecar_webhook-*.whl")
    venv.create(tmp_path / "venv", with_pip=True)
    python = tmp_path / "venv" / "bin" / "python"
    installed = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--constraint", ROOT / "constraints.txt", wheel],
        capture_output=True,
        text=True,
    )
    assert installed.returncode == 0, installed.stderr
    cli = tmp_path / "venv" / "bin" / "sidecar-webhook"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([cli, *args], cwd=elsewhere, capture_output=True, text=True, env=env)

    where = subprocess.run(
        [python, "-c", "import webhook; print(webhook.__file__)"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
    )
    assert where.stdout.startswith(str(tmp_path / "venv")), where
    created = run("certs", "create", "--service", "sidecar-webhook", "--namespace", "sidecar-webhook")
    assert created.returncode == 0, created.stderr
    printed = run("certs", "manifests")
    assert printed.returncode == 0, printed.stderr
    secret, configuration = yaml.safe_load_all(printed.stdout)
    assert secret["metadata"]["name"] == "sidecar-webhook-tls"
    ca = (elsewhere / "certs" / "ca.crt").read_bytes()
    bundles = [base64.b64decode(w["clientConfig"]["caBundle"]) for w in configuration["webhooks"]]
    assert bundles == [ca] * len(bundles) == [ca, ca]
