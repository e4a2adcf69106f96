"""The real server process over real TLS, called the way the API server calls it."""

import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.kube import apply, container, load_review, patch_ops
from tests.server import RunningServer
from webhook.app import MAX_BODY_BYTES
from webhook.sidecar import follow_command, state_file

JSON = {"content-type": "application/json"}


def post_review(client: httpx.Client, review: dict[str, Any]) -> dict[str, Any]:
    answer = client.post("/mutate", content=json.dumps(review), headers=JSON)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    body: dict[str, Any] = answer.json()
    return body


@pytest.mark.parametrize(
    ("fixture", "api_version"),
    [
        ("seed-pod", "admission.k8s.io/v1"),
        ("seed-pod-v1beta1", "admission.k8s.io/v1beta1"),
        ("dry-run", "admission.k8s.io/v1"),
    ],
)
def test_review_round_trip_answers_in_the_version_it_was_sent(
    client: httpx.Client, fixture: str, api_version: str
) -> None:
    recorded = load_review(fixture)
    answered = post_review(client, recorded)
    assert answered["apiVersion"] == api_version
    assert answered["kind"] == "AdmissionReview"
    response = answered["response"]
    assert response["uid"] == recorded["request"]["uid"]
    assert response["allowed"] is True
    pod = apply(recorded["request"]["object"], patch_ops(response))
    assert container(pod, "log-app")["command"] == follow_command("/var/log/app.log", state_file("log-app"))


def test_bad_annotation_is_http_200_with_allowed_false_and_a_message(client: httpx.Client) -> None:
    response = post_review(client, load_review("bad-relative-path"))["response"]
    assert response["allowed"] is False
    assert response["status"]["code"] == 400
    assert "sidecar.example/log-path" in response["status"]["message"]


def test_pod_without_annotation_gets_no_patch(client: httpx.Client) -> None:
    response = post_review(client, load_review("no-annotation"))["response"]
    assert response == {"uid": load_review("no-annotation")["request"]["uid"], "allowed": True}


def without(review: dict[str, Any], *path: str) -> dict[str, Any]:
    review = json.loads(json.dumps(review))
    target = review
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return review


SEED = load_review("seed-pod")


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"{not json", "not a valid AdmissionReview"),
        (b"", "not a valid AdmissionReview"),
        (b"[]", "not a valid AdmissionReview"),
        (b"\xff\xfe", "not a valid AdmissionReview"),
        (json.dumps(without(SEED, "request")).encode(), "request: Field required"),
        (json.dumps(without(SEED, "request", "uid")).encode(), "request.uid: Field required"),
        (json.dumps({**SEED, "apiVersion": "admission.k8s.io/v2"}).encode(), "apiVersion"),
        (json.dumps({**SEED, "request": {**SEED["request"], "uid": 7}}).encode(), "request.uid"),
        (
            json.dumps(
                {**SEED, "request": {**SEED["request"], "object": {"spec": {"containers": {}}}}}
            ).encode(),
            "request.object is not a valid Pod",
        ),
    ],
)
def test_malformed_call_gets_400_with_a_json_body_saying_what_is_wrong(
    client: httpx.Client, body: bytes, says: str
) -> None:
    answer = client.post("/mutate", content=body, headers=JSON)
    assert answer.status_code == 400
    error = answer.json()
    assert says in json.dumps(error)
    assert error["error"] and isinstance(error["details"], list)


@pytest.mark.parametrize(
    "headers", [{"content-type": "text/plain"}, {"content-type": "application/yaml"}, {}]
)
def test_content_type_other_than_json_gets_415(client: httpx.Client, headers: dict[str, str]) -> None:
    answer = client.post("/mutate", content=json.dumps(SEED), headers=headers)
    assert answer.status_code == 415
    assert "application/json" in answer.json()["error"]


def test_json_content_type_with_charset_is_accepted(client: httpx.Client) -> None:
    answer = client.post(
        "/mutate", content=json.dumps(SEED), headers={"content-type": "application/json; charset=utf-8"}
    )
    assert answer.status_code == 200


def test_declared_body_over_the_cap_gets_413_before_the_body_is_sent(server: RunningServer) -> None:
    head = (
        f"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"Content-Length: {MAX_BODY_BYTES + 1}\r\n\r\n"
    ).encode()
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
        server.tls_context().wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(head)  # and not one byte of the body
        answer = read_response(tls)
    assert answer.startswith("HTTP/1.1 413")
    assert '"error"' in answer


