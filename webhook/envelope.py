"""The AdmissionReview envelope, typed; the object inside stays the raw dict the API server sent."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

V1 = "admission.k8s.io/v1"
V1BETA1 = "admission.k8s.io/v1beta1"


class _Envelope(BaseModel):
    # strict: a wrong type is an error, never coerced; unknown fields are the API server's business.
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True, populate_by_name=True)


class GroupVersionKind(_Envelope):
    group: str = ""
    version: str = ""
    kind: str


class AdmissionRequest(_Envelope):
    uid: str = Field(min_length=1)
    kind: GroupVersionKind
    operation: str
    namespace: str | None = None
    name: str | None = None
    sub_resource: str | None = Field(None, alias="subResource")
    dry_run: bool | None = Field(None, alias="dryRun")
    object: dict[str, Any] | None = None

    @property
    def pod_name(self) -> str | None:
        """Who the call is about, for logs and recordings: the request's name, else the object's
        name or generateName (a pod created by a ReplicaSet has no name yet)."""
        metadata = (self.object or {}).get("metadata")
        if not isinstance(metadata, dict):
            metadata = {}
        name = self.name or metadata.get("name") or metadata.get("generateName")
        return name if isinstance(name, str) else None


class AdmissionReview(_Envelope):
    api_version: Literal["admission.k8s.io/v1", "admission.k8s.io/v1beta1"] = Field(alias="apiVersion")
    kind: Literal["AdmissionReview"]
    request: AdmissionRequest


def error_details(error: ValidationError, limit: int = 10) -> list[str]:
    """One line per problem, `where: what`, e.g. `request.uid: Field required`."""
    return [
        f"{'.'.join(str(p) for p in e['loc']) or '(body)'}: {e['msg']}"
        for e in error.errors(include_url=False)[:limit]
    ]
