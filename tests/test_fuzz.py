"""Hostile input against the running server: generated AdmissionReview shapes, raw bytes, headers and
annotation values. Whatever arrives, the answer is a valid AdmissionReview or a 4xx JSON error:
never a 5xx, a hang or a crash. Inputs that once failed are kept in tests/corpus/ and replayed."""

import base64
import binascii
import copy
import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.kube import load_review
from webhook.sidecar import FOLLOW, state_file

CORPUS = Path(__file__).parent / "corpus"
SEED = load_review("seed-pod")
SENT: Counter[str] = Counter()
FUZZ = settings(max_examples=2500, deadline=None, suppress_health_check=list(HealthCheck), database=None)
TOTAL_REQUESTS = 10_000


def check_answer(answer: httpx.Response, sent: Any = None) -> None:
    """The contract for any call: a 4xx JSON error, or HTTP 200 with a well-formed AdmissionReview."""
    assert answer.status_code < 500, answer.text
    assert answer.headers["content-type"] == "application/json"
    body = answer.json()
    if answer.status_code != 200:
        assert 400 <= answer.status_code < 500
        assert isinstance(body["error"], str) and body["error"]
        return
    assert body["kind"] == "AdmissionReview"
    assert body["apiVersion"] in ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")
    response = body["response"]
    if isinstance(sent, dict):
        assert response["uid"] == sent["request"]["uid"]
        assert body["apiVersion"] == sent["apiVersion"]
    assert isinstance(response["allowed"], bool)
    if not response["allowed"]:
        assert isinstance(response["status"]["code"], int) and response["status"]["message"]
        assert response["status"]["code"] != 500, "an internal error"
    if "patch" in response:
        ops = json.loads(base64.b64decode(response["patch"], validate=True))
        assert response["patchType"] == "JSONPatch" and ops and all(op["op"] == "add" for op in ops)


def post(
    client: httpx.Client, body: bytes, kind: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    SENT[kind] += 1
    return client.post("/mutate", content=body, headers=headers or {"content-type": "application/json"})


def checked(
    client: httpx.Client, body: bytes, kind: str, sent: Any = None, headers: dict[str, str] | None = None
) -> httpx.Response:
    """Post and check; a body that fails is kept in the corpus (up to 64 KiB) to be replayed for ever."""
    answer = post(client, body, kind, headers)
    try:
        check_answer(answer, sent)
    except AssertionError:
        if len(body) <= 65536 and (headers is None or headers.get("content-type") == "application/json"):
            (CORPUS / f"failed-{hashlib.sha256(body).hexdigest()[:16]}.bin").write_bytes(body)
        raise
    return answer


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)
# Places in a review where the API server's shape matters, to break one at a time.
PATHS = [
    (),
    ("apiVersion",),
    ("kind",),
    ("request",),
    ("request", "uid"),
    ("request", "kind"),
    ("request", "kind", "kind"),
    ("request", "operation"),
    ("request", "object"),
    ("request", "object", "metadata"),
    ("request", "object", "metadata", "annotations"),
    ("request", "object", "metadata", "annotations", "sidecar.example/log-path"),
    ("request", "object", "spec"),
    ("request", "object", "spec", "containers"),
    ("request", "object", "spec", "containers", 0),
    ("request", "object", "spec", "containers", 0, "name"),
    ("request", "object", "spec", "containers", 0, "volumeMounts"),
    ("request", "object", "spec", "containers", 0, "volumeMounts", 0, "mountPath"),
    ("request", "object", "spec", "volumes"),
    ("request", "object", "spec", "restartPolicy"),
    ("request", "object", "spec", "os"),
    ("request", "namespace"),
    ("request", "dryRun"),
]


