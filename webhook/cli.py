"""The command line: `sidecar-webhook serve`, `review`, `inject`, `check` and `certs`."""

import argparse
import base64
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import SettingsError

from webhook import __version__, admission
from webhook.mistakes import SetupError, os_problem
from webhook.settings import Settings

DURATION_FLAGS = {
    "ca_validity": "730 days",
    "ca_renew_before": "243 days",
    "serving_validity": "90 days",
    "serving_renew_before": "30 days",
    "check_interval": "30 s: how soon a changed caBundle is repaired",
}
# Settings whose flag is not --<name with dashes>.
SETTING_FLAGS = {"extra_hosts": "--extra-host"}

# Each command imports the modules only it needs when it runs, so the server never holds
# `cryptography` (about 8 MiB), yaml or jsonpatch for its whole life.


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = _settings(args)
    except (ValidationError, SettingsError) as error:
        print(f"{args.prog}: {_settings_problem(error, args)}", file=sys.stderr)
        return 2
    try:
        code: int = args.run(args, settings)
    except BrokenPipeError:
        # The reader went away (`... | head`): stop quietly, and keep Python from complaining at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except SetupError as error:
        print(f"{args.prog}: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        # A file or a socket the command could not use, where no step said more: still one line.
        print(f"{args.prog}: {os_problem(error)}: check the path and its permissions", file=sys.stderr)
        return 2
    return code


def _settings_problem(error: ValidationError | SettingsError, args: argparse.Namespace) -> str:
    """One line naming each bad setting by its flag (where the command has one) and its variable."""
    if isinstance(error, SettingsError):  # a variable pydantic-settings could not decode
        field = re.search(r'field "(\w+)"', str(error))
        name = _setting_names(field[1], args) if field else "a SIDECAR_WEBHOOK_* variable"
        return f"invalid setting {name}: {str(error).splitlines()[0]}: correct it"
    problems = []
    for problem in error.errors(include_url=False):
        message = problem["msg"].removeprefix("Value error, ")
        if problem["loc"]:
            name = _setting_names(str(problem["loc"][0]), args)
            problems.append(f"invalid setting {name}: {message}, got {_shown(problem['input'])}")
        else:  # settings that contradict each other, which the message names by field
            fields = [f for f in Settings.model_fields if re.search(rf"\b{f}\b", message)]
            named = "; ".join(_flag_and_variable(field, args) for field in fields)
            problems.append(f"invalid settings: {message}" + (f" (set with {named})" if named else ""))
    return f"{'; '.join(problems)}: correct the flag or the SIDECAR_WEBHOOK_* variable"


def _setting_names(field: str, args: argparse.Namespace) -> str:
    """`port (--port or SIDECAR_WEBHOOK_PORT)`: the setting, its flag if the command has one, its variable."""
    return f"{field} ({_flag_and_variable(field, args)})"


def _flag_and_variable(field: str, args: argparse.Namespace) -> str:
    variable = f"SIDECAR_WEBHOOK_{field.upper()}"
    flag = SETTING_FLAGS.get(field, f"--{field.replace('_', '-')}") if hasattr(args, field) else ""
    return f"{flag} or {variable}" if flag else variable


def _shown(value: object) -> str:
    text = repr(sorted(value) if isinstance(value, frozenset) else value)
    return text if len(text) <= 200 else text[:200] + "...(truncated)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sidecar-webhook",
        description="Kubernetes mutating admission webhook that injects a log-streaming sidecar.",
        epilog="Every setting can also be given as an environment variable SIDECAR_WEBHOOK_<NAME>, "
        "e.g. SIDECAR_WEBHOOK_PORT=8443 or SIDECAR_WEBHOOK_SIDECAR_IMAGE=docker.io/library/busybox:1.37.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the webhook over HTTPS")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8443)")
    serve.add_argument(
        "--metrics-port",
        type=int,
        help="plain-HTTP port for /metrics on the same host (default 9090; 0: off)",
    )
    serve.add_argument("--cert-dir", type=Path, help="directory with tls.crt and tls.key (default certs)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--shutdown-delay",
        type=float,
        help="seconds to keep serving after SIGTERM, /readyz at 503 (default 0)",
    )
    serve.add_argument(
        "--record-dir", type=Path, help="write each answered review to a JSON file here (off by default)"
    )
    serve.add_argument(
        "--client-ca-file",
        type=Path,
        help="require a client certificate signed by a CA of this PEM file to call /mutate or /warn "
        "(the API server's, from its AdmissionConfiguration); the probes stay open (off by default)",
    )
    cluster = serve.add_argument_group(
        "certificates",
        "files (default): serve tls.crt and tls.key of --cert-dir, reloaded when they change. cluster: "
        "keep a CA and the serving certificate in a Secret, write the caBundle of the webhook "
        "configuration and rotate both; the certificate served is written to --cert-dir. Durations are "
        "seconds or ISO 8601 (P90D).",
    )
    cluster.add_argument("--certificates", choices=["files", "cluster"], help="where certificates come from")
    cluster.add_argument("--secret-namespace", help="the Secret's namespace (default sidecar-webhook)")
    cluster.add_argument("--secret-name", help="the Secret with the CA (default sidecar-webhook-certs)")
    cluster.add_argument(
        "--webhook-configuration", help="the MutatingWebhookConfiguration to keep the caBundle of"
    )
    cluster.add_argument("--service-name", help="the Service, whose DNS names the certificate covers")
    cluster.add_argument("--service-namespace", help="the Service's namespace")
    cluster.add_argument(
        "--extra-host",
        dest="extra_hosts",
        action="append",
        help="another DNS name or IP address (repeatable)",
    )
    for name, default in DURATION_FLAGS.items():
        cluster.add_argument(f"--{name.replace('_', '-')}", help=f"(default {default})")
    serve.set_defaults(run=_serve, prog=serve.prog)

    review = commands.add_parser(
        "review", help="print the response the server would give to a captured AdmissionReview"
    )
    review.add_argument("-f", "--file", required=True, help="the AdmissionReview as JSON, or - for stdin")
    review.add_argument(
        "--patch",
        action="store_true",
        help="print the JSONPatch the response carries, decoded from base64 ([] when none); a denial "
        "exits 1 with its message on stderr",
    )
    review.set_defaults(run=_review, prog=review.prog)

    inject = commands.add_parser(
        "inject",
        help="print manifests with the sidecar added to their pod templates, as the webhook would add it",
        epilog="Exit status: 0 printed; 1 a document the API server would refuse (invalid YAML, not a "
        "valid pod, denied), nothing printed; 2 the input can't be read.",
    )
    inject.add_argument(
        "-f", "--file", required=True, help="a YAML or JSON manifest, a directory of them, or - for stdin"
    )
    inject.set_defaults(run=_inject, prog=inject.prog)

    openapi = commands.add_parser(
        "openapi", help="print the OpenAPI schema of the HTTPS service, AdmissionReview models included"
    )
    openapi.set_defaults(run=_openapi, prog=openapi.prog)

    doctor = commands.add_parser(
        "check",
        help="ask the cluster in KUBECONFIG whether the installed webhook works; exit 1 on any failure",
    )
    doctor.add_argument("--context", help="the kubeconfig context (default: the current one)")
    doctor.add_argument(
        "--namespace", default="sidecar-webhook", help="the install's namespace (sidecar-webhook)"
    )
    doctor.add_argument(
        "--test-namespace", default="default", help="the namespace of the dry-run pods (default: default)"
    )
    doctor.add_argument(
        "-o",
        "--output",
        choices=["text", "json"],
        default="text",
        help="json: a list of {check, status, message, hint}",
    )
    # The names are check.SLUGS, written out: importing webhook.check here would slow every `serve` start
    # (tests/test_cli.py holds the two equal).
    doctor.add_argument(
        "--only",
        action="append",
        metavar="CHECK",
        help="run only this check (repeatable): namespace, webhook-configuration, cabundle, "
        "certificate-expiry, replicas, serviceaccount-rights, admission-policy or dry-run",
    )
    doctor.set_defaults(run=_check)

    certs = commands.add_parser("certs", help="create, check and ship the TLS material for a cluster install")
    certs_commands = certs.add_subparsers(required=True, metavar="ACTION")
    create = certs_commands.add_parser(
        "create", help="a CA and a serving certificate for the Service (keeps what is still good)"
    )
    create.add_argument("--service", required=True, help="the webhook's Service name")
    create.add_argument("--namespace", required=True, help="the Service's namespace")
    create.add_argument(
        "--host",
        dest="extra_hosts",
        action="append",
        default=[],
        help="an extra DNS name or IP address (repeatable); the names the certificate already has are kept",
    )
    create.add_argument(
        "--replace-hosts",
        action="store_true",
        help="issue the certificate for the Service and the --host names only, dropping any other it had",
    )
    create.add_argument("--days", type=int, help="serving certificate lifetime in days (default: a year)")
    create.add_argument("--out", type=Path, default=Path("certs"), help="directory to write (certs)")
    create.add_argument("--force", action="store_true", help="start over: a new CA and certificate")
    create.set_defaults(run=_certs_create, prog=create.prog)
    check = certs_commands.add_parser("check", help="expiry, hosts and chain; fails within 30 days of expiry")
    check.add_argument("--dir", type=Path, default=Path("certs"), help="directory to check (certs)")
    check.add_argument("--service", help="also require the Service's names (with --namespace)")
    check.add_argument("--namespace")
    check.set_defaults(run=_certs_check, prog=check.prog)
    show = certs_commands.add_parser(
        "manifests",
        help="print the TLS Secret and the webhook configuration with its caBundle, for kubectl apply -f -",
    )
    show.add_argument("--dir", type=Path, default=Path("certs"), help="directory with the material (certs)")
    show.add_argument(
        "--url",
        help="call this https URL instead of the Service (a webhook run outside the cluster), e.g. "
        "https://10.1.2.3:8443: /mutate and /warn are added; the certificate must cover its host",
    )
    show.add_argument(
        "--deploy-dir",
        type=Path,
        help="a directory with the mutatingwebhookconfiguration.yaml to fill in (default: the one installed)",
    )
    show.set_defaults(run=_certs_manifests, prog=show.prog)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    """Flags win over SIDECAR_WEBHOOK_* variables, which win over the defaults."""
    names = (
        *("host", "port", "metrics_port", "cert_dir", "log_level", "record_dir", "client_ca_file"),
        *("shutdown_delay", "certificates"),
        *("secret_namespace", "secret_name", "webhook_configuration", "service_name", "service_namespace"),
        *("extra_hosts", *DURATION_FLAGS),
    )
    flags = {name: getattr(args, name, None) for name in names}
    return Settings(**{name: value for name, value in flags.items() if value is not None})


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from webhook.server import serve

    serve(settings)
    return 0


