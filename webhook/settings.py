"""The one Settings object: built once by the entry point from flags and SIDECAR_WEBHOOK_* variables."""

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import AfterValidator, BeforeValidator, Field, FilePath, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from webhook.quantity import parse_quantity

_RESOURCES = ("cpu", "memory")


# Checked at startup: a bad quantity would make the API server reject every pod we inject.
def _quantity(value: str) -> str:
    quantity = parse_quantity(value.strip())
    if quantity.value < 0:
        raise ValueError(f"{value!r} is negative")
    return quantity.text


def _items(value: object) -> object:
    """A list given as text (a variable): JSON, as pydantic-settings reads lists, or the values
    separated by commas, as people write them (`SIDECAR_WEBHOOK_EXTRA_HOSTS=a.example,10.0.0.1`)."""
    if not isinstance(value, str):
        return value
    if value.lstrip().startswith("["):
        return json.loads(value)  # a JSON error is a ValueError: reported as the setting's error
    return [item.strip() for item in value.split(",") if item.strip()]


def _absolute_dirs(value: frozenset[str]) -> frozenset[str]:
    for directory in value:
        if not directory.startswith("/"):
            raise ValueError(f"{directory!r} is not an absolute directory")
    return frozenset(d.rstrip("/") or "/" for d in value)