def replaced(review: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    review = copy.deepcopy(review)
    target = review
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE and isinstance(target, dict) and path[-1] not in target:
        return review
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return review


_DELETE = object()
_DEEP = "__deeply nested__"


def huge(kind: str) -> Any:
    return {
        "containers": [{"name": f"c{i}"} for i in range(20_000)],
        "numbers": list(range(100_000)),
        "string": "x" * 1_000_000,
    }[kind]


values = (
    json_values
    | st.sampled_from(["containers", "numbers", "string"]).map(huge)
    | st.just(_DELETE)
    | st.just(_DEEP)
)


@FUZZ
@given(path=st.sampled_from(PATHS), value=values, depth=st.integers(100, 200_000))
def test_reviews_with_a_broken_field_get_an_admission_review_or_a_4xx(
    client: httpx.Client, path: tuple[Any, ...], value: Any, depth: int
) -> None:
    if not path and value is _DELETE:
        value = None
    review = replaced(SEED, path, value)
    body = json.dumps(review)
    if value == _DEEP:  # nesting deeper than Python's own json can build
        body = body.replace(json.dumps(_DEEP), "[" * depth + "]" * depth)
    checked(client, body.encode(), "shapes", review if value != _DEEP else None)


@FUZZ
@given(body=st.binary(max_size=3000) | st.text(max_size=500).map(str.encode))
def test_raw_bytes_get_a_4xx_json_error_or_an_answer(client: httpx.Client, body: bytes) -> None:
    checked(client, body, "bytes")


@FUZZ
@given(
    content_type=st.sampled_from(
        [
            "application/json",
            "APPLICATION/JSON; charset=utf-8",
            "text/json",
            "",
            "application/json;",
            "multipart/form-data",
            "application/jsonx",
        ]
    )
    | st.text(max_size=40).filter(lambda t: t.isprintable() and t.isascii() and t == t.strip()),
    truncate=st.integers(0, 4000),
)
def test_any_content_type_and_truncated_bodies_get_a_clear_answer(
    client: httpx.Client, content_type: str, truncate: int
) -> None:
    body = json.dumps(SEED).encode()[:truncate]
    checked(client, body, "headers", headers={"content-type": content_type})


annotation_values = st.one_of(
    st.text(max_size=200),
    st.lists(
        st.sampled_from(
            [
                "/",
                "..",
                ".",
                ",",
                " ",
                "var",
                "log",
                "app.log",
                "日本",
                "$(id)",
                "; rm -rf /",
                "\x00",
                "\n",
                "`x`",
                "~",
                "%2e%2e",
                "\\",
                "'",
                '"',
                "*",
                "\u202e",
            ]
        ),
        max_size=40,
    ).map("".join),
    st.integers(1, 20_000).map(lambda n: "/var/log/" + "a" * n + ".log"),
    st.lists(st.just("/l/a.log"), min_size=1, max_size=50).map(",".join),
)


@FUZZ
@given(
    log_path=annotation_values,
    containers=st.none() | annotation_values,
    mode=st.none()
    | st.sampled_from(["auto", "classic", "native", "Native", " classic ", ""])
    | st.text(max_size=10),
)
def test_adversarial_annotation_values_are_denied_clearly_or_injected_safely(
    client: httpx.Client, log_path: str, containers: str | None, mode: str | None
) -> None:
    review = copy.deepcopy(SEED)
    annotations = review["request"]["object"]["metadata"]["annotations"]
    annotations["sidecar.example/log-path"] = log_path
    for key, value in (("sidecar.example/containers", containers), ("sidecar.example/mode", mode)):
        if value is not None:
            annotations[key] = value
    answer = checked(client, json.dumps(review).encode(), "annotations", review)
    response = answer.json()["response"]
    if not response["allowed"]:
        assert response["status"]["message"].startswith("annotation sidecar.example/")
        return
    for op in json.loads(base64.b64decode(response["patch"])):
        sidecars = op["value"] if isinstance(op["value"], list) else [op["value"]]
        for sidecar in (s for s in sidecars if isinstance(s, dict) and "command" in s):
            # The program is fixed; the value reaches it only as an argument, the file.
            *program, file, state = sidecar["command"]
            assert program == list(FOLLOW) and state == state_file(sidecar["name"])
            assert file in log_path and "args" not in sidecar


def test_at_least_ten_thousand_generated_requests_were_sent() -> None:
    assert sum(SENT.values()) >= TOTAL_REQUESTS, SENT


def corpus_files() -> list[Path]:
    return sorted(p for p in CORPUS.iterdir() if p.suffix in (".json", ".bin"))


@pytest.mark.parametrize("path", corpus_files(), ids=lambda p: p.name)
def test_inputs_that_once_failed_are_answered_correctly(client: httpx.Client, path: Path) -> None:
    body = path.read_bytes()
    try:
        sent = json.loads(body)
    except (ValueError, UnicodeDecodeError, binascii.Error, RecursionError):
        sent = None
    checked(client, body, "corpus", sent if isinstance(sent, dict) and "request" in sent else None)
