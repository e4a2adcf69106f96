"""TLS material: the development certificate `serve` creates, parsed back with cryptography."""

import ipaddress
import ssl
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

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
