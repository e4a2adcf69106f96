"""TLS material: the development certificate `serve` creates, parsed back with cryptography; the server's
context, in handshakes with clients in-process over a socket pair."""

import ipaddress
import socket
import ssl
import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from webhook import pki, tls


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_development_certificate_is_a_localhost_server_certificate_signed_by_its_ca(tmp_path: Path) -> None:
    assert pki.ensure_development_certificate(tmp_path) is True
    ca, cert = load(tmp_path / "ca.crt"), load(tmp_path / "tls.crt")

    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca is True and constraints.path_length == 0
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign

    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]
    cert.verify_directly_issued_by(ca)

    now = datetime.now(UTC)
    assert cert.not_valid_before_utc <= now - timedelta(minutes=4), "backdated for clock skew"
    assert cert.not_valid_after_utc > now + timedelta(days=300)


def test_keys_are_readable_by_the_owner_only(tmp_path: Path) -> None:
    pki.ensure_development_certificate(tmp_path)
    for key in ("ca.key", "tls.key"):
        assert stat.S_IMODE((tmp_path / key).stat().st_mode) == 0o600


def test_existing_certificate_is_kept(tmp_path: Path) -> None:
    pki.ensure_development_certificate(tmp_path)
    before = (tmp_path / "tls.crt").read_bytes()
    assert pki.ensure_development_certificate(tmp_path) is False
    assert (tmp_path / "tls.crt").read_bytes() == before


def test_server_context_refuses_anything_below_tls_1_2(tmp_path: Path) -> None:
    pki.ensure_development_certificate(tmp_path)
    context = tls.server_context(tmp_path / "tls.crt", tmp_path / "tls.key")
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


def handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> tuple[str, str]:
    """A TLS handshake between the two contexts over a socket pair: (version, cipher) the client got,
    or ssl.SSLError. The server's side runs in a thread; its error, if any, is the client's too."""
    near, far = socket.socketpair()
    with near, far:
        near.settimeout(10)
        far.settimeout(10)

        def serve() -> None:
            try:
                with server.wrap_socket(far, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                far.close()  # the client sees the alert, or the connection closed

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            with client.wrap_socket(near, server_hostname="localhost") as tls:
                version, cipher = tls.version(), tls.cipher()
                assert version is not None and cipher is not None
                return version, cipher[0]
        finally:
            thread.join(10)


def client_context(ca: Path, version: ssl.TLSVersion, ciphers: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca)
    context.minimum_version = context.maximum_version = version
    if ciphers is not None:
        context.set_ciphers(ciphers)
    return context


@pytest.fixture
def server(tmp_path: Path) -> ssl.SSLContext:
    pki.ensure_development_certificate(tmp_path)
    return tls.server_context(tmp_path / "tls.crt", tmp_path / "tls.key")


@pytest.mark.parametrize(
    "suite",
    ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305"],
)
def test_a_tls_1_2_client_with_an_aead_suite_completes_the_handshake(
    server: ssl.SSLContext, tmp_path: Path, suite: str
) -> None:
    client = client_context(tmp_path / "ca.crt", ssl.TLSVersion.TLSv1_2, suite)
    assert handshake(server, client) == ("TLSv1.2", suite)


@pytest.mark.parametrize(
    "suite", ["ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES256-SHA384", "ECDHE-ECDSA-AES128-SHA"]
)
def test_a_tls_1_2_client_offering_only_a_cbc_suite_is_refused(
    server: ssl.SSLContext, tmp_path: Path, suite: str
) -> None:
    client = client_context(tmp_path / "ca.crt", ssl.TLSVersion.TLSv1_2, suite)
    with pytest.raises(ssl.SSLError, match=r"HANDSHAKE_FAILURE|NO_SHARED_CIPHER|handshake failure"):
        handshake(server, client)


def test_the_server_offers_tls_1_2_only_ecdhe_with_aes_gcm_or_chacha20_poly1305(
    server: ssl.SSLContext,
) -> None:
    tls12 = [c for c in server.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 and all(c["kea"] == "kx-ecdhe" and c["aead"] for c in tls12), tls12


def test_tls_1_3_is_unchanged(server: ssl.SSLContext, tmp_path: Path) -> None:
    tls13 = {c["name"] for c in server.get_ciphers() if c["protocol"] == "TLSv1.3"}
    default = {
        c["name"] for c in ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).get_ciphers() if c["protocol"] == "TLSv1.3"
    }
    assert tls13 == default
    version, _ = handshake(server, client_context(tmp_path / "ca.crt", ssl.TLSVersion.TLSv1_3))
    assert version == "TLSv1.3"
