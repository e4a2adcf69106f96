"""The certificates the in-cluster mode keeps in its Secret, and how they move forward in time.

Pure: Secret data, the CAs the webhook configuration trusts, the names and the clock in; the next Secret
data and what changed out. webhook/cluster.py does the reading and writing.

The rules, which make a CA rotation cost no call:
- the CA that signs (`ca`) is in the caBundle before any certificate it signed is served;
- in the CA's renewal window a next CA is made and joins the caBundle beside it (`next-ca`);
- the next CA starts signing only once the caBundle read back from the API server trusts it;
- the old CA stays in the caBundle (`retired-ca`) until the last certificate it signed has expired.
"""

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from cryptography import x509

from webhook import pki

CA_COMMON_NAME = "sidecar-webhook CA"
CA_CERT, CA_KEY, TLS_CERT, TLS_KEY = "ca.crt", "ca.key", "tls.crt", "tls.key"
NEXT_CA_CERT, NEXT_CA_KEY = "next-ca.crt", "next-ca.key"
RETIRED_CAS = "retired-cas.crt"
# When each retired CA may leave the bundle, as ISO timestamps, one per line, in RETIRED_CAS order.
RETIRED_UNTIL = "retired-cas.until"


@dataclass(frozen=True)
class Validity:
    ca: timedelta
    ca_renew_before: timedelta
    serving: timedelta
    serving_renew_before: timedelta


@dataclass(frozen=True)
class Retired:
    cert: x509.Certificate
    until: datetime


@dataclass(frozen=True)
class Material:
    """What the Secret holds."""

    ca: pki.KeyPair
    serving: pki.KeyPair
    next_ca: pki.KeyPair | None = None
    retired: tuple[Retired, ...] = ()

    def bundle(self) -> list[x509.Certificate]:
        """The CAs the webhook configuration must trust: the one signing, the next, the retired."""
        cas = [self.ca.cert, *([self.next_ca.cert] if self.next_ca else []), *(r.cert for r in self.retired)]
        return cas


@dataclass(frozen=True)
class Step:
    material: Material
    # One line per change, for the log; the certificate it concerns ("ca" or "serving") for the metrics.
    changes: tuple[tuple[str, str], ...] = ()


def fresh(
    hosts: Sequence[str], validity: Validity, published: Sequence[x509.Certificate], now: datetime
) -> Step:
    """A new CA and serving certificate. CAs the configuration trusts already (an install in the file
    mode being upgraded) stay trusted for one serving validity, so its replicas keep working meanwhile."""
    ca = pki.create_ca(CA_COMMON_NAME, validity.ca, now)
    serving = pki.issue_serving_certificate(ca, hosts, validity.serving, now)
    kept = tuple(
        Retired(cert, now + validity.serving) for cert in published if cert.not_valid_after_utc > now
    )
    changes = [("ca", f"created the CA {serial(ca.cert)}, valid until {_when(ca.cert)}")]
    changes += [
        ("ca", f"kept the CA {serial(r.cert)} trusted until {r.until:%Y-%m-%dT%H:%M:%SZ}") for r in kept
    ]
    changes.append(("serving", _issued(serving, "there was none")))
    return Step(Material(ca, serving, retired=kept), tuple(changes))


def advance(
    material: Material,
    published: Sequence[x509.Certificate],
    hosts: Sequence[str],
    validity: Validity,
    now: datetime,
) -> Step:
    """The material one step on: retire, add, promote CAs and re-issue the serving certificate as the
    rules above say. `published` is what every webhook of the configuration trusts."""
    changes: list[tuple[str, str]] = []
    retired = tuple(r for r in material.retired if now < r.until)
    for gone in set(material.retired) - set(retired):
        changes.append(("ca", f"the CA {serial(gone.cert)} leaves the caBundle: what it signed has expired"))
    ca, next_ca, serving = material.ca, material.next_ca, material.serving
    if next_ca is None and now >= ca.cert.not_valid_after_utc - validity.ca_renew_before:
        next_ca = pki.create_ca(CA_COMMON_NAME, validity.ca, now)
        changes.append(("ca", f"created the next CA {serial(next_ca.cert)}; it joins the caBundle first"))
    # One retirement at a time: a CA signs for far longer than its successor takes to be trusted.
    if next_ca is not None and not retired and any(c == next_ca.cert for c in published):
        retired = (Retired(ca.cert, max(serving.cert.not_valid_after_utc, now)),)
        changes.append(
            ("ca", f"the CA {serial(next_ca.cert)} signs from now on; {serial(ca.cert)} is retired")
        )
        ca, next_ca = next_ca, None
    why = _why_reissue(serving, ca, hosts, validity, now)
    if why:
        serving = pki.issue_serving_certificate(ca, hosts, validity.serving, now)
        changes.append(("serving", _issued(serving, why)))
    return Step(replace(material, ca=ca, next_ca=next_ca, serving=serving, retired=retired), tuple(changes))


