"""The in-cluster certificate mode: keep the Secret and the caBundle as webhook/cluster_certs.py says,
and hand the server the certificate it may serve.

Imported only when `serve` runs with certificates=cluster: lightkube and cryptography stay out of the
file mode's memory. The certificate goes to cert_dir, where webhook/tls.py's reload picks it up.
"""

import asyncio
import base64
import logging
import random
import time
from collections.abc import Awaitable, Callable, Set
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx2
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from lightkube import ApiError, AsyncClient, ConfigError, KubeConfig
from lightkube.resources.admissionregistration_v1 import MutatingWebhookConfiguration
from lightkube.resources.core_v1 import Secret
from lightkube.types import PatchType

from webhook import certs, cluster_certs, pki, tls
from webhook.app import ServingState
from webhook.cluster_certs import Material
from webhook.files import write_atomically
from webhook.metrics import Metrics
from webhook.settings import Settings

FIELD_MANAGER = "sidecar-webhook"
# A failed call is retried after 0.5 s, then twice as long each time up to the check interval: quick
# when it was a blip, without hammering an API server that is struggling.
FIRST_RETRY_SECONDS = 0.5
# The API server answers in milliseconds; one that takes this long is as good as unreachable.
API_TIMEOUT_SECONDS = 10.0
# A CA newly in the caBundle signs only after this long: every API server learns of the configuration's
# change through its watch, usually within a second; until then it would refuse a certificate of the new CA.
SETTLE_SECONDS = 10.0

_log = logging.getLogger("sidecar_webhook.certificates")
T = TypeVar("T")


class Expected(Exception):
    """A status the caller expects and handles: 409 writing the Secret."""


class ApiUnavailable(Exception):
    """A call to the API server failed; it was logged with what to do."""


