"""The command line: `review` answers as the server does; settings come from flags and env."""

import argparse
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pydantic import ValidationError

from tests.kube import ADMISSION, apply, load_review, patch_ops
from tests.server import RunningServer, free_port
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


def test_review_patch_prints_the_decoded_patch_that_gives_the_pod_its_sidecar() -> None:
    path = str(ADMISSION / "seed-pod.json")
    printed = sidecar_webhook("review", "--patch", "-f", path)
    assert printed.returncode == 0, printed.stderr
    assert printed.stderr == b""
    patch = json.loads(printed.stdout)
    assert patch == patch_ops(json.loads(sidecar_webhook("review", "-f", path).stdout)["response"])
    pod = apply(load_review("seed-pod")["request"]["object"], patch)
    (sidecar,) = [c for c in pod["spec"]["containers"] if c["name"] == "log-app"]
    assert sidecar["command"][-2:] == ["/var/log/app.log", "/run/log-sidecar/log-app"]  # follows the file
    assert pod["metadata"]["annotations"]["sidecar.example/injected"] == "log-app"


def test_review_patch_of_a_pod_without_the_annotation_prints_an_empty_list() -> None:
    printed = sidecar_webhook("review", "--patch", "-f", str(ADMISSION / "no-annotation.json"))
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == b"[]\n"


def test_review_patch_of_a_denied_pod_exits_1_with_the_message_on_stderr() -> None:
    printed = sidecar_webhook("review", "--patch", "-f", str(ADMISSION / "bad-relative-path.json"))
    assert printed.returncode == 1
    assert printed.stdout == b""
    assert printed.stderr.decode() == (
        'sidecar-webhook review: denied, so no patch: annotation sidecar.example/log-path: "logs/app.log" is '
        "not an absolute path; expected one or more absolute file paths separated by commas, e.g. "
        '"/var/log/app.log"\n'
    )


def test_review_patch_prints_the_warnings_on_stderr_and_the_patch_alone_on_stdout() -> None:
    printed = sidecar_webhook("review", "--patch", "-f", str(ADMISSION / "different-users.json"))
    assert printed.returncode == 0, printed.stderr
    assert printed.stderr.startswith(b"sidecar-webhook review: warning: the log sidecar runs as uid 65534")
    assert {op["op"] for op in json.loads(printed.stdout)} == {"add"}


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


def one_line_error(printed: subprocess.CompletedProcess[bytes]) -> str:
    """The single line a set-up mistake prints on stderr, after checking the exit status and that it is
    the only line, with no traceback and nothing on stdout."""
    assert printed.returncode == 2, printed.stderr
    error = printed.stderr.decode()
    assert "Traceback" not in error
    assert error.count("\n") == 1 and error.endswith("\n"), error
    assert printed.stdout == b""
    return error


@contextmanager
def unwritable_directory(path: Path) -> Iterator[Path]:
    """A directory nobody can create files in, root included: immutable (chattr +i) where the file
    system and our privileges allow it, else read-only by its mode (which root would bypass)."""
    path.mkdir()
    immutable = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False).returncode == 0
    if not immutable:
        path.chmod(0o555)
        if os.geteuid() == 0:
            pytest.skip("root without chattr +i can write any directory")
    try:
        yield path
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], check=True)


def test_serve_into_a_cert_dir_it_cannot_write_says_so_in_one_line(tmp_path: Path) -> None:
    with unwritable_directory(tmp_path / "certs") as certs:
        error = one_line_error(sidecar_webhook("serve", "--cert-dir", str(certs), "--port", str(free_port())))
    assert error.startswith(f"sidecar-webhook serve: cannot create a development certificate in {certs}: ")
    assert "--cert-dir or SIDECAR_WEBHOOK_CERT_DIR" in error and "certs create" in error


def test_serve_with_a_cert_dir_that_is_a_file_says_so_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "certs").write_text("not a directory")
    error = one_line_error(
        sidecar_webhook("serve", "--cert-dir", str(tmp_path / "certs"), "--port", str(free_port()))
    )
    assert "it is a file, not a directory" in error and "--cert-dir or SIDECAR_WEBHOOK_CERT_DIR" in error
    beneath = one_line_error(
        sidecar_webhook("serve", "--cert-dir", str(tmp_path / "certs" / "x"), "--port", str(free_port()))
    )
    assert "a part of the path is a file, not a directory" in beneath


@pytest.mark.parametrize("key", ["a directory", "not PEM"])
def test_serve_with_a_key_it_cannot_read_says_so_in_one_line(tmp_path: Path, key: str) -> None:
    certs = tmp_path / "certs"
    assert (
        sidecar_webhook(
            "certs", "create", "--service", "s", "--namespace", "n", "--out", str(certs)
        ).returncode
        == 0
    )
    (certs / "tls.key").unlink()
    if key == "a directory":  # unreadable as a file, for root too
        (certs / "tls.key").mkdir()
    else:
        (certs / "tls.key").write_text("-----BEGIN NOTHING-----\n")
    error = one_line_error(sidecar_webhook("serve", "--cert-dir", str(certs), "--port", str(free_port())))
    assert error.startswith(f"sidecar-webhook serve: cannot serve {certs}/tls.crt with {certs}/tls.key: ")
    assert (
        "Is a directory" if key == "a directory" else "not a PEM certificate and its private key"
    ) in error
    assert "sidecar-webhook certs create --out DIR" in error and "--cert-dir" in error


