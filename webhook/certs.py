"""The certificate helper: create TLS material for the Service (idempotently), check it, and print
the Secret and webhook configuration that carry it into a cluster."""

import base64
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from cryptography import x509

from webhook import pki, tls

CA_DAYS = 3650
SERVING_DAYS = 365
# Re-issue in the last third of a certificate's life: early enough that a missed run or two still
# leaves months, late enough not to churn (cert-manager renews at two thirds by default too).
RENEW_AFTER = 2 / 3
# `check` fails this long before expiry, so there is time to act.
WARN_BEFORE = timedelta(days=30)
# A copy of deploy/'s webhook configuration, shipped as package data so that `certs manifests` works
# from an installed package (tests/test_packaging.py keeps the copy equal to deploy/base/'s file).
DEPLOY_DIR = Path(__file__).resolve().parent / "deploy"
WEBHOOK_CONFIGURATION = "mutatingwebhookconfiguration.yaml"
# The Secret a webhook in the file mode mounts (deploy/overlays/bring-your-own-certs).
TLS_SECRET = "sidecar-webhook-tls"


def service_hosts(service: str, namespace: str, extra: Sequence[str] = ()) -> list[str]:
    """The names the API server may use for the Service, then any extra hosts."""
    names = [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]
    return list(dict.fromkeys([*names, *extra]))


def kept_hosts(directory: Path, hosts: Sequence[str]) -> list[str]:
    """The hosts of the certificate in `directory` that `hosts` lack: re-issuing it for `hosts` alone
    would drop them (`--host 127.0.0.1` dropping the development certificate's localhost)."""
    existing = pki.load_pair(directory, tls.TLS_CERT, tls.TLS_KEY)
    return [h for h in pki.hosts_of(existing.cert) if h not in hosts] if existing is not None else []


def create(
    directory: Path,
    hosts: Sequence[str],
    *,
    days: int = SERVING_DAYS,
    force: bool = False,
    now: datetime | None = None,
) -> list[str]:
    """Make sure `directory` holds a CA and a serving certificate for `hosts`; say what was done.

    A valid CA is kept (replacing it would invalidate every caBundle already applied); the serving
    certificate is re-issued only when its hosts changed, it is in its renewal window, or it doesn't
    belong to the CA. `force` starts over."""
    now = now or datetime.now(UTC)
    said: list[str] = []
    ca = None if force else _usable_ca(directory, now)
    if ca is None:
        ca = pki.create_ca("sidecar-webhook CA", timedelta(days=CA_DAYS), now)
        said.append(f"created a new CA, valid until {ca.cert.not_valid_after_utc:%Y-%m-%d}")
    else:
        said.append(f"kept the CA, valid until {ca.cert.not_valid_after_utc:%Y-%m-%d}")
    serving = pki.load_pair(directory, tls.TLS_CERT, tls.TLS_KEY)
    why = "forced" if force else _why_reissue(serving, ca, hosts, now)
    if serving is None or why:
        serving = pki.issue_serving_certificate(ca, hosts, timedelta(days=days), now)
        said.append(
            f"issued a certificate for {', '.join(hosts)} ({why}), valid until "
            f"{serving.cert.not_valid_after_utc:%Y-%m-%d}"
        )
    else:
        said.append(f"kept the certificate, valid until {serving.cert.not_valid_after_utc:%Y-%m-%d}")
    pki.write_material(directory, ca, serving)
    return said


def _usable_ca(directory: Path, now: datetime) -> pki.KeyPair | None:
    ca = pki.load_pair(directory, tls.CA_CERT, tls.CA_KEY)
    if ca is None or not _is_ca(ca.cert) or _in_renewal_window(ca.cert, now):
        return None
    return ca


def _why_reissue(serving: pki.KeyPair | None, ca: pki.KeyPair, hosts: Sequence[str], now: datetime) -> str:
    if serving is None:
        return "none was there"
    if not pki.signed_by(serving.cert, ca.cert):
        return "the old one was not signed by this CA"
    if sorted(pki.hosts_of(serving.cert)) != sorted(hosts):
        return "the hosts changed"
    if _in_renewal_window(serving.cert, now):
        return "the old one was in its last third of life"
    return ""


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _in_renewal_window(cert: x509.Certificate, now: datetime) -> bool:
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return now >= start + (end - start) * RENEW_AFTER