def _openapi(args: argparse.Namespace, settings: Settings) -> int:
    from webhook.app import create_app

    print(json.dumps(create_app(settings).openapi(), indent=2))
    return 0


def _review(args: argparse.Namespace, settings: Settings) -> int:
    try:
        body = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as error:
        print(f"sidecar-webhook review: cannot read {args.file}: {error.strerror}", file=sys.stderr)
        return 2
    reply = admission.review(body, settings)
    answer = json.loads(reply.body)
    text = json.dumps(answer, indent=2, ensure_ascii=False)
    if reply.status_code != 200:
        print(
            f"sidecar-webhook review: the server would answer HTTP {reply.status_code}:\n{text}",
            file=sys.stderr,
        )
        return 1
    for warning in reply.decision.warnings if reply.decision is not None else ():
        print(f"sidecar-webhook review: warning: {warning}", file=sys.stderr)
    if args.patch:
        return _print_patch(answer["response"])
    print(text)
    return 0


def _print_patch(response: dict[str, Any]) -> int:
    """The patch as the API server reads it: base64 decoded from the response, not taken from the engine,
    so what is printed is what the server sends."""
    if not response["allowed"]:
        print(
            f"sidecar-webhook review: denied, so no patch: {response['status']['message']}", file=sys.stderr
        )
        return 1
    patch = json.loads(base64.b64decode(response["patch"])) if "patch" in response else []
    print(json.dumps(patch, indent=2, ensure_ascii=False))
    return 0


