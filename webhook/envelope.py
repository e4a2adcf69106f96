"""The AdmissionReview envelope, typed: the review as it comes (its object read through the Pod view),
the review as it goes back, and the body of a refused call.

Validating the JSON straight into the view skips every field the engine doesn't read (a pod's env
values, managedFields, ...) without building Python objects for them: for a 1 MiB pod that is a
third of the time of building the whole object. Nothing is lost, since the patch is built from
what the view read and the object is never written back (webhook/pod.py).
"""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from webhook.pod import Pod


class _Envelope(BaseModel):
    # strict: a wrong type is an error, never coerced; unknown fields are the API server's business.
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True, populate_by_name=True)


class GroupVersionKind(_Envelope):
    group: str = ""
    version: str = ""
    kind: str


class _Request(_Envelope):
    uid: str = Field(min_length=1)
    kind: GroupVersionKind
    operation: str
    namespace: str | None = None
    name: str | None = None
    sub_resource: str | None = Field(None, alias="subResource")
    dry_run: bool | None = Field(None, alias="dryRun")


class AdmissionRequest(_Request):
    object: Pod | None = None

    @property
    def pod_name(self) -> str | None:
        """Who the call is about, for logs and recordings: the request's name, else the object's
        name or generateName (a pod created by a ReplicaSet has no name yet)."""
        metadata = self.object.metadata if self.object is not None else None
        return self.name or (metadata and (metadata.name or metadata.generate_name)) or None


class AdmissionReview(_Envelope):
    api_version: Literal["admission.k8s.io/v1", "admission.k8s.io/v1beta1"] = Field(alias="apiVersion")
    kind: Literal["AdmissionReview"]
    request: AdmissionRequest


class ObjectRequest(_Request):
    """A request about any object, kept as the API server sent it: what /warn reads (a workload is
    not a Pod, and its pod template is what matters)."""

    object: dict[str, Any] | None = None

    @property
    def pod_name(self) -> str | None:
        """Who the call is about, for logs: the request's name, else the object's."""
        metadata = (self.object or {}).get("metadata")
        named = metadata.get("name") or metadata.get("generateName") if isinstance(metadata, dict) else None
        return self.name or (named if isinstance(named, str) else None)


class ObjectReview(_Envelope):
    api_version: Literal["admission.k8s.io/v1", "admission.k8s.io/v1beta1"] = Field(alias="apiVersion")
    kind: Literal["AdmissionReview"]
    request: ObjectRequest


class _Answer(_Envelope):
    # What we send: every field is ours, so one we don't know is a mistake in the model or the encoder.
    model_config = ConfigDict(extra="forbid")


class ResponseStatus(_Answer):
    code: int = Field(description="400 for a denied pod, 500 for an internal error")
    reason: Literal["BadRequest", "InternalError"]
    message: str = Field(description="what is wrong, naming the annotation, its value and what is expected")


class AdmissionResponse(_Answer):
    uid: str = Field(description="the request's uid")
    allowed: bool
    patch_type: Literal["JSONPatch"] | None = Field(None, alias="patchType")
    patch: str | None = Field(None, description="base64 of a JSONPatch of add operations only")
    status: ResponseStatus | None = Field(None, description="only when not allowed")
    warnings: list[str] | None = None


class AdmissionReviewResponse(_Answer):
    """What /mutate answers, with HTTP 200: the review in the version it came in, with a response.
    Encoded by webhook/admission.py without this model (tests check that it fits)."""

    api_version: Literal["admission.k8s.io/v1", "admission.k8s.io/v1beta1"] = Field(alias="apiVersion")
    kind: Literal["AdmissionReview"]
    response: AdmissionResponse


class Refusal(_Answer):
    """The body of a broken call's HTTP 4xx."""

    error: str
    details: list[str] = Field(description="one line per problem, `where: what`")


def error_details(error: ValidationError, limit: int = 10) -> list[str]:
    """One line per problem, `where: what`, e.g. `request.uid: Field required`."""
    return [
        f"{'.'.join(str(p) for p in e['loc']) or '(body)'}: {e['msg']}"
        for e in error.errors(include_url=False)[:limit]
    ]
