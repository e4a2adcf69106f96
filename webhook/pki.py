"""X.509 material: a CA that signs one serving certificate, ECDSA P-256 keys, and their files.
Used by the certificate helper (webhook/certs.py) and for `serve`'s development certificate."""

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from webhook.files import write_atomically
from webhook.tls import CA_CERT, CA_KEY, TLS_CERT, TLS_KEY, has_pair

# Certificates start a few minutes in the past so a client whose clock runs behind accepts them.
CLOCK_SKEW = timedelta(minutes=5)
DEVELOPMENT_HOSTS = ("localhost", "127.0.0.1", "::1")
_NEVER = datetime.max.replace(tzinfo=UTC)


@dataclass(frozen=True)
class KeyPair:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def create_ca(common_name: str, validity: timedelta, now: datetime | None = None) -> KeyPair:
    """A CA that can sign serving certificates and nothing below them (pathlen 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = _validity(x509.CertificateBuilder(), validity, now)
    cert = (
        builder.subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(key, cert)


def issue_serving_certificate(
    ca: KeyPair, hosts: Sequence[str], validity: timedelta, now: datetime | None = None
) -> KeyPair:
    """A server certificate for `hosts` (DNS names, or IP addresses as IP SANs), signed by `ca`.
    It ends with its CA at the latest: a client could not verify it any longer anyway."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = _validity(x509.CertificateBuilder(), validity, now, ca.cert.not_valid_after_utc)
    cert = (
        builder.subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([_san(host) for host in hosts]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )
    return KeyPair(key, cert)


def write_material(directory: Path, ca: KeyPair, serving: KeyPair) -> None:
    """Write ca.crt, ca.key, tls.crt and tls.key; keys are 0600. Each file is replaced atomically,
    the key before its certificate, so a reader never sees half a file."""
    directory.mkdir(parents=True, exist_ok=True)
    write_atomically(directory / CA_KEY, key_pem(ca.key), 0o600)
    write_atomically(directory / CA_CERT, cert_pem(ca.cert), 0o644)
    write_atomically(directory / TLS_KEY, key_pem(serving.key), 0o600)
    write_atomically(directory / TLS_CERT, cert_pem(serving.cert), 0o644)


def ensure_development_certificate(directory: Path) -> bool:
    """Create a CA and a localhost certificate in `directory` unless it has tls.crt and tls.key.
    Returns whether it created them."""
    if has_pair(directory):
        return False
    ca = create_ca("sidecar-webhook development CA", timedelta(days=3650))
    write_material(directory, ca, issue_serving_certificate(ca, DEVELOPMENT_HOSTS, timedelta(days=365)))
    return True


def load_pair(directory: Path, cert_name: str, key_name: str) -> KeyPair | None:
    """The certificate and its key from `directory`, or None when either is missing, unreadable,
    not PEM, not an EC key, or the key doesn't belong to the certificate."""
    try:
        return from_pem((directory / cert_name).read_bytes(), (directory / key_name).read_bytes())
    except OSError:
        return None


def from_pem(cert_pem: bytes, key_pem: bytes) -> KeyPair | None:
    """The certificate and its key from PEM, or None when either is not PEM, the key is not an EC
    key, or the key doesn't belong to the certificate."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        return None
    return KeyPair(key, cert)


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """Whether `ca` issued `cert` (its name and signature; validity is the caller's business)."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def hosts_of(cert: x509.Certificate) -> list[str]:
    """The certificate's subject alternative names, DNS names and IP addresses as text."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*sans.get_values_for_type(x509.DNSName), *map(str, sans.get_values_for_type(x509.IPAddress))]


def _validity(
    builder: x509.CertificateBuilder,
    validity: timedelta,
    now: datetime | None,
    not_after: datetime = _NEVER,
) -> x509.CertificateBuilder:
    now = now or datetime.now(UTC)
    return builder.not_valid_before(now - CLOCK_SKEW).not_valid_after(min(now + validity, not_after))


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)