def _inject(args: argparse.Namespace, settings: Settings) -> int:
    from webhook import manifests

    try:
        inputs = _manifest_files(args.file)
    except OSError as error:
        print(f"sidecar-webhook inject: cannot read {args.file}: {error.strerror or error}", file=sys.stderr)
        return 2
    if not inputs:
        print(f"sidecar-webhook inject: no .yaml, .yml or .json file in {args.file}", file=sys.stderr)
        return 2
    try:
        sources = [(name, manifests.parse(text, name)) for name, text in inputs]
        injected = manifests.inject(sources, settings)
    except manifests.Rejected as error:
        for note in error.notes:
            print(f"sidecar-webhook inject: {note}", file=sys.stderr)
        return 1
    for note in injected.warnings:
        print(f"sidecar-webhook inject: warning: {note}", file=sys.stderr)
    sys.stdout.write(manifests.render(injected.documents))  # all or nothing: rendered before printing
    return 0


def _manifest_files(name: str) -> list[tuple[str, bytes]]:
    """(name, contents) of stdin, a file, or a directory's manifests in name order (like
    `kubectl apply -f DIR`: .yaml, .yml and .json files, not subdirectories)."""
    if name == "-":
        return [("<stdin>", sys.stdin.buffer.read())]
    path = Path(name)
    if not path.is_dir():
        return [(name, path.read_bytes())]
    files = sorted(f for f in path.iterdir() if f.suffix in (".yaml", ".yml", ".json") and f.is_file())
    return [(str(file), file.read_bytes()) for file in files]


