"""--client-ca-file: the real server process over real TLS takes reviews only from clients whose certificate
its client CA signed, as the API server sends with an AdmissionConfiguration; the probes stay open. Last, a
real kube-apiserver (envtest) configured as docs/certificates.md shows, calling the server."""

import base64
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.apiserver import ROOT, ControlPlane, control_plane
from tests.kube import apply, container, load_review, patch_ops
from tests.server import RunningServer, running_server
from webhook import pki

JSON = {"content-type": "application/json"}
SEED = json.dumps(load_review("seed-pod"))
DAY = timedelta(days=1)
DEPLOY_CONFIGURATION = ROOT / "deploy" / "base" / "mutatingwebhookconfiguration.yaml"


def issue(ca: pki.KeyPair, usage: x509.ObjectIdentifier, directory: Path, name: str) -> tuple[Path, Path]:
    """A certificate for `usage` (clientAuth: the API server's) signed by `ca`, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(ca.cert.not_valid_before_utc)
        .not_valid_after(ca.cert.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    cert_file, key_file = directory / f"{name}.crt", directory / f"{name}.key"
    cert_file.write_bytes(pki.cert_pem(cert))
    key_file.write_bytes(pki.key_pem(key))
    return cert_file, key_file


@dataclass
class Setup:
    server: RunningServer
    client_ca: pki.KeyPair
    work: Path

    def client(self, certificate: tuple[Path, Path] | None = None) -> httpx.Client:
        """What the API server does: trust the server's CA; present `certificate` if given."""
        context = self.server.tls_context()
        if certificate is not None:
            context.load_cert_chain(*certificate)
        return httpx.Client(base_url=self.server.url, verify=context, timeout=10)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    work = tmp_path_factory.mktemp("client-certificates")
    client_ca = pki.create_ca("sidecar-webhook test client CA", DAY)
    (work / "client-ca.crt").write_bytes(pki.cert_pem(client_ca.cert))
    # running_server waits for /readyz without a client certificate, as the kubelet probes.
    with running_server(work / "certs", "--client-ca-file", str(work / "client-ca.crt")) as server:
        yield Setup(server, client_ca, work)


def test_a_client_with_a_certificate_from_the_client_ca_gets_its_review(setup: Setup) -> None:
    certificate = issue(setup.client_ca, ExtendedKeyUsageOID.CLIENT_AUTH, setup.work, "apiserver")
    with setup.client(certificate) as client:
        answer = client.post("/mutate", content=SEED, headers=JSON)
    assert answer.status_code == 200, answer.text
    response = answer.json()["response"]
    assert response["allowed"] is True
    pod = apply(load_review("seed-pod")["request"]["object"], patch_ops(response))
    assert container(pod, "log-app")["image"] == "docker.io/library/busybox:1.37"


def test_a_client_without_a_certificate_is_refused_with_403_before_its_body_is_read(setup: Setup) -> None:
    with setup.client() as client:
        answer = client.post("/mutate", content=SEED, headers=JSON)
        assert answer.status_code == 403
        assert answer.json()["error"].startswith("a client certificate is required")
        assert answer.headers["connection"] == "close"
    assert 'sidecar_webhook_refused_calls_total{status="403"} 1.0' in setup.server.metrics()


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_the_probes_answer_without_a_client_certificate_as_the_kubelet_sends_none(
    setup: Setup, path: str
) -> None:
    with setup.client() as client:
        assert client.get(path).status_code == 200


# At TLS 1.3 the client's side of the handshake is over before the server has checked its certificate:
# the refusal arrives as the connection closing, with no answer.
def test_a_certificate_from_another_ca_gets_the_connection_closed_without_an_answer(setup: Setup) -> None:
    stranger = pki.create_ca("someone else's CA", DAY)
    certificate = issue(stranger, ExtendedKeyUsageOID.CLIENT_AUTH, setup.work, "stranger")
    with setup.client(certificate) as client, pytest.raises(httpx.TransportError):
        client.post("/mutate", content=SEED, headers=JSON)


def test_a_certificate_of_the_client_ca_for_servers_only_gets_the_connection_closed_without_an_answer(
    setup: Setup,
) -> None:
    # Signed by the right CA, but for serverAuth: not a certificate to authenticate a client with.
    certificate = issue(setup.client_ca, ExtendedKeyUsageOID.SERVER_AUTH, setup.work, "server-only")
    with setup.client(certificate) as client, pytest.raises(httpx.TransportError):
        client.post("/mutate", content=SEED, headers=JSON)


def test_without_the_setting_a_client_without_a_certificate_gets_its_review(client: httpx.Client) -> None:
    answer = client.post("/mutate", content=SEED, headers=JSON)
    assert answer.status_code == 200 and answer.json()["response"]["allowed"] is True


