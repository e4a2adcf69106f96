"""A real kube-apiserver for tests, the envtest way: etcd and kube-apiserver started from KUBEBUILDER_ASSETS,
once per module, and clients of it.

KUBEBUILDER_ASSETS names a directory with etcd, kube-apiserver and kubectl, the layout `setup-envtest use -p
path` prints (in CI, its test kit's, beside the repository and not part of a clone:
`export KUBEBUILDER_ASSETS=$(bash ../shared/kube/assets.sh | tail -1)`).
Nothing else is needed: the certificates, the ServiceAccount signing key and the admin token are made here.
With no nodes and no controller-manager, pods are only stored; admission webhooks are called as on any
cluster (point them at a server on this machine with clientConfig.url)."""

import base64
import os
import secrets
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.server import free_ports, stop_process
from webhook import pki
from webhook.tls import CA_CERT, TLS_CERT, TLS_KEY

ROOT = Path(__file__).resolve().parent.parent
BINARIES = ("etcd", "kube-apiserver", "kubectl")
HOW_TO_GET = (
    "these tests start etcd and kube-apiserver themselves from KUBEBUILDER_ASSETS, a directory with "
    f"{', '.join(BINARIES)}: `export KUBEBUILDER_ASSETS=$(setup-envtest use -p path)`, or in CI with its "
    "test kit (beside the repository, not part of a clone): "
    "`export KUBEBUILDER_ASSETS=$(bash ../shared/kube/assets.sh | tail -1)`"
)
SERVICE_CIDR = "10.96.0.0/24"
# What a pod reaches the API server by: the first address of SERVICE_CIDR and the Service's names.
SERVING_HOSTS = (
    "127.0.0.1",
    "localhost",
    "10.96.0.1",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
)
# kube-apiserver is ready in about 3 s alone; the machine may be shared and busy.
READY_SECONDS = 90
# Free ports are chosen before the processes bind them: another process may take one meanwhile.
START_ATTEMPTS = 3


def assets() -> Path:
    """The envtest binaries, or skip saying how to get them."""
    directory = os.environ.get("KUBEBUILDER_ASSETS")
    if not directory:
        pytest.skip(f"KUBEBUILDER_ASSETS is not set: {HOW_TO_GET}")
    missing = [b for b in BINARIES if not (Path(directory) / b).is_file()]
    if missing:
        pytest.skip(f"KUBEBUILDER_ASSETS={directory} lacks {', '.join(missing)}: {HOW_TO_GET}")
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
        return self.state_dir / "pki" / CA_CERT

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
def control_plane(*apiserver_flags: str) -> Iterator[ControlPlane]:
    """etcd and kube-apiserver (with `apiserver_flags` too) on free loopback ports, ready, with the
    `default` ServiceAccount; stopped (only these two processes) and their directory removed afterwards."""
    binaries = assets()
    with tempfile.TemporaryDirectory(prefix="sidecar-webhook-api-") as name, ExitStack() as running:
        state = Path(name)
        token = _write_credentials(state)
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                api = running.enter_context(_started(binaries, state, token, attempt, apiserver_flags))
                break
            except PortTaken:
                if attempt == START_ATTEMPTS:
                    raise
        yield api


class PortTaken(RuntimeError):
    """A port chosen as free was bound by someone else before etcd or kube-apiserver could."""