class ClusterCertificates:
    """Reads and writes the Secret and the webhook configuration; writes the certificate to serve."""

    def __init__(self, settings: Settings, state: ServingState, metrics: Metrics) -> None:
        self.settings, self.state, self.metrics = settings, state, metrics
        self.cert_dir = settings.cert_dir
        self.hosts = certs.service_hosts(
            settings.service_name, settings.service_namespace, settings.extra_hosts
        )
        self.validity = cluster_certs.Validity(
            settings.ca_validity,
            settings.ca_renew_before,
            settings.serving_validity,
            settings.serving_renew_before,
        )
        self.secret = f"secret {settings.secret_namespace}/{settings.secret_name}"
        self.configuration = f"mutatingwebhookconfiguration {settings.webhook_configuration}"
        self.served: x509.Certificate | None = None
        self._client: AsyncClient | None = None
        # When this replica first saw each CA (by fingerprint) in the caBundle.
        self._seen: dict[bytes, float] = {}
        # One line per API call would drown the log; failures are logged here, with what to do.
        logging.getLogger("httpx2").setLevel(logging.WARNING)

    def client(self) -> AsyncClient:
        if self._client is None:
            try:
                config = KubeConfig.from_env()
            except ConfigError as error:
                raise SystemExit(
                    f"sidecar-webhook: certificates=cluster needs the API server: no ServiceAccount token "
                    f"mounted and no kubeconfig ({error}); mount the token or set KUBECONFIG"
                ) from None
            self._client = AsyncClient(config, timeout=httpx2.Timeout(API_TIMEOUT_SECONDS), trust_env=False)
        return self._client

    async def start(self) -> None:
        """Return once a certificate the caBundle trusts is in cert_dir, retrying what fails."""
        await self._keep(until_serving=True)

    async def run(self) -> None:
        """Check and repair every check_interval, for the life of the server."""
        await self._keep(until_serving=False)

    async def _keep(self, *, until_serving: bool) -> None:
        interval = self.settings.check_interval.total_seconds()
        retry = FIRST_RETRY_SECONDS
        while True:
            try:
                changed = await self.check()
            except ApiUnavailable:
                # Keep serving the certificate served: the last good one. Readiness stays what the last
                # caBundle read says.
                await asyncio.sleep(retry * random.uniform(0.8, 1.2))
                retry = min(retry * 2, interval)
                continue
            retry = FIRST_RETRY_SECONDS
            if until_serving and self.served is not None:
                return
            if not changed:
                await asyncio.sleep(interval)

    async def check(self) -> bool:
        """One look: bring the Secret, the caBundle and the served certificate up to date. Whether
        anything changed (then the next look comes at once, to take the next step of a rotation)."""
        now = datetime.now(UTC)
        secret = await self._call("get", self.secret, self._get_secret)
        configuration = await self._call("get", self.configuration, self._get_configuration)
        published = _published(configuration)
        material = cluster_certs.decode(secret.data or {})
        if material is None and secret.data:
            _log.warning("%s is incomplete or corrupt: starting over with a new CA", self.secret)
        elif material is None:
            _log.info("%s is empty: the first start, making the CA", self.secret)
        step = (
            cluster_certs.fresh(self.hosts, self.validity, published, now)
            if material is None
            else cluster_certs.advance(material, self._settled(published), self.hosts, self.validity, now)
        )
        if step.changes or material is None:
            if not await self._write_secret(secret, step.material):
                return True  # another replica wrote first: look again at what it wrote
            for certificate, change in step.changes:
                self.metrics.certificate_rotations.labels(certificate).inc()
                _log.info("certificate rotation: %s", change)
        material = step.material
        bundle = material.bundle()
        dropped = cluster_certs.foreign(material, _present(configuration))
        if dropped and not await self._secret_holds(material):
            return True  # another replica changed the Secret: look again at what it wrote
        for ca in dropped:
            _log.warning(
                "caBundle: dropping the CA %s (%s, SHA-256 %s) from %s: this webhook did not make it and "
                "it was not there at its first start (it is not in %s); whoever added it could have the "
                "API server trust what they serve",
                cluster_certs.serial(ca),
                ca.subject.rfc4514_string(),
                ca.fingerprint(hashes.SHA256()).hex(),
                self.configuration,
                self.secret,
            )
        repaired = False
        if _bundles(configuration) != {_key(bundle)}:
            try:
                configuration = await self._write_bundle(configuration, bundle)
            except ApiUnavailable:
                self._serve(material, published, now)  # readiness as the bundle now is
                raise
            published = _published(configuration)
            repaired = True
        self._serve(material, published, now)
        return bool(step.changes) or repaired

    def _settled(self, published: list[x509.Certificate]) -> list[x509.Certificate]:
        """The CAs of the caBundle that every API server has had time to learn of."""
        now = time.monotonic()
        seen = {ca.fingerprint(hashes.SHA256()): ca for ca in published}
        self._seen = {fp: self._seen.get(fp, now) for fp in seen}
        return [ca for fp, ca in seen.items() if now - self._seen[fp] >= SETTLE_SECONDS]

    def _serve(self, material: Material, published: list[x509.Certificate], now: datetime) -> None:
        """Serve the Secret's certificate once the caBundle trusts it; until then, the one served."""
        candidate = material.serving.cert
        if candidate != self.served and cluster_certs.trusted(candidate, published, now):
            self.cert_dir.mkdir(parents=True, exist_ok=True)
            # The key first: the reload loads the pair only once both files belong together.
            write_atomically(self.cert_dir / tls.TLS_KEY, pki.key_pem(material.serving.key), 0o600)
            write_atomically(self.cert_dir / tls.TLS_CERT, pki.cert_pem(candidate), 0o644)
            write_atomically(self.cert_dir / tls.CA_CERT, cluster_certs.pem_bundle(published), 0o644)
            self.served = candidate
        ready = self.served is not None and cluster_certs.trusted(self.served, published, now)
        if ready != self.state.ready:
            _log.log(
                logging.INFO if ready else logging.WARNING,
                "ready: the certificate served is trusted by the caBundle of %s"
                if ready
                else "not ready: the caBundle of %s does not trust the certificate served",
                self.configuration,
            )
        self.state.ready = ready
        self.metrics.ca_bundle_trusted.labels("serving").set(ready)
        self._export("ca", material.ca.cert, self.validity.ca_renew_before)
        if self.served is not None:
            self._export("serving", self.served, self.validity.serving_renew_before)

    def _export(self, certificate: str, cert: x509.Certificate, renew_before: timedelta) -> None:
        expiry = cert.not_valid_after_utc
        self.metrics.certificate_expiry.labels(certificate).set(expiry.timestamp())
        self.metrics.certificate_renewal.labels(certificate).set((expiry - renew_before).timestamp())

    async def _secret_holds(self, material: Material) -> bool:
        """Whether the Secret, read again, holds the CAs of `material`. A CA goes into the Secret before it
        goes into the caBundle, so a CA of the caBundle that the Secret read after it lacks was not made
        by a replica: a replica that read the Secret just before another one added its next CA finds it
        here and does not take it out of the caBundle."""
        again = cluster_certs.decode((await self._call("get", self.secret, self._get_secret)).data or {})
        if again is not None and again.bundle() == material.bundle():
            return True
        _log.info("another replica changed %s meanwhile: looking again", self.secret)
        return False

    async def _get_secret(self) -> Secret:
        return await self.client().get(
            Secret, self.settings.secret_name, namespace=self.settings.secret_namespace
        )

    async def _get_configuration(self) -> MutatingWebhookConfiguration:
        return await self.client().get(MutatingWebhookConfiguration, self.settings.webhook_configuration)

    async def _write_secret(self, secret: Secret, material: Material) -> bool:
        """Update the Secret; False when another replica got there first (409 Conflict). The Secret is
        never created here: deploy/ ships it empty, so the account needs no `create` on Secrets, which
        RBAC cannot limit to one name."""
        # resourceVersion as read: an update over another replica's fails with 409, never wins, and
        # replicas starting together on the empty Secret make one CA between them.
        secret.data = cluster_certs.encode(material)
        try:
            await self._call("update", self.secret, lambda: self.client().replace(secret), expected={409})
        except Expected:
            _log.info("another replica wrote %s first: using what it wrote", self.secret)
            return False
        return True

    async def _write_bundle(
        self, configuration: MutatingWebhookConfiguration, bundle: list[x509.Certificate]
    ) -> MutatingWebhookConfiguration:
        ca_bundle = cluster_certs.pem_bundle(bundle)
        encoded = base64.b64encode(ca_bundle).decode("ascii")
        # Server-side apply of the caBundle alone, as our own field manager: whoever applies deploy/
        # owns the rest, and never takes this field away by applying a file that doesn't have it.
        body = {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": self.settings.webhook_configuration},
            "webhooks": [
                {"name": webhook.name, "clientConfig": {"caBundle": encoded}}
                for webhook in configuration.webhooks or []
            ],
        }
        was = ", ".join(sorted(_describe(b) for b in _bundles(configuration))) or "no webhooks"
        result: MutatingWebhookConfiguration = await self._call(
            "patch",
            self.configuration,
            lambda: self.client().patch(
                MutatingWebhookConfiguration,
                self.settings.webhook_configuration,
                body,
                patch_type=PatchType.APPLY,
                field_manager=FIELD_MANAGER,
                force=True,
            ),
        )
        _log.info(
            "caBundle repaired: wrote %d CA(s) (%s) into the %d webhook(s) of %s; it had %s",
            len(bundle),
            ", ".join(cluster_certs.serial(ca) for ca in bundle),
            len(body["webhooks"]),
            self.configuration,
            was,
        )
        return result

    async def _call(
        self, verb: str, what: str, call: Callable[[], Awaitable[T]], expected: Set[int] = frozenset()
    ) -> T:
        """Make one API call. A status in `expected` raises Expected, for the caller to handle; any other
        failure is logged with the verb, the object and what to do about it, and raises ApiUnavailable."""
        try:
            return await call()
        except ApiError as error:
            code = error.status.code or 0
            if code in expected:
                raise Expected from error
            _log.error(
                "%s %s: %s %s; %s",
                verb,
                what,
                code,
                error.status.reason or "",
                _what_to_do(code, verb, what, error.status.message or ""),
            )
        except httpx2.HTTPError as error:
            _log.error(
                "%s %s: no answer from the API server (%s: %s); retrying, and serving the last good "
                "certificate meanwhile",
                verb,
                what,
                type(error).__name__,
                error,
            )
        raise ApiUnavailable


