"""The service's OpenAPI schema: printed by `sidecar-webhook openapi`, with the AdmissionReview models
that the answers really fit; never served over HTTP."""

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Response

from tests.kube import load_review
from tests.test_cli import sidecar_webhook
from webhook.admission import encode, review, warn
from webhook.app import PlainRoute
from webhook.decision import Decision
from webhook.envelope import AdmissionReviewResponse, Refusal
from webhook.settings import Settings

FIXTURES = sorted(p.stem for p in (Path(__file__).parent / "fixtures" / "admission").glob("*.json"))


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    printed = sidecar_webhook("openapi")
    assert printed.returncode == 0, printed.stderr
    document: dict[str, Any] = json.loads(printed.stdout)
    return document


def resolve(schema: dict[str, Any], ref: str) -> dict[str, Any]:
    assert ref.startswith("#/components/schemas/"), ref
    found: dict[str, Any] = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return found


def refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        return {node["$ref"]} if "$ref" in node else set().union(*map(refs, node.values()))
    if isinstance(node, list):
        return set().union(*map(refs, node))
    return set()


def test_openapi_command_prints_the_four_routes_of_the_tls_port(schema: dict[str, Any]) -> None:
    assert schema["openapi"].startswith("3.")
    assert schema["info"]["title"] == "sidecar-webhook"
    methods = {path: set(operations) for path, operations in schema["paths"].items()}
    assert methods == {
        "/mutate": {"post"},
        "/warn": {"post"},
        "/healthz": {"get"},
        "/readyz": {"get"},
    }


def test_warn_takes_a_review_of_any_object_and_answers_like_mutate(schema: dict[str, Any]) -> None:
    warn, mutate = schema["paths"]["/warn"]["post"], schema["paths"]["/mutate"]["post"]
    body = resolve(schema, warn["requestBody"]["content"]["application/json"]["schema"]["$ref"])
    request = resolve(schema, body["properties"]["request"]["$ref"])
    assert {"uid", "kind", "operation"} <= set(request["required"])
    assert {code: answer["content"] for code, answer in warn["responses"].items()} == {
        code: answer["content"] for code, answer in mutate["responses"].items()
    }


def test_every_warn_answer_fits_the_response_model_and_is_allowed_without_patch(settings: Settings) -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "annotations": {"sidecar.example/log-path": "/var/log/app.log"}},
        "spec": {"template": {"metadata": {}, "spec": {"containers": []}}},
    }
    body = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u",
            "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
            "operation": "CREATE",
            "object": deployment,
        },
    }
    reply = warn(json.dumps(body).encode(), settings)
    assert reply.status_code == 200
    answered = AdmissionReviewResponse.model_validate_json(reply.body).response
    assert (answered.allowed, answered.patch, answered.status) == (True, None, None)
    assert answered.warnings and "put it in spec.template.metadata.annotations" in answered.warnings[0]
    assert warn(b"[]", settings).status_code == 400


def test_mutate_takes_an_admission_review_and_answers_one_or_a_refusal(schema: dict[str, Any]) -> None:
    mutate = schema["paths"]["/mutate"]["post"]
    body = mutate["requestBody"]["content"]["application/json"]["schema"]
    request = resolve(schema, body["$ref"])
    assert set(request["required"]) == {"apiVersion", "kind", "request"}
    assert set(request["properties"]["apiVersion"]["enum"]) == {
        "admission.k8s.io/v1",
        "admission.k8s.io/v1beta1",
    }
    admission_request = resolve(schema, request["properties"]["request"]["$ref"])
    assert {"uid", "kind", "operation"} <= set(admission_request["required"])
    answers = {
        code: answer["content"]["application/json"]["schema"] for code, answer in mutate["responses"].items()
    }
    assert resolve(schema, answers.pop("200")["$ref"])["title"] == "AdmissionReviewResponse"
    assert set(answers) == {"400", "403", "408", "413", "415", "503"}
    assert {answer["$ref"] for answer in answers.values()} == {"#/components/schemas/Refusal"}


def test_every_reference_in_the_schema_resolves(schema: dict[str, Any]) -> None:
    found = refs(schema)
    assert "#/components/schemas/Pod" in found
    for ref in found:
        assert resolve(schema, ref)


@pytest.mark.parametrize("fixture", FIXTURES)
def test_every_answer_fits_the_response_model_of_the_schema(settings: Settings, fixture: str) -> None:
    reply = review(json.dumps(load_review(fixture)).encode(), settings)
    assert reply.status_code == 200
    answered = AdmissionReviewResponse.model_validate_json(reply.body)
    assert answered.model_dump(by_alias=True, exclude_none=True) == json.loads(reply.body)


def test_an_internal_error_fits_the_response_model(settings: Settings) -> None:
    failed = Decision(allowed=False, reason="internal-error", message="it broke")
    answered = AdmissionReviewResponse.model_validate_json(
        encode("admission.k8s.io/v1", "u", failed, code=500)
    )
    assert answered.response.status is not None and answered.response.status.reason == "InternalError"


@pytest.mark.parametrize("body", [b"{not json", b"[]", b'{"apiVersion": "admission.k8s.io/v1"}'])
def test_a_broken_call_is_answered_with_the_refusal_model(settings: Settings, body: bytes) -> None:
    reply = review(body, settings)
    assert reply.status_code == 400
    refusal = Refusal.model_validate_json(reply.body)
    assert refusal.error and refusal.details


def test_the_server_does_not_serve_docs_or_the_schema(client: httpx.Client) -> None:
    for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
        assert client.get(path).status_code == 404, path


def test_a_plain_route_refuses_an_endpoint_that_declares_more_than_the_request() -> None:
    app = FastAPI()
    app.router.route_class = PlainRoute
    with pytest.raises(TypeError, match="takes only the Request"):

        @app.get("/x")
        async def with_a_query(limit: int) -> Response:
            return Response(str(limit))
