"""The HTTPS service's routes: a thin shell that reads the call, runs the core, and answers."""

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from fastapi import FastAPI, Request, Response
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect

from webhook import admission, recordings
from webhook.admission import Reply, refuse
from webhook.metrics import Metrics
from webhook.settings import Settings

# An AdmissionReview carries object and oldObject, each at most etcd's 1.5 MiB as stored; as JSON
# (what we receive) a pod is up to about twice its stored size, so a legitimate review stays under
# 6 MiB. 8 MiB leaves room for that and bounds what one call can make us hold in memory.
MAX_BODY_BYTES = 8 * 1024 * 1024

_log = logging.getLogger("sidecar_webhook.review")


@dataclass
class ServingState:
    """What /readyz reports: ready once certificates are loaded, not ready again once draining."""

    ready: bool = False
    draining: bool = False


def create_app(settings: Settings, state: ServingState | None = None) -> FastAPI:
    state = state if state is not None else ServingState(ready=True)
    metrics = Metrics()
    app = FastAPI(title="sidecar-webhook", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.serving = state

    # Two error channels, chosen on purpose. A broken call (not JSON, no request or uid, a content
    # type other than JSON, a body over MAX_BODY_BYTES) gets an HTTP 4xx with a JSON body saying
    # what is wrong. A pod the webhook refuses (a bad annotation) gets HTTP 200 and an
    # AdmissionReview with allowed: false and a message for the person who wrote the pod.
    @app.post("/mutate")
    async def mutate(request: Request) -> Response:
        started = time.perf_counter()
        body = await _read_body(request)
        reply = body if isinstance(body, Reply) else admission.review(body, settings)
        elapsed = time.perf_counter() - started
        _record(reply, elapsed, metrics)
        recording = None
        # Only reviews answered with an AdmissionReview (HTTP 200) are recorded, after the answer is
        # sent and off the event loop, so the API server never waits for the disk.
        if (
            settings.record_dir is not None
            and reply.status_code == 200
            and reply.request is not None
            and isinstance(body, bytes)
        ):
            recording = BackgroundTask(
                recordings.write, settings.record_dir, reply.request, body, reply.body, datetime.now(UTC)
            )
        return Response(reply.body, reply.status_code, media_type="application/json", background=recording)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(response: Response) -> dict[str, str]:
        if state.draining or not state.ready:
            response.status_code = 503
            return {"status": "draining" if state.draining else "starting"}
        return {"status": "ready"}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    return app


async def _read_body(request: Request) -> bytes | Reply:
    """The body, or the refusal: content type first, then the size cap, even for chunked bodies."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        return refuse(415, "the content type must be application/json", [f"got {media_type or 'none'!r}"])
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return _too_large()
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                return _too_large()
            chunks.append(chunk)
    except ClientDisconnect:
        return refuse(400, "the client went away before sending the whole body")
    return b"".join(chunks)


def _too_large() -> Reply:
    return refuse(413, f"the body is larger than {MAX_BODY_BYTES} bytes, more than any AdmissionReview")


def _record(reply: Reply, elapsed: float, metrics: Metrics) -> None:
    """One JSON log line and the metrics for one call."""
    metrics.latency.observe(elapsed)
    request, decision = reply.request, reply.decision
    fields: dict[str, object] = {"status": reply.status_code, "latency_ms": round(elapsed * 1000, 3)}
    if request is not None:
        fields |= {
            "uid": request.uid,
            "namespace": request.namespace,
            "pod": request.pod_name,
            "operation": request.operation,
            "dry_run": bool(request.dry_run),
        }
    if decision is not None:
        metrics.reviews.labels(decision.outcome, decision.reason).inc()
        fields |= {"decision": decision.outcome, "reason": decision.reason}
    else:
        metrics.refused_calls.labels(str(reply.status_code)).inc()
        fields |= {"decision": "refused", "reason": reply.error}
    if reply.internal_error is not None:
        _log.error("review failed", exc_info=reply.internal_error, extra={"fields": fields})
    else:
        _log.info("review", extra={"fields": fields})
