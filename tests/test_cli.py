"""The command line: `review` answers as the server does; settings come from flags and env."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from tests.kube import ADMISSION
from tests.server import RunningServer
from webhook import cli
from webhook.settings import Settings


def sidecar_webhook(
    *args: str, stdin: bytes = b"", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "webhook", *args],
        input=stdin,
        capture_output=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.mark.parametrize("fixture", ["seed-pod", "bad-relative-path", "no-annotation", "seed-pod-v1beta1"])
def test_review_prints_what_the_server_answers(server: RunningServer, fixture: str) -> None:
    path = ADMISSION / f"{fixture}.json"
    printed = sidecar_webhook("review", "-f", str(path))
    assert printed.returncode == 0, printed.stderr
    with server.client() as client:
        answered = client.post(
            "/mutate", content=path.read_bytes(), headers={"content-type": "application/json"}
        )
    assert json.loads(printed.stdout) == answered.json()


def test_review_reads_stdin(server: RunningServer) -> None:
    body = (ADMISSION / "seed-pod.json").read_bytes()
    printed = sidecar_webhook("review", "-f", "-", stdin=body)
    assert printed.returncode == 0
    assert json.loads(printed.stdout)["response"]["patchType"] == "JSONPatch"


def test_review_of_a_malformed_call_exits_1_with_the_http_error() -> None:
    printed = sidecar_webhook("review", "-f", "-", stdin=b'{"apiVersion": "admission.k8s.io/v1"}')
    assert printed.returncode == 1
    assert b"HTTP 400" in printed.stderr and b"request: Field required" in printed.stderr
    assert printed.stdout == b""


def test_review_of_a_missing_file_exits_2(tmp_path: Path) -> None:
    printed = sidecar_webhook("review", "-f", str(tmp_path / "nope.json"))
    assert printed.returncode == 2
    assert b"cannot read" in printed.stderr


def test_invalid_setting_in_the_environment_exits_2_naming_it() -> None:
    printed = sidecar_webhook("review", "-f", "-", env={"SIDECAR_WEBHOOK_SIDECAR_CPU_LIMIT": "lots"})
    assert printed.returncode == 2
    assert b"sidecar_cpu_limit" in printed.stderr and b"not a Kubernetes quantity" in printed.stderr


def test_help_and_version_work_as_a_module_and_a_script() -> None:
    assert b"serve" in sidecar_webhook("--help").stdout
    assert sidecar_webhook("--version").stdout.startswith(b"sidecar-webhook ")
    script = Path(sys.executable).parent / "sidecar-webhook"
    assert subprocess.run([script, "serve", "--help"], capture_output=True, check=True).stdout.count(
        b"--cert-dir"
    )


def test_flags_win_over_environment_which_wins_over_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDECAR_WEBHOOK_PORT", "9443")
    monkeypatch.setenv("SIDECAR_WEBHOOK_HOST", "0.0.0.0")
    args = cli._parser().parse_args(["serve", "--port", "10443"])
    settings = cli._settings(args)
    assert (settings.port, settings.host, settings.cert_dir) == (10443, "0.0.0.0", Path("certs"))
    assert settings == Settings(port=10443, host="0.0.0.0")


def test_settings_are_frozen() -> None:
    with pytest.raises(Exception, match="frozen"):
        Settings().port = 1  # type: ignore[misc]


def test_a_client_ca_file_that_does_not_exist_stops_the_server_before_it_listens(tmp_path: Path) -> None:
    printed = sidecar_webhook("serve", "--client-ca-file", str(tmp_path / "missing.crt"), "--port", "1")
    assert printed.returncode == 2
    assert b"client_ca_file" in printed.stderr and b"does not point to a file" in printed.stderr


DIGEST = "sha256:" + "0123456789abcdef" * 4


def test_the_default_sidecar_image_is_named_with_its_registry() -> None:
    assert Settings().sidecar_image == "docker.io/library/busybox:1.37"


@pytest.mark.parametrize(
    "image",
    [
        "docker.io/library/busybox:1.37",
        f"docker.io/library/busybox:1.37@{DIGEST}",
        f"docker.io/library/busybox@{DIGEST}",
        "registry.example.com:5000/team/log_tools/busy-box:v1.2.3-rc.1",
        "busybox:1.37",  # short names still run, as before: completed by each node's runtime
    ],
)
def test_the_sidecar_image_setting_takes_references_tagged_or_pinned_by_digest(image: str) -> None:
    assert Settings(sidecar_image=image).sidecar_image == image


@pytest.mark.parametrize(
    "image",
    [
        "",
        "docker.io/library/BusyBox:1.37",
        "busybox:1.37 ",
        "busybox:1.37@sha256:abc",
        f"busybox:1.37@md5:{'0' * 32}",
        "busybox:-1",
        "docker.io//busybox",
        "a/" * 130 + "b",
    ],
)
def test_the_sidecar_image_setting_refuses_what_is_not_an_image_reference(image: str) -> None:
    with pytest.raises(ValidationError, match="sidecar_image"):
        Settings(sidecar_image=image)


def test_review_into_a_closed_pipe_stops_quietly() -> None:
    import os

    reader, writer = os.pipe()
    os.close(reader)  # nobody will read what review prints
    with os.fdopen(writer, "wb") as closed_pipe:
        printed = subprocess.run(
            [sys.executable, "-m", "webhook", "review", "-f", str(ADMISSION / "seed-pod.json")],
            stdout=closed_pipe,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )
    assert printed.returncode == 1
    assert b"Traceback" not in printed.stderr
