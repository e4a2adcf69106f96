"""A real kube-apiserver for tests: found the envtest way, started once per module, and clients of it.

KUBEBUILDER_ASSETS names the directory with etcd, kube-apiserver and kubectl (setup-envtest's layout, or
the kit's: `export KUBEBUILDER_ASSETS=$(bash ../shared/kube/assets.sh | tail -1)`). The control plane is
started by the kit's control-plane.sh (its certificates, ServiceAccount token signing and RBAC are what
these tests need), with its own copies of the same binaries; kubectl is KUBEBUILDER_ASSETS'."""

import base64
import os
import shutil
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
KIT = Path(os.environ.get("KUBE_KIT", ROOT.parent / "shared" / "kube"))
HOW_TO_GET = (
    "these tests need a real API server: export KUBEBUILDER_ASSETS=<dir with etcd, kube-apiserver, "
    "kubectl> (`setup-envtest use -p path`, or "
    "`export KUBEBUILDER_ASSETS=$(bash ../shared/kube/assets.sh | tail -1)`) "
    "and have the kit's control-plane.sh at ../shared/kube (or KUBE_KIT=<its directory>)"
)


def assets() -> Path:
    """The envtest binaries, or skip saying how to get them."""
    directory = os.environ.get("KUBEBUILDER_ASSETS")
    if not directory:
        pytest.skip(f"KUBEBUILDER_ASSETS is not set: {HOW_TO_GET}")
    missing = [b for b in ("etcd", "kube-apiserver", "kubectl") if not (Path(directory) / b).is_file()]
    if missing:
        pytest.skip(f"KUBEBUILDER_ASSETS={directory} lacks {', '.join(missing)}: {HOW_TO_GET}")
    if not (KIT / "control-plane.sh").is_file():
        pytest.skip(f"no control-plane.sh in {KIT}: {HOW_TO_GET}")
    return Path(directory)


@dataclass
class ControlPlane:
    state_dir: Path
    kubeconfig: Path
    kubectl_path: Path

    @property
    def config(self) -> dict[str, Any]:
        loaded: dict[str, Any] = yaml.safe_load(self.kubeconfig.read_text())
        return loaded

    @property
    def server(self) -> str:
        return str(self.config["clusters"][0]["cluster"]["server"])

    @property
    def ca_file(self) -> Path:
        path = self.state_dir / "apiserver-ca.crt"
        if not path.exists():
            ca = self.config["clusters"][0]["cluster"]["certificate-authority-data"]
            path.write_bytes(base64.b64decode(ca))
        return path

    @property
    def log(self) -> Path:
        return self.state_dir / "logs" / "kube-apiserver.log"

    def client(self, token: str | None = None) -> httpx.Client:
        token = token or self.config["users"][0]["user"]["token"]
        return httpx.Client(
            base_url=self.server,
            verify=ssl.create_default_context(cafile=self.ca_file),
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        result = subprocess.run(
            [str(self.kubectl_path), "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr}")
        return result.stdout

    def kubeconfig_for(self, token: str, path: Path) -> Path:
        """A kubeconfig that authenticates with `token` (a ServiceAccount's, not the admin's)."""
        config = self.config
        config["users"][0]["user"] = {"token": token}
        path.write_text(yaml.safe_dump(config))
        return path


@contextmanager
def control_plane() -> Iterator[ControlPlane]:
    binaries = assets()
    state = Path(tempfile.mkdtemp(prefix="sidecar-webhook-api-"))
    script = str(KIT / "control-plane.sh")
    env = {**os.environ, "PATH": f"{binaries}:{os.environ.get('PATH', '')}"}
    try:
        started = subprocess.run(["bash", script, "up", str(state)], capture_output=True, text=True, env=env)
        if started.returncode != 0:
            raise RuntimeError(f"control-plane.sh up failed:\n{started.stderr}")
        yield ControlPlane(state, Path(started.stdout.strip().splitlines()[-1]), binaries / "kubectl")
    finally:
        subprocess.run(["bash", script, "down", str(state)], capture_output=True, env=env)
        shutil.rmtree(state, ignore_errors=True)