@dataclass
class Check:
    """What `certs check` found: lines to print, and the problems that make it fail."""

    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def check(directory: Path, expected_hosts: Sequence[str] = (), now: datetime | None = None) -> Check:
    now = now or datetime.now(UTC)
    found = Check()
    pairs = {"CA": (tls.CA_CERT, tls.CA_KEY), "certificate": (tls.TLS_CERT, tls.TLS_KEY)}
    loaded: dict[str, x509.Certificate] = {}
    for what, (cert_name, key_name) in pairs.items():
        try:
            cert = x509.load_pem_x509_certificate((directory / cert_name).read_bytes())
        except (OSError, ValueError) as error:
            found.problems.append(f"{what}: cannot read {directory / cert_name}: {error}")
            continue
        loaded[what] = cert
        left = cert.not_valid_after_utc - now
        found.lines.append(
            f"{what}: {cert.subject.rfc4514_string()}, expires {cert.not_valid_after_utc:%Y-%m-%d} "
            f"(in {left.days} days)"
        )
        if left <= timedelta(0):
            found.problems.append(f"{what} expired on {cert.not_valid_after_utc:%Y-%m-%d}")
        elif left <= WARN_BEFORE:
            found.problems.append(f"{what} expires in {left.days} days, within {WARN_BEFORE.days}: renew it")
        if now < cert.not_valid_before_utc:
            found.problems.append(f"{what} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M}")
        if pki.load_pair(directory, cert_name, key_name) is None:
            found.problems.append(f"{what}: {key_name} is missing or does not match {cert_name}")
    if "certificate" in loaded:
        found.lines.append(f"hosts: {', '.join(pki.hosts_of(loaded['certificate']))}")
        missing = [h for h in expected_hosts if h not in pki.hosts_of(loaded["certificate"])]
        if missing:
            found.problems.append(f"certificate does not cover {', '.join(missing)}")
    if len(loaded) == 2:
        chained = pki.signed_by(loaded["certificate"], loaded["CA"])
        found.lines.append(f"chain: {tls.TLS_CERT} {'is' if chained else 'is NOT'} signed by {tls.CA_CERT}")
        if not chained:
            found.problems.append(
                f"{tls.TLS_CERT} is not signed by {tls.CA_CERT}: the caBundle would not verify it"
            )
    return found


class ManifestError(ValueError):
    """The material or the deploy/ files can't make the manifests."""


def manifests(directory: Path, deploy_dir: Path = DEPLOY_DIR, url: str | None = None) -> list[dict[str, Any]]:
    """The TLS Secret and the webhook configuration of deploy/ with its caBundle filled in; with `url`,
    only the configuration, calling `url` instead of the Service (the Secret serves the Deployment):
    each webhook at its own path (/mutate, /warn) below the URL's, which may end with /mutate."""
    try:
        ca_pem, cert_pem, key_pem = (
            (directory / name).read_bytes() for name in (tls.CA_CERT, tls.TLS_CERT, tls.TLS_KEY)
        )
        configuration = yaml.safe_load((deploy_dir / WEBHOOK_CONFIGURATION).read_text())
    except OSError as error:
        raise ManifestError(f"cannot read {error.filename}: {error.strerror}") from None
    if url is not None:
        _check_url(url, directory, cert_pem)
    ca_bundle = _b64(ca_pem)
    for webhook in configuration["webhooks"]:
        client = webhook["clientConfig"]
        client["caBundle"] = ca_bundle
        if url is not None:
            base = url.rstrip("/").removesuffix(MUTATE_PATH)
            client["url"] = base + client.pop("service")["path"]
    if url is not None:
        return [configuration]
    service = configuration["webhooks"][0]["clientConfig"]["service"]
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": TLS_SECRET,
            "namespace": service["namespace"],
            "labels": configuration["metadata"].get("labels", {}),
        },
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": _b64(cert_pem), "tls.key": _b64(key_pem), "ca.crt": ca_bundle},
    }
    return [secret, configuration]


MUTATE_PATH = "/mutate"


def _check_url(url: str, directory: Path, cert_pem: bytes) -> None:
    """Refuse a URL the API server could not call: not https, or a host the certificate does not cover
    (the configuration would be applied, and every call fail the TLS handshake, pods refused with it)."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ManifestError(
            f"--url {url!r}: the API server calls webhooks over https only, e.g. https://host:8443/mutate"
        )
    try:
        hosts = pki.hosts_of(x509.load_pem_x509_certificate(cert_pem))
    except ValueError:
        raise ManifestError(f"{directory / tls.TLS_CERT} is not a PEM certificate") from None
    if not covers(hosts, parts.hostname):
        raise ManifestError(
            f"--url {url!r}: the certificate {directory / tls.TLS_CERT} does not cover {parts.hostname} (it "
            f"covers {', '.join(hosts) or 'no host'}): add it with `sidecar-webhook certs create --service "
            f"... --namespace ... --out {directory} --host {parts.hostname}`, or call a host it covers"
        )


def covers(hosts: Sequence[str], host: str) -> bool:
    """Whether a certificate for `hosts` is valid for `host`, as a TLS client checks: an IP address
    against the IP addresses, a name against the names, where `*.` stands for one label."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        name = host.rstrip(".").lower()
        for pattern in (h.lower() for h in hosts):
            if pattern == name:
                return True
            if pattern.startswith("*.") and "." in name and name.partition(".")[2] == pattern[2:]:
                return True
        return False
    return any(_same_address(h, address) for h in hosts)


def _same_address(text: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    try:
        return ipaddress.ip_address(text) == address
    except ValueError:
        return False


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
