"""The HTTPS service: FastAPI routes that read the call, run the core, and answer.

The hot path stays lean inside FastAPI: /mutate reads its body itself, from the request (no body
model, so FastAPI neither parses nor validates it), and answers with a raw `Response` of the bytes
`webhook/admission.py` encoded with orjson (no response model to validate). The models of the
AdmissionReview are in the app's OpenAPI schema for readers (`sidecar-webhook openapi`), not on
the request's way.
"""

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException

from webhook import __version__, admission, logs, recordings
from webhook.admission import Reply, refuse
from webhook.envelope import (
    AdmissionRequest,
    AdmissionReview,
    AdmissionReviewResponse,
    ObjectReview,
    Refusal,
)
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
# many are read at once); 16 pods of 1 MiB at once peak at 77 MiB instead of 81 (docs/performance.md).
LARGE_BODY_BYTES = 64 * 1024
LARGE_BODIES_AT_ONCE = 4
# A large body waits for its turn until this share of its time is left, not to the end: a turn
# given with a few milliseconds left can only end in a 408, and would be taken from a body that
# still has time. (Calls that come in together reach the wait a dispatch apart, about 0.1 ms each,
# so without this a turn freed at one call's deadline went to one behind it with just that left.)
LAST_TURN_SHARE = 0.02
# Once it has its turn, a large body must come at least this fast, after half a second: a client
# trickling its body would otherwise hold a turn to the end of its 10 s, and four of them kept every
# other large review waiting (an honest 100 kB review took 9.5 s, past the API server's timeout).
# The API server sends a review in one write over the cluster's network, at tens of MiB/s or more;
# 4 MiB/s is a slow link's speed, and reads the largest body (8 MiB) in 2.5 s. A turn then lasts at
# most 0.5 s plus the body's length at that rate (0.52 s for 100 kB), and holding the four turns for
# longer costs a client 16 MiB/s of real bytes, not four idle connections.
TURN_GRACE_SECONDS = 0.5
MIN_BODY_BYTES_PER_SECOND = 4 * 1024 * 1024

_log = logging.getLogger("sidecar_webhook.review")
_lines = logs.Lines(_log.name)
_JSON = "application/json"
_HEALTHY = orjson.dumps({"status": "ok"})
_REFUSALS = {
    400: "not an AdmissionReview (not JSON, no request or uid, an object that is not Pod-shaped)",
    403: "no client certificate, where the server requires one (--client-ca-file)",
    408: f"the body did not arrive within {BODY_TIMEOUT_SECONDS:g} s of the headers, or a body over "
    f"{LARGE_BODY_BYTES} bytes came slower than {MIN_BODY_BYTES_PER_SECOND} bytes/s once its turn came",
    413: f"the body is larger than {MAX_BODY_BYTES} bytes",
    415: "the content type is not application/json",
    503: f"no turn to read a body over {LARGE_BODY_BYTES} bytes came in time to read it",
}


@dataclass
class ServingState:
    """What /readyz reports: ready once certificates are loaded, not ready again once draining.
    The route asks `status()` on every call, so whatever else readiness comes to depend on is
    decided here, not in the route."""

    ready: bool = False
    draining: bool = False

    def status(self) -> str:
        """One word: ready, or why not (starting, draining)."""
        return "draining" if self.draining else "ready" if self.ready else "starting"


@dataclass(frozen=True, slots=True)
class ReviewBody:
    """The body of a call to /mutate, and when reading it began (the review's latency runs from there)."""

    data: bytes
    started: float


class Refused(Exception):
    """A call to /mutate answered with an HTTP 4xx instead of a review; FastAPI's exception handler
    for it logs, counts and sends `reply`."""

    def __init__(self, reply: Reply, started: float, body_unread: bool = False) -> None:
        super().__init__(reply.error)
        self.reply, self.started, self.body_unread = reply, started, body_unread


