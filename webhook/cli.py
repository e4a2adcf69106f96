"""The command line: `sidecar-webhook serve` and `sidecar-webhook review`."""

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from webhook import __version__, admission
from webhook.settings import Settings


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = _settings(args)
    except ValidationError as error:
        print(
            f"sidecar-webhook: invalid settings (flags or SIDECAR_WEBHOOK_* variables):\n{error}",
            file=sys.stderr,
        )
        return 2
    code: int = args.run(args, settings)
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sidecar-webhook",
        description="Kubernetes mutating admission webhook that injects a log-tailing sidecar.",
        epilog="Every setting can also be given as an environment variable SIDECAR_WEBHOOK_<NAME>, "
        "e.g. SIDECAR_WEBHOOK_PORT=8443 or SIDECAR_WEBHOOK_SIDECAR_IMAGE=busybox:1.37.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the webhook over HTTPS")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8443)")
    serve.add_argument("--cert-dir", type=Path, help="directory with tls.crt and tls.key (default certs)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(run=_serve)

    review = commands.add_parser(
        "review", help="print the response the server would give to a captured AdmissionReview"
    )
    review.add_argument("-f", "--file", required=True, help="the AdmissionReview as JSON, or - for stdin")
    review.set_defaults(run=_review)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    """Flags win over SIDECAR_WEBHOOK_* variables, which win over the defaults."""
    flags = {name: getattr(args, name, None) for name in ("host", "port", "cert_dir", "log_level")}
    return Settings(**{name: value for name, value in flags.items() if value is not None})


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from webhook.server import serve  # uvicorn is imported only by the command that needs it

    serve(settings)
    return 0


def _review(args: argparse.Namespace, settings: Settings) -> int:
    try:
        body = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as error:
        print(f"sidecar-webhook review: cannot read {args.file}: {error.strerror}", file=sys.stderr)
        return 2
    reply = admission.review(body, settings)
    text = json.dumps(json.loads(reply.body), indent=2, ensure_ascii=False)
    if reply.status_code != 200:
        print(
            f"sidecar-webhook review: the server would answer HTTP {reply.status_code}:\n{text}",
            file=sys.stderr,
        )
        return 1
    print(text)
    return 0
