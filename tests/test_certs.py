"""The certificate helper and certificate reload, checked on the material itself and on a live server."""

import base64
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.kube import schema_errors
from tests.server import running_server
from webhook import certs, pki

SERVICE, NAMESPACE = "sidecar-webhook", "sidecar-webhook"
HOSTS = certs.service_hosts(SERVICE, NAMESPACE)
DEPLOY = Path(__file__).parent.parent / "deploy" / "base"


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def files(directory: Path) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in ("ca.crt", "ca.key", "tls.crt", "tls.key")}


def sidecar_webhook(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "webhook", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_service_hosts_are_the_names_the_api_server_may_use() -> None:
    assert certs.service_hosts("w", "ns", ["10.0.0.1", "w"]) == [
        "w",
        "w.ns",
        "w.ns.svc",
        "w.ns.svc.cluster.local",
        "10.0.0.1",
    ]


def test_create_makes_a_p256_ca_and_a_server_certificate_for_the_service(tmp_path: Path) -> None:
    result = sidecar_webhook(
        "certs",
        "create",
        "--service",
        SERVICE,
        "--namespace",
        NAMESPACE,
        "--host",
        "192.168.49.1",
        "--host",
        "webhook.local",
        "--out",
        str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    ca, cert = load(tmp_path / "ca.crt"), load(tmp_path / "tls.crt")

    assert ca.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    basic = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca and basic.value.path_length == 0
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign

    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [*HOSTS, "webhook.local"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["192.168.49.1"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    cert.verify_directly_issued_by(ca)

    now = datetime.now(UTC)
    assert now - timedelta(minutes=10) < cert.not_valid_before_utc < now - timedelta(minutes=4)
    assert cert.not_valid_after_utc - now > timedelta(days=364)
    for key in ("ca.key", "tls.key"):
        assert stat.S_IMODE((tmp_path / key).stat().st_mode) == 0o600


def test_create_again_keeps_everything_that_is_still_good(tmp_path: Path) -> None:
    certs.create(tmp_path, HOSTS)
    before = files(tmp_path)
    said = certs.create(tmp_path, HOSTS)
    assert files(tmp_path) == before
    assert said[0].startswith("kept the CA") and said[1].startswith("kept the certificate")


def test_create_reissues_only_the_certificate_when_the_hosts_change(tmp_path: Path) -> None:
    certs.create(tmp_path, HOSTS)
    before = files(tmp_path)
    said = certs.create(tmp_path, [*HOSTS, "10.1.2.3"])
    after = files(tmp_path)
    assert (after["ca.crt"], after["ca.key"]) == (before["ca.crt"], before["ca.key"])
    assert after["tls.crt"] != before["tls.crt"] and after["tls.key"] != before["tls.key"]
    assert "the hosts changed" in said[1]
    assert "10.1.2.3" in pki.hosts_of(load(tmp_path / "tls.crt"))


def test_create_reissues_the_certificate_in_the_last_third_of_its_life(tmp_path: Path) -> None:
    issued = datetime.now(UTC) - timedelta(days=190)
    certs.create(tmp_path, HOSTS, days=300, now=issued)
    old = files(tmp_path)
    certs.create(tmp_path, HOSTS, days=300)  # day 190 of 300: not yet two thirds
    assert files(tmp_path) == old
    certs.create(tmp_path, HOSTS, days=300, now=issued + timedelta(days=201))
    assert files(tmp_path)["tls.crt"] != old["tls.crt"]
    assert files(tmp_path)["ca.crt"] == old["ca.crt"]


def test_create_with_force_starts_over(tmp_path: Path) -> None:
    certs.create(tmp_path, HOSTS)
    before = files(tmp_path)
    certs.create(tmp_path, HOSTS, force=True)
    assert all(files(tmp_path)[name] != before[name] for name in before)


def test_create_replaces_a_certificate_that_another_ca_signed(tmp_path: Path) -> None:
    other = tmp_path / "other"
    certs.create(tmp_path, HOSTS)
    certs.create(other, HOSTS)
    shutil.copy(other / "tls.crt", tmp_path / "tls.crt")
    shutil.copy(other / "tls.key", tmp_path / "tls.key")
    said = certs.create(tmp_path, HOSTS)
    assert "not signed by this CA" in said[1]
    load(tmp_path / "tls.crt").verify_directly_issued_by(load(tmp_path / "ca.crt"))


def test_check_passes_on_fresh_material_and_prints_expiry_hosts_and_chain(tmp_path: Path) -> None:
    certs.create(tmp_path, HOSTS)
    result = sidecar_webhook(
        "certs", "check", "--dir", str(tmp_path), "--service", SERVICE, "--namespace", NAMESPACE
    )
    assert result.returncode == 0, result.stderr
    assert "expires" in result.stdout and "in 364 days" in result.stdout
    assert f"hosts: {', '.join(HOSTS)}" in result.stdout
    assert "tls.crt is signed by ca.crt" in result.stdout


@pytest.mark.parametrize(
    ("age_days", "problem"), [(400, "certificate expired"), (340, "certificate expires in")]
)
def test_check_fails_on_expired_or_soon_expiring_material(
    tmp_path: Path, age_days: int, problem: str
) -> None:
    certs.create(tmp_path, HOSTS, days=365, now=datetime.now(UTC) - timedelta(days=age_days))
    found = certs.check(tmp_path)
    assert any(p.startswith(problem) for p in found.problems), found.problems
    result = sidecar_webhook("certs", "check", "--dir", str(tmp_path))
    assert result.returncode == 1 and problem in result.stderr


def test_check_fails_on_a_certificate_another_ca_signed(tmp_path: Path) -> None:
    certs.create(tmp_path / "a", HOSTS)
    certs.create(tmp_path / "b", HOSTS)
    shutil.copy(tmp_path / "b" / "ca.crt", tmp_path / "a" / "ca.crt")
    shutil.copy(tmp_path / "b" / "ca.key", tmp_path / "a" / "ca.key")
    assert (
        "tls.crt is not signed by ca.crt: the caBundle would not verify it"
        in certs.check(tmp_path / "a").problems
    )


def test_check_fails_on_a_key_that_is_not_the_certificates(tmp_path: Path) -> None:
    certs.create(tmp_path / "a", HOSTS)
    certs.create(tmp_path / "b", HOSTS)
    shutil.copy(tmp_path / "b" / "tls.key", tmp_path / "a" / "tls.key")
    assert any("tls.key is missing or does not match" in p for p in certs.check(tmp_path / "a").problems)


def test_check_fails_when_the_service_names_are_not_covered_or_files_are_missing(tmp_path: Path) -> None:
    certs.create(tmp_path, certs.service_hosts("other", NAMESPACE))
    assert any("does not cover sidecar-webhook" in p for p in certs.check(tmp_path, HOSTS).problems)
    assert len(certs.check(tmp_path / "nothing").problems) == 2


def test_manifests_are_a_tls_secret_and_the_webhook_configuration_with_its_ca_bundle(tmp_path: Path) -> None:
    certs.create(tmp_path, HOSTS)
    result = sidecar_webhook("certs", "manifests", "--dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    secret, configuration = yaml.safe_load_all(result.stdout)
    for document in (secret, configuration):
        assert schema_errors(document) == []

    assert secret["type"] == "kubernetes.io/tls"
    assert {k: base64.b64decode(v) for k, v in secret["data"].items()} == {
        "tls.crt": (tmp_path / "tls.crt").read_bytes(),
        "tls.key": (tmp_path / "tls.key").read_bytes(),
        "ca.crt": (tmp_path / "ca.crt").read_bytes(),
    }
    # The Secret the file mode's Deployment mounts (deploy/overlays/bring-your-own-certs).
    assert secret["metadata"]["name"] == certs.TLS_SECRET == "sidecar-webhook-tls"
    assert secret["metadata"]["namespace"] == NAMESPACE

    deployed = yaml.safe_load((DEPLOY / "mutatingwebhookconfiguration.yaml").read_text())
    for webhook, original in zip(configuration["webhooks"], deployed["webhooks"], strict=True):
        assert base64.b64decode(webhook["clientConfig"].pop("caBundle")) == (tmp_path / "ca.crt").read_bytes()
        assert webhook == original


def test_manifests_with_url_call_that_url_and_leave_the_secret_out(tmp_path: Path) -> None:
    certs.create(tmp_path, [*HOSTS, "host.minikube.internal"])
    url = "https://host.minikube.internal:8443/mutate"
    for given in (url, "https://host.minikube.internal:8443", "https://host.minikube.internal:8443/"):
        (configuration,) = certs.manifests(tmp_path, DEPLOY, given)
        assert schema_errors(configuration) == []
        for webhook in configuration["webhooks"]:
            assert "service" not in webhook["clientConfig"]
        # Each webhook at its own path on that server.
        assert [webhook["clientConfig"]["url"] for webhook in configuration["webhooks"]] == [
            url,
            "https://host.minikube.internal:8443/warn",
        ]
    with pytest.raises(certs.ManifestError, match="https only"):
        certs.manifests(tmp_path, DEPLOY, "http://host:8443/mutate")


def test_manifests_refuse_a_url_whose_host_the_certificate_does_not_cover(tmp_path: Path) -> None:
    certs.create(tmp_path, [*HOSTS, "10.1.2.3"])
    assert certs.manifests(tmp_path, DEPLOY, "https://10.1.2.3:8443/mutate")
    result = sidecar_webhook(
        "certs", "manifests", "--dir", str(tmp_path), "--url", "https://10.9.9.9:8443/mutate"
    )
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"sidecar-webhook certs manifests: --url 'https://10.9.9.9:8443/mutate': the certificate "
        f"{tmp_path}/tls.crt does not cover 10.9.9.9 (it covers {', '.join([*HOSTS, '10.1.2.3'])}): add "
        "it with `sidecar-webhook certs create --service ... --namespace ... "
        f"--out {tmp_path} --host 10.9.9.9`, or call a host it covers\n"
    )


@pytest.mark.parametrize(
    ("host", "covered"),
    [
        ("localhost", True),
        ("LocalHost", True),
        ("web.example", True),
        ("a.web.example", False),
        ("x.wild.example", True),
        ("wild.example", False),
        ("x.y.wild.example", False),
        ("127.0.0.1", True),
        ("::1", True),
        ("0:0:0:0:0:0:0:1", True),
        ("10.0.0.1", False),
    ],
)
def test_a_host_is_covered_as_a_tls_client_checks_it(host: str, covered: bool) -> None:
    assert certs.covers(["localhost", "web.example", "*.wild.example", "127.0.0.1", "::1"], host) is covered


def test_create_with_a_host_keeps_the_names_the_certificate_had(tmp_path: Path) -> None:
    pki.ensure_development_certificate(tmp_path)  # what `serve` makes: localhost, 127.0.0.1, ::1
    create = ("certs", "create", "--service", SERVICE, "--namespace", NAMESPACE, "--out", str(tmp_path))
    result = sidecar_webhook(*create, "--host", "127.0.0.1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(
        f"{tmp_path}: keeping localhost, ::1, which the certificate had (--replace-hosts drops them)\n"
    )
    assert sorted(pki.hosts_of(load(tmp_path / "tls.crt"))) == sorted(
        [*HOSTS, "localhost", "127.0.0.1", "::1"]
    )

    result = sidecar_webhook(*create, "--host", "127.0.0.1", "--force")  # new keys, the same names
    assert result.returncode == 0, result.stderr
    assert sorted(pki.hosts_of(load(tmp_path / "tls.crt"))) == sorted(
        [*HOSTS, "localhost", "127.0.0.1", "::1"]
    )

    result = sidecar_webhook(*create, "--host", "127.0.0.1", "--replace-hosts")
    assert result.returncode == 0, result.stderr
    assert "keeping" not in result.stdout
    assert pki.hosts_of(load(tmp_path / "tls.crt")) == [*HOSTS, "127.0.0.1"]


def test_manifests_without_material_say_what_is_missing(tmp_path: Path) -> None:
    result = sidecar_webhook("certs", "manifests", "--dir", str(tmp_path))
    assert result.returncode == 2
    assert "cannot read" in result.stderr and "ca.crt" in result.stderr
    assert result.stdout == ""


def served_certificate(port: int, ca_file: Path, server_hostname: str) -> x509.Certificate:
    """A real TLS handshake, trusting only `ca_file` and checking `server_hostname` as the API server does."""
    import ssl

    context = ssl.create_default_context(cafile=ca_file)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=server_hostname) as connection,
    ):
        der = connection.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def kubernetes_secret_volume(directory: Path, material: Path, generation: int) -> None:
    """Lay out `material` the way the kubelet does for a Secret volume, and update it the same way:
    files are symlinks through ..data, and an update swaps ..data to a new directory in one rename."""
    version = directory / f"..gen_{generation}"
    shutil.copytree(material, version)
    os.symlink(version.name, directory / "..data_tmp")
    os.replace(directory / "..data_tmp", directory / "..data")
    for name in ("ca.crt", "tls.crt", "tls.key"):
        link = directory / name
        if not link.is_symlink():
            os.symlink(f"..data/{name}", link)


def test_server_presents_a_certificate_for_the_service_name_that_chains_to_the_ca(tmp_path: Path) -> None:
    material, mounted = tmp_path / "material", tmp_path / "tls"
    certs.create(material, [*HOSTS, "localhost"])  # localhost: the test harness's readiness probe
    mounted.mkdir()
    kubernetes_secret_volume(mounted, material, 1)
    with running_server(mounted) as server:
        served = served_certificate(server.port, material / "ca.crt", f"{SERVICE}.{NAMESPACE}.svc")
        # Making certificates needs `cryptography`; serving them doesn't, and it would hold ~8 MiB.
        mapped = Path(f"/proc/{server.process.pid}/maps").read_text()
    assert served == load(material / "tls.crt")
    assert "cryptography" not in mapped, "the server loaded cryptography with a certificate to serve"


def test_server_reloads_a_rotated_certificate_under_traffic_without_a_failed_request(tmp_path: Path) -> None:
    material, mounted = tmp_path / "material", tmp_path / "tls"
    certs.create(material, [*HOSTS, "localhost"])
    mounted.mkdir()
    kubernetes_secret_volume(mounted, material, 1)
    old = load(material / "tls.crt")
    body = (Path(__file__).parent / "fixtures/admission/seed-pod.json").read_bytes()
    results: list[int | str] = []
    stop = threading.Event()

    with running_server(mounted) as server:

        def traffic() -> None:
            # Bounded: stops when told, after 20 s, or after 20,000 requests. Half on one keep-alive
            # connection, half on new connections, so new handshakes meet the new certificate.
            give_up = time.monotonic() + 20
            with server.client() as kept:
                for i in range(20_000):
                    if stop.is_set() or time.monotonic() > give_up:
                        return
                    try:
                        if i % 2:
                            answer = kept.post(
                                "/mutate", content=body, headers={"content-type": "application/json"}
                            )
                        else:
                            with server.client() as fresh:
                                answer = fresh.post(
                                    "/mutate", content=body, headers={"content-type": "application/json"}
                                )
                        results.append(answer.status_code)
                    except httpx.HTTPError as error:
                        results.append(repr(error))

        sender = threading.Thread(target=traffic)
        sender.start()
        certs.create(material, [*HOSTS, "localhost", "rotated.example"])  # same CA, new certificate
        new = load(material / "tls.crt")
        assert new != old
        kubernetes_secret_volume(mounted, material, 2)
        deadline = time.monotonic() + 10
        while served_certificate(server.port, material / "ca.crt", "localhost") != new:
            assert time.monotonic() < deadline, "the new certificate was not served within 10 s"
            time.sleep(0.1)
        reloaded_after = len(results)
        while len(results) < reloaded_after + 20 and sender.is_alive():
            time.sleep(0.05)
        stop.set()
        sender.join(timeout=30)
        assert "reloaded the certificate" in server.log()

    assert len(results) > reloaded_after > 0, "requests were sent before and after the rotation"
    assert [r for r in results if r != 200] == []
