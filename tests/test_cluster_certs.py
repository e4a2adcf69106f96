"""The in-cluster certificate mode against a real kube-apiserver: two replicas of `serve` keep one CA in
their Secret, the caBundle in the webhook configuration, and rotate both while the API server calls them.

One control plane and one pair of servers for the whole module, in the order a cluster lives: first
start, injection, drift, RBAC, then rotations under load (validity is shortened so a CA's life passes in
three minutes). The API server calls the replicas at https://127.0.0.1:PORT/mutate: the configuration has
one webhook per replica, so every pod created goes through both."""

import base64
import copy
import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tests.apiserver import ROOT, ControlPlane, control_plane
from tests.server import RunningServer, free_port, start_server, stop_server, wait_until_ready
from webhook import cluster_certs, pki, sidecar

DEPLOY = ROOT / "deploy" / "base"
NAMESPACE = "sidecar-webhook"
SECRET = "sidecar-webhook-certs"
CONFIGURATION = "sidecar-webhook"
ANNOTATION = "sidecar.example/log-path"
CHECK_INTERVAL = 1.0
# A CA lives 3 minutes and a new one joins the bundle a minute before its end; a serving certificate
# lives 45 s and is renewed 15 s before its end: a rotation every 30 s, the CA's after about 2 minutes.
VALIDITY = {
    "--ca-validity": "180",
    "--ca-renew-before": "60",
    "--serving-validity": "45",
    "--serving-renew-before": "15",
}
# What the kube-apiserver logs when it cannot call a webhook over TLS.
TLS_ERROR = re.compile(r"x509|tls:|certificate|failed calling webhook", re.IGNORECASE)


def deploy_documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def configuration_for(ports: list[int]) -> dict[str, Any]:
    """deploy/'s configuration, without caBundle, with one injecting webhook per replica called by URL."""
    (configuration,) = deploy_documents("mutatingwebhookconfiguration.yaml")
    hook = configuration.pop("webhooks")[0]
    configuration["webhooks"] = []
    for index, port in enumerate(ports):
        replica = copy.deepcopy(hook)
        replica["name"] = f"replica-{index}.{hook['name']}"
        replica["clientConfig"] = {"url": f"https://127.0.0.1:{port}/mutate"}
        configuration["webhooks"].append(replica)
    return dict(configuration)


@dataclass
class Cluster:
    api: ControlPlane
    servers: list[RunningServer]
    configuration: dict[str, Any]
    work: Path

    def get_configuration(self) -> dict[str, Any]:
        with self.api.client() as client:
            response = client.get(
                f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{CONFIGURATION}"
            )
        response.raise_for_status()
        found: dict[str, Any] = response.json()
        return found

    def bundles(self) -> list[list[x509.Certificate]]:
        """The CAs of each webhook's caBundle ([] for one without)."""
        return [
            x509.load_pem_x509_certificates(base64.b64decode(hook["clientConfig"]["caBundle"]))
            if hook["clientConfig"].get("caBundle")
            else []
            for hook in self.get_configuration()["webhooks"]
        ]

    def secret(self) -> dict[str, bytes]:
        with self.api.client() as client:
            response = client.get(f"/api/v1/namespaces/{NAMESPACE}/secrets/{SECRET}")
        response.raise_for_status()
        return {key: base64.b64decode(value) for key, value in response.json()["data"].items()}

    def served_certificate(self, server: RunningServer, bundle: list[x509.Certificate]) -> x509.Certificate:
        """The certificate a TLS handshake gets, verified as the API server does: against the caBundle,
        for the host of the URL (127.0.0.1, an IP SAN)."""
        context = ssl.create_default_context(cadata="".join(_pem(ca) for ca in bundle))
        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der)

    def replace_configuration(self) -> dict[str, Any]:
        """What `kubectl replace` of deploy/'s file does: the caBundle is gone. Returns the object as the
        replace stored it (a replica may repair it any moment after)."""
        stored: dict[str, Any] = json.loads(
            self.api.kubectl("replace", "-o", "json", "-f", "-", input=json.dumps(self.configuration))
        )
        return stored

    def wait_for(self, what: str, condition: Callable[[], bool], seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.1)
        logs = "\n".join(s.log()[-3000:] for s in self.servers)
        raise AssertionError(f"not within {seconds} s: {what}\nserver logs (ends):\n{logs}")