def _what_to_do(code: int, verb: str, what: str, message: str) -> str:
    kind = what.split()[0]
    # A policy's or a webhook's refusal: 403 or 422, as its author chose.
    if code in (403, 422) and ("ValidatingAdmissionPolicy" in message or "admission webhook" in message):
        return (
            f"{message}; an admission policy or webhook refused it, where deploy/'s own allows the "
            "webhook's writes (deploy/base/validatingadmissionpolicy.yaml): is another policy in the way? "
            "retrying"
        )
    if code == 403:
        return (
            f"the ServiceAccount may not {verb} {kind}: grant it (deploy/base/rbac.yaml: verb {verb!r} "
            f"on this {kind} in resourceNames); retrying"
        )
    if code == 401:
        return "the API server refused the token: is the ServiceAccount token mounted and current? retrying"
    if code == 404 and kind == "secret":
        return (
            "it does not exist: deploy/ ships it empty (deploy/base/secret.yaml) and the webhook fills it; "
            "install it with `kubectl apply -k deploy/`; retrying"
        )
    if code == 404:
        return "it does not exist: install it with `kubectl apply -k deploy/`; retrying"
    if code == 422:
        return "the API server refused the object as invalid: a bug to report; retrying"
    return "retrying"


def _published(configuration: MutatingWebhookConfiguration) -> list[x509.Certificate]:
    """The CAs that every webhook of the configuration trusts."""
    per_webhook = [cluster_certs.parse_bundle(_ca_bundle(w)) for w in configuration.webhooks or []]
    if not per_webhook:
        return []
    return [ca for ca in per_webhook[0] if all(ca in others for others in per_webhook[1:])]


def _present(configuration: MutatingWebhookConfiguration) -> list[x509.Certificate]:
    """The CAs that any webhook of the configuration trusts."""
    return [ca for w in configuration.webhooks or [] for ca in cluster_certs.parse_bundle(_ca_bundle(w))]


def _ca_bundle(webhook: Any) -> str | None:
    bundle: str | None = webhook.clientConfig.caBundle
    return bundle


def _bundles(configuration: MutatingWebhookConfiguration) -> set[tuple[bytes, ...]]:
    return {_key(cluster_certs.parse_bundle(_ca_bundle(w))) for w in configuration.webhooks or []}


def _key(cas: list[x509.Certificate]) -> tuple[bytes, ...]:
    return tuple(sorted(ca.fingerprint(hashes.SHA256()) for ca in cas))


def _describe(key: tuple[bytes, ...]) -> str:
    return f"{len(key)} CA(s)" if key else "no caBundle"
