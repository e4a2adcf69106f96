"""What the end-to-end tests do to a real cluster: kubectl calls, waits on conditions, the install script."""

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "deploy" / "install.sh"
NAMESPACE = "sidecar-webhook"
POLL_SECONDS = 0.2
# What the suite measured (seconds, or counts), printed at the end: measured, never asserted.
MEASURED: dict[str, float] = {}

T = TypeVar("T")


class KubectlError(AssertionError):
    """kubectl failed: the message has the call and what it printed."""


def kubectl(*args: str, stdin: str | None = None, check: bool = True, timeout: float = 120) -> str:
    result = subprocess.run(
        ["kubectl", *args], input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise KubectlError(f"kubectl {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result.stdout


def get(*args: str) -> Any:
    return json.loads(kubectl("get", *args, "-o", "json"))


def apply(manifest: dict[str, Any], namespace: str) -> None:
    kubectl("-n", namespace, "apply", "-f", "-", stdin=json.dumps(manifest))


def create(manifest: dict[str, Any], namespace: str) -> None:
    """`kubectl create`: unlike apply, it takes a generateName."""
    kubectl("-n", namespace, "create", "-f", "-", stdin=json.dumps(manifest))


def wait_for(condition: Callable[[], T | None], what: str, timeout: float = 120) -> T:
    """Poll `condition` until it returns something other than None or False; fail after `timeout` saying
    what was awaited and what the condition last raised."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
        except KubectlError as error:
            value, last_error = None, error
        if value is not None and value is not False:
            return value
        time.sleep(POLL_SECONDS)
    raise AssertionError(
        f"timed out after {timeout} s waiting for {what}" + (f": {last_error}" if last_error else "")
    )


def install(command: str) -> None:
    """`bash deploy/install.sh COMMAND`, as deploy/README.md says; its output goes to the test's output."""
    result = subprocess.run(["bash", str(INSTALL), command], capture_output=True, text=True, timeout=900)
    print(result.stdout, result.stderr, sep="\n")
    if result.returncode != 0:
        raise AssertionError(f"deploy/install.sh {command} exited {result.returncode}:\n{result.stderr}")


def container_states(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each container's (init containers included) current state, by name."""
    status = pod.get("status", {})
    statuses = [*status.get("initContainerStatuses", []), *status.get("containerStatuses", [])]
    return {s["name"]: s.get("state", {}) for s in statuses}


def logs(namespace: str, pod: str, container: str) -> list[str]:
    return kubectl("-n", namespace, "logs", pod, "-c", container).splitlines()


def webhook_pods(namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = get(
        "-n",
        namespace,
        "pods",
        "-l",
        "app.kubernetes.io/name=sidecar-webhook,app.kubernetes.io/component=webhook",
    )["items"]
    return items