def _pod(prefix: str) -> dict[str, Any]:
    """An opted-in pod; with no nodes it is only stored."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": prefix, "annotations": {ANNOTATION: "/var/log/app.log"}},
        "spec": {"containers": [{"name": "app", "image": "busybox:1.37"}]},
    }


def create_pod(client: httpx.Client) -> dict[str, Any]:
    response = client.post("/api/v1/namespaces/default/pods", json=_pod("app-"))
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def injected(pod: dict[str, Any]) -> bool:
    volumes = [v["name"] for v in pod["spec"].get("volumes", [])]
    containers = [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]
    return sidecar.LOG_VOLUME in volumes and len(containers) == 2


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(Encoding.PEM).decode()


def start_replica(work: Path, port: int, kubeconfig: Path) -> RunningServer:
    """A replica in the cluster mode, as the webhook account, called at 127.0.0.1 (and localhost, by the
    tests' clients)."""
    return start_server(
        work / f"certs-{port}",
        *("--certificates", "cluster", "--extra-host", "127.0.0.1", "--extra-host", "localhost"),
        *("--check-interval", str(CHECK_INTERVAL), *(arg for pair in VALIDITY.items() for arg in pair)),
        env={"KUBECONFIG": str(kubeconfig)},
        port=port,
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    work = tmp_path_factory.mktemp("cluster")
    with ExitStack() as stack:
        api = stack.enter_context(control_plane())
        # What deploy/ installs for the webhook's account: its empty Secret, its rights, and the guard
        # that lets it change only the caBundle, which every rotation below then writes through.
        for name in (
            "namespace.yaml",
            "serviceaccount.yaml",
            "secret.yaml",
            "rbac.yaml",
            "validatingadmissionpolicy.yaml",
        ):
            api.kubectl("apply", "-f", str(DEPLOY / name))
        token = api.kubectl("create", "token", "sidecar-webhook", "-n", NAMESPACE, "--duration", "2h").strip()
        kubeconfig = api.kubeconfig_for(token, work / "webhook-kubeconfig")
        ports = [free_port(), free_port()]
        configuration = configuration_for(ports)
        api.kubectl("apply", "-f", "-", input=json.dumps(configuration))
        # Both replicas at once, against the empty Secret deploy/ ships: they race to fill it.
        servers = [start_replica(work, port, kubeconfig) for port in ports]
        for server in servers:
            stack.callback(stop_server, server)
        for server in servers:
            wait_until_ready(server)
        yield Cluster(api, servers, configuration, work)


def test_two_servers_started_together_make_one_ca_that_every_webhook_trusts(cluster: Cluster) -> None:
    secret = cluster.secret()
    (ca,) = x509.load_pem_x509_certificates(secret["ca.crt"])
    assert cluster.bundles() == [[ca], [ca]]
    created = [line for s in cluster.servers for line in s.log().splitlines() if "created the CA" in line]
    assert len(created) == 1, created
    for server in cluster.servers:
        served = cluster.served_certificate(server, [ca])
        assert served == x509.load_pem_x509_certificate(secret["tls.crt"])
        served.verify_directly_issued_by(ca)


def test_servers_answer_ready_once_the_bundle_trusts_them(cluster: Cluster) -> None:
    for server in cluster.servers:
        with server.client() as client:
            assert client.get("/readyz").status_code == 200
        metrics = server.metrics()
        expiry = re.findall(
            r'sidecar_webhook_certificate_expiry_timestamp_seconds\{certificate="(\w+)"\} (\S+)', metrics
        )
        assert {name for name, _ in expiry} == {"ca", "serving"}
        assert all(float(value) > time.time() for _, value in expiry)
        assert 'sidecar_webhook_ca_bundle_trusts_certificate{certificate="serving"} 1.0' in metrics
        renewal = dict(
            re.findall(
                r'sidecar_webhook_certificate_renewal_timestamp_seconds\{certificate="(\w+)"\} (\S+)', metrics
            )
        )
        # The renewal window starts before expiry, and not yet for certificates just made.
        assert sorted(renewal) == ["ca", "serving"]
        assert all(time.time() < float(renewal[name]) < float(value) for name, value in expiry)


def test_pods_created_through_the_api_server_get_their_sidecar(cluster: Cluster) -> None:
    with cluster.api.client() as client:
        pod = create_pod(client)
    assert injected(pod), pod["spec"]


def test_servers_run_as_the_webhook_account_not_as_admin(cluster: Cluster) -> None:
    token = cluster.api.kubectl("create", "token", "sidecar-webhook", "-n", NAMESPACE).strip()
    with cluster.api.client(token) as client:
        assert client.get(f"/api/v1/namespaces/{NAMESPACE}/secrets/{SECRET}").status_code == 200
        assert client.get(f"/api/v1/namespaces/{NAMESPACE}/secrets").status_code == 403
        assert client.get("/api/v1/namespaces/default/pods").status_code == 403
        other = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/another"
        assert client.get(other).status_code == 403


def test_configuration_applied_again_without_ca_bundle_is_repaired_within_the_interval(
    cluster: Cluster,
) -> None:
    before = [s.log().count("caBundle repaired") for s in cluster.servers]
    replaced = cluster.replace_configuration()
    assert [hook["clientConfig"].get("caBundle") for hook in replaced["webhooks"]] == [None, None], (
        "the replace did not remove the caBundle"
    )
    # Within the check interval, plus the time of a look.
    cluster.wait_for("the caBundle is back", lambda: all(cluster.bundles()), CHECK_INTERVAL + 5)
    after = [s.log().count("caBundle repaired") for s in cluster.servers]
    assert sum(after) > sum(before)
    with cluster.api.client() as client:
        cluster.wait_for(
            "the API server uses the repaired caBundle", lambda: _creates_injected(client), seconds=10
        )
        assert injected(create_pod(client))


def _creates_injected(client: httpx.Client) -> bool:
    response = client.post("/api/v1/namespaces/default/pods", json=_pod("probe-"))
    return response.status_code == 201 and injected(response.json())


def test_a_ca_the_webhook_did_not_make_is_dropped_from_the_bundle_within_the_interval(
    cluster: Cluster,
) -> None:
    # Newer than the webhook's own CA and named like it: such a CA used to stay in the caBundle for good.
    (ours,) = x509.load_pem_x509_certificates(cluster.secret()["ca.crt"])
    foreign = pki.create_ca(cluster_certs.CA_COMMON_NAME, timedelta(days=1)).cert
    bundle = base64.b64encode((_pem(ours) + _pem(foreign)).encode()).decode()
    patch = [
        {"op": "replace", "path": f"/webhooks/{index}/clientConfig/caBundle", "value": bundle}
        for index in range(len(cluster.configuration["webhooks"]))
    ]
    cluster.api.kubectl(
        "patch", "mutatingwebhookconfiguration", CONFIGURATION, "--type=json", "-p", json.dumps(patch)
    )
    assert all(foreign in b for b in cluster.bundles()), "the admin's patch did not add the CA"
    cluster.wait_for(
        "the foreign CA is dropped from every webhook",
        lambda: cluster.bundles() == [[ours], [ours]],
        CHECK_INTERVAL + 5,
    )
    dropped = f"dropping the CA {cluster_certs.serial(foreign)}"
    assert any(dropped in s.log() for s in cluster.servers)
    for server in cluster.servers:
        assert _ready(server)


def test_a_removed_permission_is_logged_by_name_and_the_server_keeps_serving(cluster: Cluster) -> None:
    (role,) = [d for d in deploy_documents("rbac.yaml") if d["kind"] == "ClusterRole"]
    without_patch = copy.deepcopy(role)
    without_patch["rules"][0]["verbs"] = ["get"]
    bundle = cluster.bundles()[0]
    cluster.api.kubectl("apply", "-f", "-", input=json.dumps(without_patch))
    try:
        cluster.replace_configuration()
        wanted = "patch mutatingwebhookconfiguration sidecar-webhook: 403"
        cluster.wait_for(
            "a log line naming the refused patch",
            lambda: all(wanted in s.log() and "may not patch" in s.log() for s in cluster.servers),
            seconds=CHECK_INTERVAL + 5,
        )
        # Meanwhile the API server cannot verify the webhook: it refuses the pod and logs the TLS error
        # that the rotation test below counts (so that count can find what it looks for).
        log_start = cluster.api.log.stat().st_size
        with cluster.api.client() as client:
            refused = client.post("/api/v1/namespaces/default/pods", json=_pod("refused-"))
        assert refused.status_code == 500 and "failed calling webhook" in refused.text, refused.text
        cluster.wait_for(
            "the TLS error in the API server's log", lambda: bool(_tls_errors(cluster, log_start)), 5
        )
        for server in cluster.servers:
            assert server.process.poll() is None
            # Still serving the last good certificate, over TLS the old bundle verifies.
            cluster.served_certificate(server, bundle)
            with server.client() as client:
                assert client.get("/healthz").status_code == 200
                # Not ready: the configuration no longer trusts what it serves.
                assert client.get("/readyz").status_code == 503
    finally:
        cluster.api.kubectl("apply", "-f", "-", input=json.dumps(role))
    # Backoff is capped at the check interval: repaired soon after the permission is back.
    cluster.wait_for("the caBundle is back", lambda: all(cluster.bundles()), CHECK_INTERVAL * 2 + 5)
    cluster.wait_for(
        "both ready again",
        lambda: all(_ready(s) for s in cluster.servers),
        CHECK_INTERVAL + 5,
    )


def _tls_errors(cluster: Cluster, since: int) -> list[str]:
    """Lines of the kube-apiserver log, from byte `since` on, about a webhook call that failed."""
    with cluster.api.log.open("rb") as log:
        log.seek(since)
        return [line for line in log.read().decode(errors="replace").splitlines() if TLS_ERROR.search(line)]


def _ready(server: RunningServer) -> bool:
    with server.client() as client:
        return client.get("/readyz").status_code == 200


@dataclass
class Load:
    """Pods created without pause from two threads through the API server, each checked for its sidecar."""

    api: ControlPlane
    created: int = 0
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with self.api.client() as client:
            while not self.stop.is_set():
                try:
                    pod = create_pod(client)
                    if not injected(pod):
                        self.failures.append(f"{pod['metadata']['name']} has no sidecar")
                except (AssertionError, httpx.HTTPError) as error:
                    self.failures.append(str(error)[:500])
                self.created += 1


@pytest.mark.slow
@pytest.mark.timeout(360)
def test_rotations_under_load_fail_no_call(cluster: Cluster) -> None:
    log_start = cluster.api.log.stat().st_size
    logs_start = [len(s.log()) for s in cluster.servers]
    load = Load(cluster.api)
    threads = [threading.Thread(target=load.run) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:

        def rotated() -> tuple[int, int, int]:
            new = "".join(s.log()[start:] for s, start in zip(cluster.servers, logs_start, strict=True))
            return (
                new.count("issued the serving certificate"),
                new.count("signs from now on"),
                new.count("leaves the caBundle"),
            )

        # Two serving rotations, one CA rotation, and the old CA's retirement after its last certificate.
        cluster.wait_for(
            "2 serving rotations, a CA rotation and the old CA retired",
            lambda: (lambda r: r[0] >= 2 and r[1] >= 1 and r[2] >= 1)(rotated()),
            seconds=300,
        )
    finally:
        load.stop.set()
        for thread in threads:
            thread.join()
    serving, ca, retired = rotated()
    tls_errors = _tls_errors(cluster, log_start)
    print(
        f"\nrotation under load: {load.created} pods created, {len(load.failures)} failed; "
        f"{serving} serving certificate(s) issued, {ca} CA rotation(s), {retired} CA(s) retired; "
        f"{len(tls_errors)} TLS error(s) in the kube-apiserver log"
    )
    assert load.failures == []
    assert tls_errors == []
    assert load.created > 0
    # Still one CA signing, trusted by every webhook, and what is served chains to it.
    secret = cluster.secret()
    (ca_cert,) = x509.load_pem_x509_certificates(secret["ca.crt"])
    assert all(ca_cert in bundle for bundle in cluster.bundles())
    for server in cluster.servers:
        cluster.served_certificate(server, [ca_cert]).verify_directly_issued_by(ca_cert)