def read_response(sock: ssl.SSLSocket) -> str:
    """One whole HTTP/1.1 response with a Content-Length, read off a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(
            line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
        )
    )
    while len(body) < length:
        body += sock.recv(65536)
    return (head + b"\r\n\r\n" + body).decode()


def test_chunked_body_over_the_cap_gets_413(client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(MAX_BODY_BYTES // 65536 + 2):
            yield b" " * 65536

    answer = client.post("/mutate", content=chunks(), headers=JSON)
    assert answer.status_code == 413
    assert "larger than" in answer.json()["error"]


def test_other_methods_and_paths_get_json_4xx(client: httpx.Client) -> None:
    assert client.get("/mutate").status_code == 405
    missing = client.get("/nothing-here")
    assert missing.status_code == 404 and missing.json()


def test_health_and_readiness(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}


def test_readiness_is_exported_as_a_metric_for_the_no_ready_replica_alert(server: RunningServer) -> None:
    assert "\nsidecar_webhook_ready 1.0\n" in server.metrics()


def test_metrics_count_reviews_by_decision_and_reason_with_millisecond_buckets(
    server: RunningServer, client: httpx.Client
) -> None:
    post_review(client, load_review("seed-pod"))
    post_review(client, load_review("bad-relative-path"))
    client.post("/mutate", content=b"nope", headers=JSON)
    text = server.metrics()
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert samples['sidecar_webhook_reviews_total{decision="patched",reason="injected"}'] >= 1
    assert samples['sidecar_webhook_reviews_total{decision="denied",reason="invalid-annotation"}'] >= 1
    assert samples['sidecar_webhook_refused_calls_total{status="400"}'] >= 1
    buckets = [key for key in samples if key.startswith("sidecar_webhook_review_duration_seconds_bucket")]
    assert [b.split('le="')[1].rstrip('"}') for b in buckets] == [
        "0.001",
        "0.0025",
        "0.005",
        "0.01",
        "0.025",
        "0.05",
        "0.1",
        "0.25",
        "1.0",
        "+Inf",
    ]


def test_metrics_are_served_on_their_own_plain_http_port_and_not_on_the_tls_port(
    server: RunningServer, client: httpx.Client
) -> None:
    # Whoever reaches the TLS port (every pod, in a cluster) can't read the metrics there.
    assert client.get("/metrics").status_code == 404
    metrics = f"http://127.0.0.1:{server.metrics_port}"
    assert httpx.get(f"{metrics}/metrics").headers["content-type"].startswith("text/plain")
    # And the metrics port serves nothing else.
    assert httpx.post(f"{metrics}/mutate", json=load_review("seed-pod")).status_code == 404
    assert httpx.get(f"{metrics}/healthz").status_code == 404
    refused = httpx.post(f"{metrics}/metrics")
    assert (refused.status_code, refused.headers["allow"]) == (405, "GET")


def test_each_review_is_one_json_log_line_with_uid_pod_decision_and_latency(
    client: httpx.Client, server: RunningServer
) -> None:
    recorded = load_review("generate-name")
    post_review(client, recorded)
    lines = [json.loads(line) for line in server.log().splitlines()]
    (entry,) = [e for e in lines if e.get("uid") == recorded["request"]["uid"]]
    assert entry["namespace"] == "default"
    assert entry["pod"] == recorded["request"]["object"]["metadata"]["generateName"]
    assert (entry["decision"], entry["reason"]) == ("patched", "injected")
    assert entry["latency_ms"] >= 0


def test_plain_http_on_the_port_is_not_served(server: RunningServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        raw.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        try:
            answer = raw.recv(65536)
        except ConnectionResetError:
            answer = b""
    assert b"200 OK" not in answer and b'"ok"' not in answer


def test_server_certificate_is_for_localhost_and_verified_by_the_ca(server: RunningServer) -> None:
    context = server.tls_context()
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    wrong_ca = ssl.create_default_context()
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        wrong_ca.wrap_socket(raw, server_hostname="localhost")


def test_serve_created_the_development_certificate_and_said_so(server: RunningServer) -> None:
    assert {p.name for p in Path(server.cert_dir).iterdir()} >= {"ca.crt", "ca.key", "tls.crt", "tls.key"}
    assert "created a development CA" in server.log()
