"""The AdmissionReview protocol: decode a review, decide, encode the answer in the version it came in.

Shared by every front end that takes a review (the HTTPS service and `sidecar-webhook review`), so
they answer byte for byte alike.
"""

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from webhook.decision import Decision
from webhook.engine import decide
from webhook.envelope import AdmissionRequest, AdmissionReview, ObjectRequest, ObjectReview, error_details
from webhook.settings import Settings
from webhook.workloads import slips

# What parsing a review costs grows with its JSON objects, not its bytes: 8 MiB of tiny containers
# ({"name":"c1"}, 380,000 of them) took 1.1 s and 126 MiB to parse into the pod's view, on the event
# loop every other review waits for. A real pod has hundreds of objects (containers, env entries,
# mounts, probes), a few thousand at the most; 25,000 cost at most 0.2 s and 15 MiB. Counted as the
# bytes "{" of the body, strings included: a count that can only overcount, by the braces in strings
# (an env value holding JSON), which would need tens of thousands of them.
MAX_JSON_OBJECTS = 25_000
# The count goes a slice at a time and stops past the cap. bytes.replace finds a rare byte with memchr,
# 6 times faster than bytes.count on a 1 MiB pod (0.05 ms, not 0.3; under load count was 12% of the
# server's time), but it slows down with every match: slices bound the work past the cap to one slice.
COUNT_SLICE_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Reply:
    """What to send back: an HTTP status and a JSON body, and what the logs and metrics need."""

    status_code: int
    body: bytes
    request: AdmissionRequest | ObjectRequest | None = None
    decision: Decision | None = None
    error: str = ""  # why a call was refused (4xx) or failed inside (internal error)
    internal_error: BaseException | None = None


def review(body: bytes, settings: Settings) -> Reply:
    """Answer one AdmissionReview given as JSON bytes. Never raises."""
    objects = json_objects(body, stop_above=MAX_JSON_OBJECTS)
    if objects > MAX_JSON_OBJECTS:
        return refuse(
            413,
            f"the body has at least {objects} JSON objects (counted as '{{', strings included), more than "
            f"the {MAX_JSON_OBJECTS} of any Pod's review",
        )
    try:
        envelope = AdmissionReview.model_validate_json(body)
    except ValidationError as error:
        in_object = all(e["loc"][:2] == ("request", "object") for e in error.errors())
        what = "request.object is not a valid Pod" if in_object else "the body is not a valid AdmissionReview"
        return refuse(400, what, error_details(error))
    request = envelope.request
    try:
        decision = decide(request, settings)
    except Exception as error:  # a bug: answer, don't crash; the caller logs it with the uid
        decision = Decision(allowed=False, reason="internal-error", message=_INTERNAL_ERROR)
        body = encode(envelope.api_version, request.uid, decision, code=500)
        return Reply(200, body, request, decision, f"{type(error).__name__}: {error}", error)
    return Reply(200, encode(envelope.api_version, request.uid, decision), request, decision)


def json_objects(body: bytes, stop_above: int) -> int:
    """The bytes "{" of `body`, counted until there are more than `stop_above`."""
    found = 0
    for start in range(0, len(body), COUNT_SLICE_BYTES):
        piece = body[start : start + COUNT_SLICE_BYTES]
        found += len(piece) - len(piece.replace(b"{", b""))
        if found > stop_above:
            break
    return found


def warn(body: bytes, settings: Settings) -> Reply:
    """Answer one AdmissionReview of /warn: allowed, never patched, with the warnings of `slips` for a
    Pod or a workload (the API server hands them to kubectl). Never raises."""
    try:
        envelope = ObjectReview.model_validate_json(body)
    except ValidationError as error:
        return refuse(400, "the body is not a valid AdmissionReview", error_details(error))
    request = envelope.request
    found = slips(request.kind.group, request.kind.kind, request.object or {})
    decision = Decision.allow("warned" if found else "no-slip", found)
    return Reply(200, encode(envelope.api_version, request.uid, decision), request, decision)


_INTERNAL_ERROR = "sidecar-webhook failed on this pod (an internal error); its logs name the request uid"


def encode(api_version: str, uid: str, decision: Decision, *, code: int = 400) -> bytes:
    """The AdmissionReview response; patch and patchType only when there are operations."""
    response: dict[str, Any] = {"uid": uid, "allowed": decision.allowed}
    if decision.patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(_dumps(list(decision.patch))).decode("ascii")
    if not decision.allowed:
        reason = "InternalError" if code >= 500 else "BadRequest"
        response["status"] = {"code": code, "reason": reason, "message": decision.message}
    if decision.warnings:
        response["warnings"] = list(decision.warnings)
    return _dumps({"apiVersion": api_version, "kind": "AdmissionReview", "response": response})


def refuse(
    status_code: int, error: str, details: Sequence[str] = (), request: AdmissionRequest | None = None
) -> Reply:
    """A broken call: an HTTP error with a JSON body saying what is wrong."""
    body = _dumps({"error": error, "details": list(details)})
    return Reply(status_code, body, request, error=error)


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value)