class PlainRoute(APIRoute):
    """A FastAPI route for an endpoint that takes at most the `Request` and returns a `Response`.

    FastAPI resolves every route's parameters on every call, even a lone `Request` (its
    `solve_dependencies`, the largest item of FastAPI's own in a cProfile of /mutate): 25 µs of server
    CPU a call (`python -m bench`: /healthz 0.079 to 0.054 ms, no annotation 0.171 to 0.128 ms). These
    endpoints declare nothing to resolve, so the handler calls them directly; the route is otherwise
    FastAPI's own: routed, in the OpenAPI schema, behind the app's exception handlers. Declaring
    anything else (a query parameter, a body, a dependency) fails at startup rather than being ignored.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        dependant = self.dependant
        declared = (
            dependant.path_params,
            dependant.query_params,
            dependant.header_params,
            dependant.cookie_params,
            dependant.body_params,
            dependant.dependencies,
        )
        if any(declared) or self.response_field is not None:
            raise TypeError(
                f"{self.path}: a PlainRoute endpoint takes only the Request and returns a Response"
            )
        endpoint = self.endpoint
        if dependant.request_param_name is None:

            async def handle(request: Request) -> Response:
                response: Response = await endpoint()
                return response

        else:

            async def handle(request: Request) -> Response:
                response: Response = await endpoint(request)
                return response

        return handle


def create_app(
    settings: Settings, state: ServingState | None = None, metrics: Metrics | None = None
) -> FastAPI:
    """The service; `state` and `metrics` are shared with the server, which sets readiness, counts
    certificate work in the same registry as the reviews and serves them on the metrics port (never
    on this one: whoever reaches the TLS port could read them, or forge reviews into them)."""
    serving = state if state is not None else ServingState(ready=True)
    metrics = metrics if metrics is not None else Metrics()
    metrics.ready.set_function(lambda: float(serving.status() == "ready"))
    large_bodies = asyncio.Semaphore(LARGE_BODIES_AT_ONCE)
    # Only the review routes (/mutate, /warn): the TLS layer can't require the certificate without
    # failing the kubelet's HTTPS probes, which send none; /healthz and /readyz tell nothing worth one.
    client_certificate_required = settings.client_ca_file is not None
    # No HTTP docs: the schema is printed by `sidecar-webhook openapi`, and the port faces only
    # the API server.
    app = FastAPI(
        title="sidecar-webhook",
        version=__version__,
        summary="A mutating admission webhook that gives a pod a log-streaming sidecar from one annotation.",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        # The service counts and logs its own reviews (webhook/metrics.py, one log line each);
        # FastAPI's OpenTelemetry hooks would look up providers on every call for nothing.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.router.route_class = PlainRoute

    # Two error channels, chosen on purpose. A broken call (not JSON, no request or uid, a content
    # type other than JSON, a body over MAX_BODY_BYTES, too slow) raises Refused: HTTP 4xx with a
    # JSON body saying what is wrong. A pod the webhook refuses (a bad annotation) gets HTTP 200 and
    # an AdmissionReview with allowed: false and a message for the person who wrote the pod.
    def reviews(
        path: str,
        summary: str,
        request_model: type[BaseModel],
        review: Callable[[bytes, Settings], Reply],
        *,
        recorded: bool,
    ) -> None:
        """A path that takes AdmissionReviews of `request_model` and answers them with `review`."""

        async def answer(request: Request) -> Response:
            if client_certificate_required and not _client_certified(request):
                raise Refused(_NO_CLIENT_CERTIFICATE, time.perf_counter(), body_unread=True)
            body = await _read_body(request, large_bodies)
            reply = review(body.data, settings)
            if reply.status_code != 200:
                raise Refused(reply, body.started)
            _record(reply, time.perf_counter() - body.started, metrics)
            # Recorded after the answer is sent and off the event loop: the API server never waits
            # for the disk.
            recording = None
            if recorded and settings.record_dir is not None and isinstance(reply.request, AdmissionRequest):
                recording = BackgroundTask(
                    recordings.write,
                    settings.record_dir,
                    reply.request,
                    body.data,
                    reply.body,
                    datetime.now(UTC),
                )
            return Response(reply.body, media_type=_JSON, background=recording)

        app.post(
            path,
            summary=summary,
            response_class=Response,
            responses={
                200: _documented(AdmissionReviewResponse, "the review, answered"),
                **{code: _documented(Refusal, why) for code, why in _REFUSALS.items()},
            },
            openapi_extra={"requestBody": {"required": True, **_documented(request_model)}},
        )(answer)

    reviews(
        "/mutate",
        "Review a pod: the AdmissionReview back, in the version it came in, with a JSONPatch",
        AdmissionReview,
        admission.review,
        recorded=True,
    )
    # A second webhook of the configuration, failurePolicy Ignore: it only warns (a workload with the
    # trigger annotation beside its pod template, a pod with a misspelled name of ours), so it is a
    # path of its own, whose answers can carry no patch and no refusal whatever the API server sends it.
    reviews(
        "/warn",
        "Review a Pod or a workload for slips: allowed, never patched, with warnings for kubectl",
        ObjectReview,
        admission.warn,
        recorded=False,
    )

    @app.exception_handler(Refused)
    async def refused(request: Request, refusal: Refused) -> Response:
        reply = refusal.reply
        _record(reply, time.perf_counter() - refusal.started, metrics)
        # Refused before its body was read whole: what is left of it can't be told from a next
        # request, so the connection closes rather than wait for it.
        headers = {"connection": "close"} if refusal.body_unread else None
        return Response(reply.body, reply.status_code, headers, media_type=_JSON)

    @app.exception_handler(HTTPException)
    async def not_routed(request: Request, error: HTTPException) -> Response:
        # A known path called with the wrong method says which one it takes, like every 4xx of
        # /mutate, in {"error": ...}; anything else (404) is FastAPI's own answer.
        if error.status_code == 405 and error.headers is not None:
            allowed = error.headers["Allow"]
            body = orjson.dumps({"error": f"{request.url.path} takes {allowed} only"})
            return Response(body, 405, {"allow": allowed}, media_type=_JSON)
        return await http_exception_handler(request, error)

    @app.get("/healthz", summary="200 while the process runs")
    async def healthz() -> Response:
        return Response(_HEALTHY, media_type=_JSON)

    @app.get(
        "/readyz",
        summary="200 once the certificate is loaded, 503 from the start of shutdown",
        responses={503: {"description": "starting, or draining before shutdown"}},
    )
    async def readyz() -> Response:
        status = serving.status()
        return Response(orjson.dumps({"status": status}), 200 if status == "ready" else 503, media_type=_JSON)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            _, models = models_json_schema(
                [(model, "validation") for model in _DOCUMENTED], ref_template=_COMPONENT
            )
            schema.setdefault("components", {}).setdefault("schemas", {}).update(models["$defs"])
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


# /mutate's models are named in its OpenAPI entry by reference and their schemas added to the
# components when the schema is asked for, not given to FastAPI as `model`s: FastAPI would build a
# validator for each at start (1.4 MiB resident for good) that the raw body and answers never use.
_DOCUMENTED: list[type[BaseModel]] = [AdmissionReview, AdmissionReviewResponse, ObjectReview, Refusal]
_COMPONENT = "#/components/schemas/{model}"


def _documented(model: type[BaseModel], description: str = "") -> dict[str, Any]:
    """An OpenAPI request body or response: JSON of `model`, by reference."""
    content = {"content": {_JSON: {"schema": {"$ref": _COMPONENT.format(model=model.__name__)}}}}
    return content | ({"description": description} if description else {})


async def _read_body(request: Request, large_bodies: asyncio.Semaphore) -> ReviewBody:
    """The body, or Refused: content type first, then the size cap, even for chunked bodies."""
    started = time.perf_counter()
    headers = request.headers
    media_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != _JSON:
        reply = refuse(415, "the content type must be application/json", [f"got {media_type or 'none'!r}"])
        raise Refused(reply, started, body_unread=True)
    declared = headers.get("content-length", "")
    length = int(declared) if declared.isdigit() else None  # None: chunked, of unknown length
    if length is not None and length > MAX_BODY_BYTES:
        raise Refused(_too_large(), started, body_unread=True)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BODY_TIMEOUT_SECONDS
    # A body of unknown length counts as large. The turn ends once the body is read: the review
    # that follows runs without an await, so no other body is read while this one is held.
    large = length is None or length > LARGE_BODY_BYTES
    too_slow = f"the body did not arrive within {BODY_TIMEOUT_SECONDS:g} s"
    if large:
        try:
            async with asyncio.timeout_at(deadline - BODY_TIMEOUT_SECONDS * LAST_TURN_SHARE):
                await large_bodies.acquire()
        except TimeoutError:
            reply = refuse(
                503,
                f"{LARGE_BODIES_AT_ONCE} other large reviews were being read until too late to read "
                f"this one within {BODY_TIMEOUT_SECONDS:g} s",
            )
            raise Refused(reply, started, body_unread=True) from None
        at_rate = loop.time() + TURN_GRACE_SECONDS + (length or MAX_BODY_BYTES) / MIN_BODY_BYTES_PER_SECOND
        if at_rate < deadline:
            deadline = at_rate
            size = "of unknown length" if length is None else f"of {length} bytes"
            too_slow = (
                f"the body {size} came slower than {MIN_BODY_BYTES_PER_SECOND} bytes/s "
                f"(after {TURN_GRACE_SECONDS:g} s) once its turn to be read came"
            )
    try:
        async with asyncio.timeout_at(deadline):
            return ReviewBody(await _receive_whole(request, started), started)
    except TimeoutError:
        raise Refused(refuse(408, too_slow), started, body_unread=True) from None
    finally:
        if large:
            large_bodies.release()


async def _receive_whole(request: Request, started: float) -> bytes:
    chunks, size, receive = [], 0, request.receive
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            reply = refuse(400, "the client went away before sending the whole body")
            raise Refused(reply, started, body_unread=True)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise Refused(_too_large(), started, body_unread=True)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _client_certified(request: Request) -> bool:
    """Whether the client sent a certificate, which the TLS layer verified against the client CA."""
    tls: dict[str, Any] = request.scope.get("extensions", {}).get("tls", {})
    return bool(tls.get("client_cert_chain"))


_NO_CLIENT_CERTIFICATE = refuse(
    403, "a client certificate is required: this server takes reviews only from clients its client CA signed"
)


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
        _lines.info("review", fields)