def _seconds(value: object) -> object:
    """A number of seconds given as text (a flag, a variable) is a duration too, not only P1D."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be longer than 0 seconds")
    return value


# An image reference as container runtimes parse it (the grammar of distribution/reference, which
# containerd and CRI-O use): [registry[:port]/]path[:tag][@digest], the path lowercase.
_HOST_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_REGISTRY = rf"(?:{_HOST_LABEL}(?:\.{_HOST_LABEL})*(?::[0-9]+)?/)"
_PATH = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
_IMAGE = re.compile(
    rf"(?P<name>{_REGISTRY}?{_PATH})(?::[\w][\w.-]{{0,127}})?(?:@(?:sha256:[a-f0-9]{{64}}|sha512:[a-f0-9]{{128}}))?",
    re.ASCII,
)
_NAME_MAX = 255


def _image_reference(value: str) -> str:
    match = _IMAGE.fullmatch(value)
    if match is None:
        raise ValueError(
            f"{value!r} is not an image reference; expected REGISTRY/PATH:TAG, optionally @sha256:DIGEST, "
            "e.g. docker.io/library/busybox:1.37"
        )
    if len(match["name"]) > _NAME_MAX:
        raise ValueError(f"{value!r} has a name longer than {_NAME_MAX} characters")
    return value


Quantity = Annotated[str, AfterValidator(_quantity)]
ImageReference = Annotated[str, AfterValidator(_image_reference)]
Duration = Annotated[timedelta, BeforeValidator(_seconds), AfterValidator(_positive)]
# NoDecode: the text of the variable reaches _items as it is, instead of failing pydantic-settings'
# JSON decoding (a 40-line SettingsError for `/data`).
Directories = Annotated[frozenset[str], NoDecode, BeforeValidator(_items), AfterValidator(_absolute_dirs)]
Names = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_items)]


class Settings(BaseSettings):
    """Everything an operator can set. Frozen: the engine reads it, nothing changes it."""

    model_config = SettingsConfigDict(env_prefix="SIDECAR_WEBHOOK_", frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8443, ge=1, le=65535)
    # Prometheus metrics over plain HTTP on a port of their own, so that the TLS port faces only the API
    # server and the probes (whatever reaches a port can call it). 0: no metrics port.
    metrics_port: int = Field(9090, ge=0, le=65535)
    cert_dir: Path = Path("certs")
    log_level: str = Field("info", pattern="^(debug|info|warning|error)$")
    # Seconds to keep serving after SIGTERM with /readyz at 503, so load balancers stop sending first.
    # 0 in the Deployment, whose preStop sleep does that before SIGTERM is sent.
    shutdown_delay: float = Field(0.0, ge=0, le=60)
    # Off by default: a recording holds the whole pod, env values included.
    record_dir: Path | None = None
    # A PEM bundle of the CAs whose client certificates may call /mutate (the API server's, set in its
    # AdmissionConfiguration). None: any client that reaches the port may. Read at startup.
    client_ca_file: FilePath | None = None

    # Where the serving certificate comes from. "files": tls.crt and tls.key in cert_dir, made by
    # someone else (`certs create`, cert-manager) and reloaded when they change. "cluster": the server
    # keeps a CA and the certificate in a Secret, writes the caBundle of the webhook configuration and
    # rotates both (webhook/cluster_certs.py); cert_dir is then where it puts the certificate it serves.
    certificates: Literal["files", "cluster"] = "files"
    secret_namespace: str = Field("sidecar-webhook", min_length=1)
    secret_name: str = Field("sidecar-webhook-certs", min_length=1)
    webhook_configuration: str = Field("sidecar-webhook", min_length=1)
    # The serving certificate covers the Service's DNS names, then these (IP addresses as IP SANs).
    service_name: str = Field("sidecar-webhook", min_length=1)
    service_namespace: str = Field("sidecar-webhook", min_length=1)
    extra_hosts: Names = ()
    # Durations: seconds, or ISO 8601 (P730D). A CA of two years renewed in its last third leaves
    # eight months to notice a rotation that cannot finish; a serving certificate of 90 days renewed
    # 30 days before expiry rotates often enough that rotating is known to work (as cert-manager does).
    ca_validity: Duration = timedelta(days=730)
    ca_renew_before: Duration = timedelta(days=243)
    serving_validity: Duration = timedelta(days=90)
    serving_renew_before: Duration = timedelta(days=30)
    # How often the Secret and the caBundle are checked: the longest a drifted caBundle stays broken.
    check_interval: Duration = timedelta(seconds=30)

    # Fully qualified: a short name (busybox:1.37) is resolved by each node's runtime and its
    # configuration, which may search other registries first (CRI-O's, podman's registries.conf) or
    # refuse it. A digest (docker.io/library/busybox:1.37@sha256:...) pins the very image; the tag
    # beside it is then for readers only.
    sidecar_image: ImageReference = "docker.io/library/busybox:1.37"
    # Small but real: the follower needs almost nothing, and a namespace with a ResourceQuota
    # rejects containers without requests and limits.
    sidecar_cpu_request: Quantity = "5m"
    sidecar_memory_request: Quantity = "8Mi"
    sidecar_cpu_limit: Quantity = "50m"
    sidecar_memory_limit: Quantity = "32Mi"
    # The most a pod may ask for its sidecar through the sidecar.example/*-request and *-limit
    # annotations: the follower needs far less, so this is a ceiling against typos ("1" for "1m"), not a
    # budget.
    sidecar_cpu_max: Quantity = "1"
    sidecar_memory_max: Quantity = "512Mi"

    # The sizeLimit of the log volume (an emptyDir) the webhook adds, for pods without the
    # sidecar.example/log-volume-size annotation: "" for none, so the volume takes what the node's disk
    # has, bounded only by kubelet's node-pressure eviction (docs/logs.md). And the most a pod may ask
    # for, a ceiling against typos ("500Gi" for "500Mi") more than a budget.
    log_volume_size: Annotated[str, AfterValidator(lambda v: v and _quantity(v))] = ""
    log_volume_size_max: Quantity = "10Gi"

    # A log directory here would get an emptyDir mounted over it, hiding what the image ships there.
    protected_dirs: Directories = frozenset(
        {"/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/proc", "/sbin", "/sys", "/usr", "/var"}
    )
    # Kernel filesystems: the runtime refuses (or breaks the container with) any mount below them.
    protected_trees: Directories = frozenset({"/dev", "/proc", "/sys"})

    @model_validator(mode="after")
    def _requests_within_limits_within_maxima(self) -> Self:
        for resource in _RESOURCES:
            request, limit, maximum = (
                getattr(self, f"sidecar_{resource}_{kind}") for kind in ("request", "limit", "max")
            )
            values = [parse_quantity(q).value for q in (request, limit, maximum)]
            if values[1] == 0:
                raise ValueError(f"sidecar_{resource}_limit is 0, which Kubernetes reads as no limit")
            if not values[0] <= values[1] <= values[2]:
                raise ValueError(
                    f"sidecar_{resource}_request {request}, _limit {limit} and _max {maximum} "
                    "must be in that order, each at most the next"
                )
        return self

    @model_validator(mode="after")
    def _log_volume_size_within_maximum(self) -> Self:
        if self.log_volume_size:
            size, maximum = (
                parse_quantity(q).value for q in (self.log_volume_size, self.log_volume_size_max)
            )
            if not 0 < size <= maximum:
                raise ValueError(
                    f"log_volume_size {self.log_volume_size} must be above 0 and at most "
                    f"log_volume_size_max {self.log_volume_size_max}"
                )
        return self

    @model_validator(mode="after")
    def _renewal_inside_validity(self) -> Self:
        for what in ("ca", "serving"):
            if getattr(self, f"{what}_renew_before") >= getattr(self, f"{what}_validity"):
                raise ValueError(f"{what}_renew_before must be shorter than {what}_validity")
        # A serving certificate never outlives its CA, so it must fit in the CA's renewal window,
        # which is when the next CA takes over.
        if self.serving_validity > self.ca_renew_before:
            raise ValueError("serving_validity must not be longer than ca_renew_before")
        return self