def _write_credentials(state: Path) -> str:
    """The serving certificate from a throwaway CA, the ServiceAccount token signing key, and an admin
    token in system:masters (returned). The directory is the creator's alone (mkdtemp: 0700)."""
    validity = timedelta(days=1)
    ca = pki.create_ca("sidecar-webhook test API server CA", validity)
    pki.write_material(state / "pki", ca, pki.issue_serving_certificate(ca, SERVING_HOSTS, validity))
    signing_key = ec.generate_private_key(ec.SECP256R1())
    (state / "sa.key").write_bytes(pki.key_pem(signing_key))
    (state / "sa.pub").write_bytes(
        signing_key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    token = secrets.token_hex(24)
    (state / "tokens.csv").write_text(f"{token},admin,admin,system:masters\n")
    return token


@contextmanager
def _started(
    binaries: Path, state: Path, token: str, attempt: int, flags: tuple[str, ...] = ()
) -> Iterator[ControlPlane]:
    etcd_port, peer_port, port = free_ports(3)
    logs = state / "logs"
    logs.mkdir(exist_ok=True)
    with ExitStack() as processes:
        # Stopped in reverse: kube-apiserver first and alone, then etcd (both at once can hang the first).
        # No --unsafe-no-fsync: etcd 3.4 (Debian's, which the kube kit links) does not know it.
        etcd = _start(
            logs / "etcd.log",
            *(str(binaries / "etcd"), "--name", "default", "--data-dir", str(state / f"etcd-{attempt}")),
            *("--listen-client-urls", f"http://127.0.0.1:{etcd_port}"),
            *("--advertise-client-urls", f"http://127.0.0.1:{etcd_port}"),
            *("--listen-peer-urls", f"http://127.0.0.1:{peer_port}", "--log-level", "warn"),
        )
        processes.callback(stop_process, etcd)
        pki_dir = state / "pki"
        apiserver = _start(
            logs / "kube-apiserver.log",
            *(str(binaries / "kube-apiserver"), "--etcd-servers", f"http://127.0.0.1:{etcd_port}"),
            *("--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1", "--secure-port", str(port)),
            *("--tls-cert-file", str(pki_dir / TLS_CERT), "--tls-private-key-file", str(pki_dir / TLS_KEY)),
            *("--token-auth-file", str(state / "tokens.csv"), "--authorization-mode", "Node,RBAC"),
            # ServiceAccount tokens (`kubectl create token`, TokenRequest): signed with the key, checked
            # with its public half.
            *("--service-account-issuer", "https://kubernetes.default.svc"),
            *("--service-account-signing-key-file", str(state / "sa.key")),
            *("--service-account-key-file", str(state / "sa.pub")),
            *("--service-cluster-ip-range", SERVICE_CIDR),
            # The default admission plugins run, MutatingAdmissionWebhook and ServiceAccount among them.
            *flags,
        )
        processes.callback(stop_process, apiserver)
        api = ControlPlane(state, _write_kubeconfig(state, port, token), binaries / "kubectl")
        _wait_until_ready(api, {"etcd": (etcd, logs / "etcd.log"), "kube-apiserver": (apiserver, api.log)})
        _create_default_service_account(api)
        yield api


def _start(log: Path, *command: str) -> subprocess.Popen[bytes]:
    """`command` with its output in `log` (replaced: an earlier attempt's is of no use)."""
    with log.open("wb") as output:
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT)


def _write_kubeconfig(state: Path, port: int, token: str) -> Path:
    """The admin's kubeconfig; clients check the server's certificate against the throwaway CA."""
    ca = base64.b64encode((state / "pki" / CA_CERT).read_bytes()).decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "envtest",
                "cluster": {"server": f"https://127.0.0.1:{port}", "certificate-authority-data": ca},
            }
        ],
        "users": [{"name": "admin", "user": {"token": token}}],
        "contexts": [{"name": "envtest", "context": {"cluster": "envtest", "user": "admin"}}],
        "current-context": "envtest",
    }
    path = state / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


def _wait_until_ready(api: ControlPlane, processes: dict[str, tuple[subprocess.Popen[bytes], Path]]) -> None:
    """Until /readyz answers 200 over TLS verified against the CA; an exited process ends the wait."""

    def ready() -> bool:
        for name, (process, log) in processes.items():
            if process.poll() is not None:
                text = log.read_text(errors="replace")
                error = PortTaken if "address already in use" in text else RuntimeError
                raise error(f"{name} exited with {process.returncode}; the end of its log:\n{text[-3000:]}")
        try:
            # Briefly: until kube-apiserver binds it, whoever holds the port may accept and never answer.
            with api.client() as client:
                return client.get("/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        _wait_for("kube-apiserver answers /readyz", ready, READY_SECONDS)
    except TimeoutError as error:
        raise TimeoutError(
            f"{error}; the end of its log:\n{api.log.read_text(errors='replace')[-3000:]}"
        ) from None


def _create_default_service_account(api: ControlPlane) -> None:
    """No controller-manager runs to create it, and the ServiceAccount admission plugin refuses pods in
    namespace `default` without it."""

    def created(client: httpx.Client) -> bool:
        response = client.post(
            "/api/v1/namespaces/default/serviceaccounts", json={"metadata": {"name": "default"}}
        )
        if response.status_code == 404:  # until the API server has made namespace default
            return False
        if response.status_code not in (201, 409):
            raise RuntimeError(
                f"create serviceaccount default/default: {response.status_code} {response.text}"
            )
        return True

    with api.client() as client:
        _wait_for("namespace default exists", lambda: created(client), 30)


def _wait_for(what: str, condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {seconds} s: {what}")
        time.sleep(0.1)
