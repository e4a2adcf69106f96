"""Prometheus metrics of the service, in a registry of its own (one per app, nothing global), and the
plain-HTTP endpoint that serves them on a port of their own."""

import orjson
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

# The API server waits for us on every opted-in pod creation: what matters is the
# milliseconds, up to the webhook timeout of a few seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reviews = Counter(
            "sidecar_webhook_reviews",
            "AdmissionReviews answered, by decision (allowed, patched, denied) and reason.",
            ["decision", "reason"],
            registry=self.registry,
        )
        self.refused_calls = Counter(
            "sidecar_webhook_refused_calls",
            "Calls to /mutate refused with an HTTP error (malformed, wrong type, too large), by status.",
            ["status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "sidecar_webhook_review_duration_seconds",
            "Time to answer a call to /mutate, from its first byte read to its answer built.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

        # Set by webhook/app.py from what /readyz answers: a replica whose metrics are scraped but that
        # the Service does not send calls to shows here, not in `up`.
        self.ready = Gauge(
            "sidecar_webhook_ready",
            "1 while /readyz answers 200 (a certificate loaded, not draining), else 0.",
            registry=self.registry,
        )

        # Set in the in-cluster certificate mode (webhook/cluster.py), which keeps the certificates.
        self.certificate_expiry = Gauge(
            "sidecar_webhook_certificate_expiry_timestamp_seconds",
            "When the certificate expires (Unix time): the CA that signs, and the certificate served.",
            ["certificate"],
            registry=self.registry,
        )
        # Renewal is due from here; a certificate still served well past it is one that does not renew
        # (the API server unreachable, a right taken away). Exported as a time rather than compared in
        # the alert with a fixed window, so that the alert follows --serving-renew-before.
        self.certificate_renewal = Gauge(
            "sidecar_webhook_certificate_renewal_timestamp_seconds",
            "When the certificate enters its renewal window (Unix time): expiry minus its renew-before. "
            "The CA that signs, and the certificate served.",
            ["certificate"],
            registry=self.registry,
        )
        # Labelled (certificate="serving", the one value) so that it has no sample until set: a replica
        # in the file mode, which never reads the caBundle, must not report it as untrusting.
        self.ca_bundle_trusted = Gauge(
            "sidecar_webhook_ca_bundle_trusts_certificate",
            "1 when the caBundle of the webhook configuration, as last read, trusts the certificate "
            "(serving: the one this replica serves); 0 when it does not (the API server would refuse the "
            "TLS handshake: the replica is not ready).",
            ["certificate"],
            registry=self.registry,
        )
        self.certificate_rotations = Counter(
            "sidecar_webhook_certificate_rotations",
            "Certificates this replica made and wrote to the Secret (ca: a CA created, promoted or retired; "
            "serving: a serving certificate issued).",
            ["certificate"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


def metrics_endpoint(metrics: Metrics) -> ASGIApp:
    """GET /metrics, and 404 or 405 for anything else: all the metrics port serves."""

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] != "/metrics":
            response = _error(404, f"{scope['path']} is not served here: GET /metrics")
        elif scope["method"] not in ("GET", "HEAD"):
            response = _error(405, "/metrics takes GET only", {"allow": "GET"})
        else:
            response = Response(metrics.render(), media_type=metrics.content_type)
        await response(scope, receive, send)

    return endpoint


def _error(status: int, error: str, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps({"error": error}), status, headers, media_type="application/json")