def test_serve_on_a_port_in_use_names_the_port_and_how_to_pick_another(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        error = one_line_error(
            sidecar_webhook("serve", "--cert-dir", str(tmp_path / "certs"), "--port", str(port))
        )
    assert error == (
        f"sidecar-webhook serve: port {port} is already in use on 127.0.0.1 (another sidecar-webhook still "
        "running?): stop what holds it, or pick another port with --port or SIDECAR_WEBHOOK_PORT\n"
    )


def test_certs_create_into_a_file_says_so_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("")
    error = one_line_error(
        sidecar_webhook(
            "certs", "create", "--service", "s", "--namespace", "n", "--out", str(tmp_path / "out")
        )
    )
    assert error.startswith(
        f"sidecar-webhook certs create: cannot write the certificates to {tmp_path}/out: "
    )
    assert "--out" in error


@pytest.mark.parametrize(
    ("command", "variable", "value", "names"),
    [
        (
            ("serve",),
            "EXTRA_HOSTS",
            '["unclosed',
            "extra_hosts (--extra-host or SIDECAR_WEBHOOK_EXTRA_HOSTS)",
        ),
        (
            ("review", "-f", "-"),
            "PROTECTED_DIRS",
            "data,/opt",
            "protected_dirs (SIDECAR_WEBHOOK_PROTECTED_DIRS)",
        ),
        (("inject", "-f", "-"), "PORT", "http", "port (SIDECAR_WEBHOOK_PORT)"),
        (("certs", "check"), "SERVING_VALIDITY", "0", "serving_validity (SIDECAR_WEBHOOK_SERVING_VALIDITY)"),
    ],
)
def test_a_bad_setting_is_one_line_naming_its_flag_and_variable(
    command: tuple[str, ...], variable: str, value: str, names: str
) -> None:
    error = one_line_error(sidecar_webhook(*command, env={f"SIDECAR_WEBHOOK_{variable}": value}))
    subcommand = command[:2] if command[0] == "certs" else command[:1]
    assert error.startswith(f"sidecar-webhook {' '.join(subcommand)}: ")
    assert f"invalid setting {names}: " in error
    assert error.endswith("correct the flag or the SIDECAR_WEBHOOK_* variable\n")


def test_lists_in_variables_may_be_json_or_separated_by_commas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDECAR_WEBHOOK_EXTRA_HOSTS", "foo.example, 10.0.0.1")
    monkeypatch.setenv("SIDECAR_WEBHOOK_PROTECTED_DIRS", '["/data", "/opt/"]')
    settings = Settings()
    assert settings.extra_hosts == ("foo.example", "10.0.0.1")
    assert settings.protected_dirs == {"/data", "/opt"}
    monkeypatch.setenv("SIDECAR_WEBHOOK_PROTECTED_DIRS", "/data")
    assert Settings().protected_dirs == {"/data"}
    assert Settings(extra_hosts=["a.example"]).extra_hosts == ("a.example",)  # the flags give lists


def test_review_prints_the_warnings_of_its_answer_on_stderr() -> None:
    review = json.loads((ADMISSION / "seed-pod.json").read_text())
    review["request"]["object"]["metadata"]["annotations"]["sidecar.example/cpu-requests"] = "100m"
    printed = sidecar_webhook("review", "-f", "-", stdin=json.dumps(review).encode())
    assert printed.returncode == 0
    warning = (
        'annotation "sidecar.example/cpu-requests" is not one sidecar-webhook knows and does nothing: '
        "did you mean sidecar.example/cpu-request?"
    )
    assert json.loads(printed.stdout)["response"]["warnings"] == [warning]
    assert printed.stderr.decode() == f"sidecar-webhook review: warning: {warning}\n"


def test_serve_with_a_client_ca_file_that_is_not_pem_says_so_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    error = one_line_error(
        sidecar_webhook(
            *("serve", "--cert-dir", str(tmp_path / "certs"), "--port", str(free_port())),
            *("--client-ca-file", str(tmp_path / "ca.pem"), "--log-level", "error"),
        )
    )
    assert error == (
        f"sidecar-webhook serve: cannot use the client CA file: {tmp_path}/ca.pem: not a PEM file of CA "
        "certificates: give a PEM file of the CA certificates that sign the API server's client certificate "
        "with --client-ca-file or SIDECAR_WEBHOOK_CLIENT_CA_FILE\n"
    )


def test_any_other_os_error_of_a_command_is_one_line_too(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def denied(args: object, settings: object) -> int:
        raise PermissionError(13, "Permission denied", "/somewhere/file")

    monkeypatch.setattr(cli, "_openapi", denied)
    assert cli.main(["openapi"]) == 2
    assert capsys.readouterr().err == (
        "sidecar-webhook openapi: /somewhere/file: Permission denied: check the path and its permissions\n"
    )


def test_settings_that_contradict_each_other_are_one_line_naming_their_flags_and_variables() -> None:
    error = one_line_error(sidecar_webhook("serve", "--serving-validity", "P300D"))
    assert error == (
        "sidecar-webhook serve: invalid settings: serving_validity must not be longer than ca_renew_before "
        "(set with --ca-renew-before or SIDECAR_WEBHOOK_CA_RENEW_BEFORE; --serving-validity or "
        "SIDECAR_WEBHOOK_SERVING_VALIDITY): correct the flag or the SIDECAR_WEBHOOK_* variable\n"
    )


def test_the_help_of_check_only_names_every_check_in_order() -> None:
    """`check --only`'s help lists the checks by hand (importing webhook.check to build it would add 0.15 s
    to every start of `serve`): held equal to check.SLUGS here."""
    from webhook import check

    (commands,) = [a for a in cli._parser()._actions if isinstance(a, argparse._SubParsersAction)]
    (only,) = [a for a in commands.choices["check"]._actions if "--only" in a.option_strings]
    assert only.help is not None
    assert only.help.split(": ", 1)[1] == f"{', '.join(check.SLUGS[:-1])} or {check.SLUGS[-1]}"
