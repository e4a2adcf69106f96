"""A read-only, validated view of the Pod fields the engine reads.

The view is never serialised back: the patch is built from it as `add` operations against the
object the API server sent, so fields this view doesn't know (newer API fields, anything a
model would drop) can't be lost. Unknown fields are ignored; known fields must have the type
the API server gives them, so a malformed object is refused with the path of the bad field.
A field is None when the object doesn't have it, which the patch needs to know: an absent
array is added whole, a present one is appended to.
"""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _View(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True, populate_by_name=True)


class VolumeMount(_View):
    name: str
    mount_path: str = Field(alias="mountPath")
    sub_path: str = Field("", alias="subPath")
    sub_path_expr: str = Field("", alias="subPathExpr")
    read_only: bool = Field(False, alias="readOnly")
    # Disabled, IfPossible or Enabled; None when not said, which Kubernetes reads as Disabled.
    recursive_read_only: str | None = Field(None, alias="recursiveReadOnly")


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
    # The sources whose files are API objects: a Secret's or a ConfigMap's data, the pod's own fields,
    # ServiceAccount tokens (projected). Only whether one is there is read, so they are Any: nothing of
    # them is checked or copied (typed as dicts, they made reading a pod with two token volumes 2-3 µs
    # slower, against 5.5 µs for the whole pod).
    secret: Any = None
    config_map: Any = Field(None, alias="configMap")
    projected: Any = None
    downward_api: Any = Field(None, alias="downwardAPI")

    @property
    def api_object_source(self) -> str | None:
        """The source's field name (secret, configMap, projected, downwardAPI) if its files are API
        objects, else None."""
        sources = {
            "secret": self.secret,
            "configMap": self.config_map,
            "projected": self.projected,
            "downwardAPI": self.downward_api,
        }
        return next((field for field, source in sources.items() if source is not None), None)


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
