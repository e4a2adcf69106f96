"""The one Settings object: built once by the entry point from flags and SIDECAR_WEBHOOK_* variables."""

from pathlib import Path
from typing import Annotated, Self

from pydantic import AfterValidator, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from webhook.quantity import parse_quantity

_RESOURCES = ("cpu", "memory")


# Checked at startup: a bad quantity would make the API server reject every pod we inject.
def _quantity(value: str) -> str:
    quantity = parse_quantity(value.strip())
    if quantity.value < 0:
        raise ValueError(f"{value!r} is negative")
    return quantity.text


def _absolute_dirs(value: frozenset[str]) -> frozenset[str]:
    for directory in value:
        if not directory.startswith("/"):
            raise ValueError(f"{directory!r} is not an absolute directory")
    return frozenset(d.rstrip("/") or "/" for d in value)


Quantity = Annotated[str, AfterValidator(_quantity)]
Directories = Annotated[frozenset[str], AfterValidator(_absolute_dirs)]


class Settings(BaseSettings):
    """Everything an operator can set. Frozen: the engine reads it, nothing changes it."""

    model_config = SettingsConfigDict(env_prefix="SIDECAR_WEBHOOK_", frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8443, ge=1, le=65535)
    cert_dir: Path = Path("certs")
    log_level: str = Field("info", pattern="^(debug|info|warning|error)$")
    # Seconds to keep serving after SIGTERM with /readyz at 503, so load balancers stop sending first.
    # 0 in the Deployment, whose preStop sleep does that before SIGTERM is sent.
    shutdown_delay: float = Field(0.0, ge=0, le=60)
    # Off by default: a recording holds the whole pod, env values included.
    record_dir: Path | None = None

    sidecar_image: str = Field("busybox:1.37", min_length=1)
    # Small but real: tail needs almost nothing, and a namespace with a ResourceQuota
    # rejects containers without requests and limits.
    sidecar_cpu_request: Quantity = "5m"
    sidecar_memory_request: Quantity = "8Mi"
    sidecar_cpu_limit: Quantity = "50m"
    sidecar_memory_limit: Quantity = "32Mi"
    # The most a pod may ask for its sidecar through the sidecar.example/*-request and *-limit
    # annotations: a tail needs far less, so this is a ceiling against typos ("1" for "1m"), not a budget.
    sidecar_cpu_max: Quantity = "1"
    sidecar_memory_max: Quantity = "512Mi"

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
