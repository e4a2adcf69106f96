"""Recordings of answered reviews (`serve --record-dir`): one JSON file each, replayable with `review -f`.

A recording is the AdmissionReview as received with the `response` the webhook gave added to it:
the two halves of one AdmissionReview, a shape Kubernetes itself defines. `review -f` reads it as
the review it is (the recorded response is ignored as input) and prints the same response again,
so users can keep recordings from their cluster as test cases for their own pods.
"""

import json
import logging
import re
from datetime import UTC, datetime
from pathlib import Path

from webhook.envelope import AdmissionRequest
from webhook.files import write_atomically

_log = logging.getLogger("sidecar_webhook.recordings")

# Names come from the call: anything but what Kubernetes names use is replaced, so a name can never
# leave the directory or hide a file. Capped so the file name stays under the usual 255 bytes.
_UNSAFE = re.compile(r"[^A-Za-z0-9.-]+")
_NAMESPACE_CHARS, _POD_CHARS, _UID_CHARS = 63, 120, 8


def file_name(request: AdmissionRequest, now: datetime) -> str:
    """`<UTC time>-<namespace>-<pod>-<uid8>.json`: sorted by name, recordings are sorted by time."""
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    parts = [
        (request.namespace, _NAMESPACE_CHARS),
        ((request.pod_name or "").rstrip("-"), _POD_CHARS),  # a generateName ends with "-"
        (request.uid, _UID_CHARS),
    ]
    safe = [_UNSAFE.sub("_", value or "").strip(".")[:limit] or "none" for value, limit in parts]
    return "-".join([stamp, *safe]) + ".json"


def recording(received: bytes, answered: bytes) -> bytes:
    """The review as received, with the answered response added to it."""
    review = json.loads(received)
    review["response"] = json.loads(answered)["response"]
    return (json.dumps(review, indent=2, ensure_ascii=False) + "\n").encode()


def write(
    directory: Path, request: AdmissionRequest, received: bytes, answered: bytes, received_at: datetime
) -> None:
    """Write one recording; a failure is logged, never raised: recording must not fail a review."""
    path = directory / file_name(request, received_at)
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Readable by the owner only, like the pods it holds (env values may be secrets).
        write_atomically(path, recording(received, answered), 0o600)
    except OSError as error:
        _log.warning(
            "could not record the review",
            extra={"fields": {"uid": request.uid, "path": str(path), "error": str(error)}},
        )
