"""The HTTPS service: a thin shell that reads the call, runs the core, and answers.

POST /mutate, GET /healthz and GET /readyz are served by `Endpoints`, a plain ASGI app that
wraps FastAPI rather than sitting inside it: the API server waits on every review, and FastAPI's
per-request work (its middleware stack, routing, request and response objects) cost more than the
review itself in the profile (README, "Performance"). /healthz shares that shell, so the
benchmark's ratio of /mutate to /healthz measures what injection costs and nothing else. FastAPI
serves the rest: /metrics, and the 404s.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ClassVar

import orjson
from fastapi import FastAPI, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from webhook import admission, logs, recordings
from webhook.admission import Reply, refuse
from webhook.metrics import Metrics
from webhook.settings import Settings

# An AdmissionReview carries object and oldObject, each at most etcd's 1.5 MiB as stored; as JSON
# (what we receive) a pod is up to about twice its stored size, so a legitimate review stays under
# 6 MiB. 8 MiB leaves room for that and bounds what one call can make us hold in memory.
MAX_BODY_BYTES = 8 * 1024 * 1024
# From the headers to the last byte of the body. The API server sends a review at once and waits at
# most 30 s for the answer; a client slower than this only holds a connection.
BODY_TIMEOUT_SECONDS = 10.0
# uvicorn holds up to 64 KiB of a body the app hasn't asked for, then stops reading that socket.
# Larger bodies are read a few at a time, and the others wait with their bytes in the kernel's
# socket buffers, not in ours: without this, 30 clients sending 8 MiB at once would fill the
# Deployment's 256 MiB limit. It costs nothing in speed (one core reviews one pod at a time however
# many are read at once); 16 pods of 1 MiB at once peak at 77 MiB instead of 81 (README, "Performance").
LARGE_BODY_BYTES = 64 * 1024
LARGE_BODIES_AT_ONCE = 4

_log = logging.getLogger("sidecar_webhook.review")
_lines = logs.Lines(_log.name)
_HEALTHY = orjson.dumps({"status": "ok"})
_CLOSE = ((b"connection", b"close"),)


@dataclass
class ServingState:
    """What /readyz reports: ready once certificates are loaded, not ready again once draining."""

    ready: bool = False
    draining: bool = False


def create_app(settings: Settings, state: ServingState | None = None) -> "Endpoints":
    state = state if state is not None else ServingState(ready=True)
    metrics = Metrics()
    app = FastAPI(title="sidecar-webhook", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    return Endpoints(app, settings=settings, state=state, metrics=metrics)


class Endpoints:
    """POST /mutate, GET /healthz and GET /readyz; every other call goes on to FastAPI."""

    _METHODS: ClassVar[dict[str, str]] = {"/mutate": "POST", "/healthz": "GET", "/readyz": "GET"}

    def __init__(self, app: ASGIApp, settings: Settings, state: ServingState, metrics: Metrics) -> None:
        self.app, self.settings, self.state, self.metrics = app, settings, state, metrics
        self.large_bodies = asyncio.Semaphore(LARGE_BODIES_AT_ONCE)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = self._METHODS.get(scope["path"]) if scope["type"] == "http" else None
        if method is None:
            await self.app(scope, receive, send)
        elif scope["method"] != method:
            body = orjson.dumps({"error": f"{scope['path']} takes {method} only"})
            await _answer(send, 405, body, [(b"allow", method.encode())])
        elif scope["path"] == "/mutate":
            await self._mutate(scope, receive, send)
        elif scope["path"] == "/healthz":
            await _answer(send, 200, _HEALTHY)
        elif self.state.draining or not self.state.ready:
            await _answer(
                send, 503, orjson.dumps({"status": "draining" if self.state.draining else "starting"})
            )
        else:
            await _answer(send, 200, orjson.dumps({"status": "ready"}))

    # Two error channels, chosen on purpose. A broken call (not JSON, no request or uid, a content
    # type other than JSON, a body over MAX_BODY_BYTES) gets an HTTP 4xx with a JSON body saying
    # what is wrong. A pod the webhook refuses (a bad annotation) gets HTTP 200 and an
    # AdmissionReview with allowed: false and a message for the person who wrote the pod.
    async def _mutate(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        body = await _read_body(scope, receive, self.large_bodies)
        reply = body if isinstance(body, Reply) else admission.review(body, self.settings)
        elapsed = time.perf_counter() - started
        _record(reply, elapsed, self.metrics)
        # Refused before its body was read whole: what is left of it can't be told from a next request,
        # so the connection closes rather than wait for it.
        await _answer(send, reply.status_code, reply.body, _CLOSE if isinstance(body, Reply) else ())
        # Only reviews answered with an AdmissionReview are recorded: after the answer is sent and
        # off the event loop, so the API server never waits for the disk.
        if self.settings.record_dir is not None and reply.status_code == 200 and reply.request is not None:
            assert isinstance(body, bytes)
            await asyncio.to_thread(
                recordings.write, self.settings.record_dir, reply.request, body, reply.body, datetime.now(UTC)
            )


async def _read_body(scope: Scope, receive: Receive, large_bodies: asyncio.Semaphore) -> bytes | Reply:
    """The body, or the refusal: content type first, then the size cap, even for chunked bodies."""
    headers = dict(scope["headers"])
    media_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower().decode("latin-1")
    if media_type != "application/json":
        return refuse(415, "the content type must be application/json", [f"got {media_type or 'none'!r}"])
    declared = headers.get(b"content-length", b"")
    length = int(declared) if declared.isdigit() else None  # None: chunked, of unknown length
    if length is not None and length > MAX_BODY_BYTES:
        return _too_large()
    # A body of unknown length counts as large. The turn ends once the body is read: the review
    # that follows runs without an await, so no other body is read while this one is held.
    large = length is None or length > LARGE_BODY_BYTES
    turn = large_bodies if large else contextlib.nullcontext()
    chunks, size, waiting = [], 0, True
    try:
        async with asyncio.timeout(BODY_TIMEOUT_SECONDS), turn:
            waiting = False
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return refuse(400, "the client went away before sending the whole body")
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    return _too_large()
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
    except TimeoutError:
        if waiting:
            return refuse(
                503,
                f"{LARGE_BODIES_AT_ONCE} other large reviews were being read for all of "
                f"{BODY_TIMEOUT_SECONDS:g} s; this one was not read",
            )
        return refuse(408, f"the body did not arrive within {BODY_TIMEOUT_SECONDS:g} s")


def _too_large() -> Reply:
    return refuse(413, f"the body is larger than {MAX_BODY_BYTES} bytes, more than any AdmissionReview")


async def _answer(send: Send, status: int, body: bytes, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


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
        _lines.info("review", fields)