def _check(args: argparse.Namespace, settings: Settings) -> int:
    from webhook import check

    unknown = sorted(set(args.only or ()) - set(check.SLUGS))
    if unknown:
        print(
            f"sidecar-webhook check: no check named {', '.join(unknown)}; --only takes "
            f"{', '.join(check.SLUGS)}",
            file=sys.stderr,
        )
        return 2
    return check.main(
        args.context, check.Target(args.namespace, args.test_namespace), args.output, tuple(args.only or ())
    )


def _certs_create(args: argparse.Namespace, settings: Settings) -> int:
    from webhook import certs

    days = certs.SERVING_DAYS if args.days is None else args.days
    if days < 1:
        print("sidecar-webhook certs create: --days must be at least 1", file=sys.stderr)
        return 2
    hosts = certs.service_hosts(args.service, args.namespace, args.extra_hosts)
    kept = [] if args.replace_hosts else certs.kept_hosts(args.out, hosts)
    if kept:
        print(
            f"{args.out}: keeping {', '.join(kept)}, which the certificate had (--replace-hosts drops them)"
        )
    hosts += kept
    try:
        said = certs.create(args.out, hosts, days=days, force=args.force)
    except OSError as error:
        raise SetupError(
            f"cannot write the certificates to {args.out}: {os_problem(error)}: give a directory you can "
            "write with --out"
        ) from None
    for line in said:
        print(f"{args.out}: {line}")
    return 0


def _certs_check(args: argparse.Namespace, settings: Settings) -> int:
    from webhook import certs

    if bool(args.service) != bool(args.namespace):
        print("sidecar-webhook certs check: give --service and --namespace together", file=sys.stderr)
        return 2
    expected = certs.service_hosts(args.service, args.namespace) if args.service else []
    found = certs.check(args.dir, expected)
    print("\n".join(found.lines))
    for problem in found.problems:
        print(f"problem: {problem}", file=sys.stderr)
    print("ok" if not found.problems else f"{len(found.problems)} problem(s)")
    return 1 if found.problems else 0


def _certs_manifests(args: argparse.Namespace, settings: Settings) -> int:
    import yaml

    from webhook import certs

    try:
        documents = certs.manifests(args.dir, args.deploy_dir or certs.DEPLOY_DIR, args.url)
    except certs.ManifestError as error:
        print(f"sidecar-webhook certs manifests: {error}", file=sys.stderr)
        return 2
    print(yaml.safe_dump_all(documents, sort_keys=False), end="")
    return 0