def foreign(material: Material, present: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    """The CAs of the caBundle that the Secret does not hold: neither made by this webhook (the CA that
    signs, the next, the retired) nor there at its first start (kept as retired by `fresh`). The caBundle
    written keeps none of them: whoever put one there could have the API server trust what they serve."""
    ours = material.bundle()
    found: list[x509.Certificate] = []
    for ca in present:
        if ca not in ours and ca not in found:
            found.append(ca)
    return found


def trusted(cert: x509.Certificate, bundle: Sequence[x509.Certificate], now: datetime) -> bool:
    """Whether `cert` is valid now and signed by a CA of `bundle` that is valid now."""
    if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
        return False
    return any(
        pki.signed_by(cert, ca) and ca.not_valid_before_utc <= now < ca.not_valid_after_utc for ca in bundle
    )


def decode(data: Mapping[str, str]) -> Material | None:
    """The material of a Secret's data (base64 values), or None when it is incomplete or corrupt."""
    try:
        raw = {key: base64.b64decode(value, validate=True) for key, value in data.items()}
        ca = pki.from_pem(raw[CA_CERT], raw[CA_KEY])
        serving = pki.from_pem(raw[TLS_CERT], raw[TLS_KEY])
        next_ca = pki.from_pem(raw[NEXT_CA_CERT], raw[NEXT_CA_KEY]) if NEXT_CA_CERT in raw else None
        retired_certs = x509.load_pem_x509_certificates(raw[RETIRED_CAS]) if RETIRED_CAS in raw else []
        until = [datetime.fromisoformat(line) for line in raw.get(RETIRED_UNTIL, b"").decode().split()]
    except (KeyError, ValueError, binascii.Error):
        return None
    if ca is None or serving is None or (NEXT_CA_CERT in raw and next_ca is None):
        return None
    if len(until) != len(retired_certs):
        return None
    return Material(ca, serving, next_ca, tuple(map(Retired, retired_certs, until)))


def encode(material: Material) -> dict[str, str]:
    """The Secret's data (base64 values) for `material`."""
    raw = {
        CA_CERT: pki.cert_pem(material.ca.cert),
        CA_KEY: pki.key_pem(material.ca.key),
        TLS_CERT: pki.cert_pem(material.serving.cert),
        TLS_KEY: pki.key_pem(material.serving.key),
    }
    if material.next_ca is not None:
        raw[NEXT_CA_CERT] = pki.cert_pem(material.next_ca.cert)
        raw[NEXT_CA_KEY] = pki.key_pem(material.next_ca.key)
    if material.retired:
        raw[RETIRED_CAS] = b"".join(pki.cert_pem(r.cert) for r in material.retired)
        raw[RETIRED_UNTIL] = "".join(f"{r.until.isoformat()}\n" for r in material.retired).encode()
    return {key: base64.b64encode(value).decode("ascii") for key, value in raw.items()}


def pem_bundle(cas: Sequence[x509.Certificate]) -> bytes:
    return b"".join(pki.cert_pem(ca) for ca in cas)


def parse_bundle(ca_bundle: str | None) -> list[x509.Certificate]:
    """The CAs of a caBundle field (base64 of PEM); none when it is missing or unreadable."""
    try:
        return x509.load_pem_x509_certificates(base64.b64decode(ca_bundle or "", validate=True))
    except (ValueError, binascii.Error):
        return []


def _why_reissue(
    serving: pki.KeyPair, ca: pki.KeyPair, hosts: Sequence[str], validity: Validity, now: datetime
) -> str:
    if not pki.signed_by(serving.cert, ca.cert):
        return "the signing CA changed"
    if sorted(pki.hosts_of(serving.cert)) != sorted(hosts):
        return "the hosts changed"
    ends = serving.cert.not_valid_after_utc
    # A certificate cut short by its CA's end would be renewed again and again for nothing.
    if now >= ends - validity.serving_renew_before and min(now + validity.serving, _end(ca)) > ends:
        return "the old one was in its renewal window"
    return ""


def _end(pair: pki.KeyPair) -> datetime:
    return pair.cert.not_valid_after_utc


def serial(cert: x509.Certificate) -> str:
    return f"{cert.serial_number:x}"[:12]


def _when(cert: x509.Certificate) -> str:
    return cert.not_valid_after_utc.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _issued(serving: pki.KeyPair, why: str) -> str:
    return (
        f"issued the serving certificate {serial(serving.cert)} for {', '.join(pki.hosts_of(serving.cert))} "
        f"({why}), valid until {_when(serving.cert)}"
    )
