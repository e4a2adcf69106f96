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

        # Set in the in-cluster certificate mode (webhook/cluster.py), which keeps the certificates.
        self.certificate_expiry = Gauge(
            "sidecar_webhook_certificate_expiry_timestamp_seconds",
            "When the certificate expires (Unix time): the CA that signs, and the certificate served.",
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