# --- a real kube-apiserver as docs/certificates.md configures it: AdmissionConfiguration, kubeconfig, cert


def admission_configuration(work: Path, users: dict[str, tuple[Path, Path]]) -> Path:
    """The AdmissionConfiguration docs/certificates.md documents, with a kubeconfig giving each webhook host
    its client certificate."""
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "users": [
            {"name": host, "user": {"client-certificate": str(cert), "client-key": str(key)}}
            for host, (cert, key) in users.items()
        ],
    }
    (work / "admission-kubeconfig.yaml").write_text(yaml.safe_dump(kubeconfig))
    configuration = {
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "AdmissionConfiguration",
        "plugins": [
            {
                "name": "MutatingAdmissionWebhook",
                "configuration": {
                    "apiVersion": "apiserver.config.k8s.io/v1",
                    "kind": "WebhookAdmissionConfiguration",
                    "kubeConfigFile": str(work / "admission-kubeconfig.yaml"),
                },
            }
        ],
    }
    (work / "admission.yaml").write_text(yaml.safe_dump(configuration))
    return work / "admission.yaml"


@pytest.fixture(scope="module")
def api(setup: Setup) -> Iterator[ControlPlane]:
    # A certificate for the webhook called at 127.0.0.1:PORT only; at localhost:PORT it sends none.
    certificate = issue(setup.client_ca, ExtendedKeyUsageOID.CLIENT_AUTH, setup.work, "kube-apiserver")
    config = admission_configuration(setup.work, {f"127.0.0.1:{setup.server.port}": certificate})
    with control_plane("--admission-control-config-file", str(config)) as plane:
        yield plane


@contextmanager
def webhook_at(api: ControlPlane, server: RunningServer, host: str) -> Iterator[None]:
    """deploy/'s webhook configuration, calling the server at https://HOST:PORT; removed after."""
    (configuration,) = [d for d in yaml.safe_load_all(DEPLOY_CONFIGURATION.read_text()) if d]
    configuration["metadata"]["name"] = f"sidecar-webhook-{host}"
    ca = base64.b64encode((server.cert_dir / "ca.crt").read_bytes()).decode()
    for hook in configuration["webhooks"]:  # each at its own path: /mutate, /warn
        path = hook["clientConfig"]["service"]["path"]
        hook["clientConfig"] = {"url": f"https://{host}:{server.port}{path}", "caBundle": ca}
    api.kubectl("apply", "-f", "-", input=json.dumps(configuration))
    try:
        yield
    finally:
        api.kubectl("delete", "mutatingwebhookconfiguration", configuration["metadata"]["name"])


def create_pod(api: ControlPlane, until: Callable[[httpx.Response], bool]) -> httpx.Response:
    """Create (dry run) an opted-in pod until `until` holds of the answer: the API server starts calling
    a new webhook configuration within a moment of its creation, not at once."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "app-", "annotations": {"sidecar.example/log-path": "/var/log/app.log"}},
        "spec": {"containers": [{"name": "app", "image": "docker.io/library/busybox:1.37"}]},
    }
    deadline = time.monotonic() + 30
    with api.client() as client:
        while True:
            answer = client.post("/api/v1/namespaces/default/pods", params={"dryRun": "All"}, json=pod)
            if until(answer) or time.monotonic() > deadline:
                return answer
            time.sleep(0.1)


def injected(answer: httpx.Response) -> bool:
    return answer.status_code == 201 and len(answer.json()["spec"]["containers"]) == 2


def test_an_api_server_that_presents_its_certificate_from_the_admission_configuration_injects_pods(
    setup: Setup, api: ControlPlane
) -> None:
    with webhook_at(api, setup.server, "127.0.0.1"):
        answer = create_pod(api, injected)
    assert injected(answer), answer.text
    assert [c["name"] for c in answer.json()["spec"]["containers"]] == ["app", "log-app"]


def test_an_api_server_without_a_certificate_for_the_webhook_is_refused_and_so_is_the_pod(
    setup: Setup, api: ControlPlane
) -> None:
    # failurePolicy Fail: a pod that asked for a sidecar is not created without one.
    refused_before = refusals_logged(setup.server)
    with webhook_at(api, setup.server, "localhost"):
        answer = create_pod(api, lambda a: a.status_code != 201)
    assert answer.status_code == 500, answer.text
    assert 'failed calling webhook "log-sidecar.sidecar.example"' in answer.json()["message"]
    # The API server reads the 403's body as a Status it is not, so it says "unknown"; the server's log
    # says why.
    assert refusals_logged(setup.server) > refused_before


def refusals_logged(server: RunningServer) -> int:
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    return sum(1 for line in lines if line.get("status") == 403 and line.get("decision") == "refused")
