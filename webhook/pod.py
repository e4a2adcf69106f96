"""A read-only, validated view of the Pod fields the engine reads.

The view is never serialised back: the patch is built from it as `add` operations against the
object the API server sent, so fields this view doesn't know (newer API fields, anything a
model would drop) can't be lost. Unknown fields are ignored; known fields must have the type
the API server gives them, so a malformed object is refused with the path of the bad field.
A field is None when the object doesn't have it, which the patch needs to know: an absent
array is added whole, a present one is appended to.
"""

from pydantic import BaseModel, ConfigDict, Field


class _View(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True, populate_by_name=True)


class VolumeMount(_View):
    name: str
    mount_path: str = Field(alias="mountPath")
    sub_path: str = Field("", alias="subPath")
    sub_path_expr: str = Field("", alias="subPathExpr")


class SecurityContext(_View):
    """The user fields of a container's or the pod's securityContext (a container's win)."""

    run_as_user: int | None = Field(None, alias="runAsUser")
    run_as_group: int | None = Field(None, alias="runAsGroup")


class Container(_View):
    name: str
    command: list[str] | None = None
    volume_mounts: list[VolumeMount] | None = Field(None, alias="volumeMounts")
    security_context: SecurityContext | None = Field(None, alias="securityContext")


class Volume(_View):
    name: str


class Metadata(_View):
    name: str | None = None
    generate_name: str | None = Field(None, alias="generateName")
    annotations: dict[str, str] | None = None


class PodOS(_View):
    name: str = ""


class PodSpec(_View):
    containers: list[Container] | None = None
    init_containers: list[Container] | None = Field(None, alias="initContainers")
    ephemeral_containers: list[Container] | None = Field(None, alias="ephemeralContainers")
    volumes: list[Volume] | None = None
    restart_policy: str | None = Field(None, alias="restartPolicy")
    os: PodOS | None = None
    automount_service_account_token: bool | None = Field(None, alias="automountServiceAccountToken")
    security_context: SecurityContext | None = Field(None, alias="securityContext")


class Pod(_View):
    metadata: Metadata = Metadata()
    spec: PodSpec = PodSpec()
