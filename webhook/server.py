"""Run the HTTPS service: certificates, uvicorn over TLS, limits, readiness and graceful shutdown."""

import asyncio
import errno
import gc
import logging
import resource
import socket
import ssl
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn

from webhook import logs, tls
from webhook.app import ServingState, create_app
from webhook.metrics import Metrics
from webhook.mistakes import SetupError, os_problem
from webhook.protocol import HttpProtocol
from webhook.settings import Settings

if TYPE_CHECKING:
    from webhook.cluster import ClusterCertificates

# The API server's webhook client keeps idle connections for 90 s (Go's default). Keeping ours
# open longer means the client, not the server, closes an idle connection, so a request never
# races a close it cannot see.
KEEP_ALIVE_SECONDS = 120
# On SIGTERM: stop accepting, let requests in flight finish for up to this long, then exit;
# below the Deployment's termination grace period.
GRACEFUL_SHUTDOWN_SECONDS = 20
# Beyond this many open connections new calls get 503 at once: a bound on the memory that clients
# can make the server hold. The API servers of a cluster need a few dozen.
MAX_CONNECTIONS = 1000

_log = logging.getLogger("sidecar_webhook.server")


class _Server(uvicorn.Server):
    def __init__(
        self,
        config: uvicorn.Config,
        state: ServingState,
        cert_dir: Path,
        drain: float,
        keeper: "ClusterCertificates | None" = None,
        client_ca_file: Path | None = None,
    ) -> None:
        super().__init__(config)
        self.state = state
        self.cert_dir = cert_dir
        self.client_ca_file = client_ca_file
        self.drain = drain
        self.keeper = keeper
        self._exit_at: tuple[float, int] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        tasks = []
        if self.keeper is not None:
            # The certificate comes from the cluster: listen only once there is one the caBundle trusts.
            await self.keeper.start()
            tasks.append(asyncio.create_task(self.keeper.run()))
        else:
            self.state.ready = True
        certificate = self._load_certificate()
        self.config.load()
        _log.info("listening on https://%s", ", ".join(_address(s) for s in sockets or ()))
        self.config.ssl = certificate.context
        tasks.append(asyncio.create_task(certificate.watch()))
        # What is alive now (modules, the app, its validators) lives as long as the process: frozen
        # out of the collector's generations, so that no collection walks it again.
        gc.collect()
        gc.freeze()
        try:
            await super().serve(sockets)
        finally:
            for task in tasks:
                task.cancel()

    def _load_certificate(self) -> tls.ReloadingCertificate:
        cert_file, key_file = self.cert_dir / tls.TLS_CERT, self.cert_dir / tls.TLS_KEY
        try:
            return tls.ReloadingCertificate(cert_file, key_file, self.client_ca_file)
        except OSError as error:  # ssl.SSLError is one too
            problem = os_problem(error)
            if self.client_ca_file is not None and error.filename == str(self.client_ca_file):
                if isinstance(error, ssl.SSLError):
                    problem = f"{self.client_ca_file}: not a PEM file of CA certificates"
                raise SetupError(
                    f"cannot use the client CA file: {problem}: give a PEM file of the CA certificates "
                    "that sign the API server's client certificate with --client-ca-file or "
                    "SIDECAR_WEBHOOK_CLIENT_CA_FILE"
                ) from None
            if isinstance(error, ssl.SSLError):  # read, but OpenSSL's words ("[SSL] PEM lib") say little
                problem = "they are not a PEM certificate and its private key"
            raise SetupError(
                f"cannot serve {cert_file} with {key_file}: {problem}: make a readable pair with "
                "`sidecar-webhook certs create --out DIR` and give DIR with --cert-dir or "
                "SIDECAR_WEBHOOK_CERT_DIR (or remove both files to get a development certificate)"
            ) from None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # /readyz answers 503 from the first signal on. With a drain delay the server keeps serving
        # meanwhile, so endpoints can drop it before it stops accepting; a second signal doesn't wait.
        if self.drain > 0 and not self.state.draining:
            self.state.draining = True
            self._exit_at = (time.monotonic() + self.drain, sig)
            _log.info("draining for %.1f s before shutting down", self.drain)
            return
        self.state.draining = True
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._exit_at is not None and time.monotonic() >= self._exit_at[0]:
            sig = self._exit_at[1]
            self._exit_at = None
            super().handle_exit(sig, None)
        return await super().on_tick(counter)


def serve(settings: Settings) -> None:
    """Run until SIGTERM; a set-up mistake (the port, the certificate files) raises SetupError before
    anything is served."""
    logs.configure(settings.log_level)
    _allow_all_file_descriptors()
    # Bound before anything else, so that a port in use is said first and plainly (uvicorn would log its
    # errno after "Started server process" and exit 1).
    listeners = _listen(settings.host, settings.port)
    cert_file, key_file = settings.cert_dir / tls.TLS_CERT, settings.cert_dir / tls.TLS_KEY
    state, metrics = ServingState(), Metrics()
    app = create_app(settings, state, metrics)
    keeper = None
    if settings.certificates == "cluster":
        # Imported only in this mode: the API client and `cryptography` cost the file mode nothing.
        from webhook.cluster import ClusterCertificates

        keeper = ClusterCertificates(settings, state, metrics)
    elif not tls.has_pair(settings.cert_dir):
        # Imported only here: `cryptography` would hold ~8 MiB of the server's memory for good.
        from webhook import pki

        try:
            pki.ensure_development_certificate(settings.cert_dir)
        except OSError as error:
            raise SetupError(
                f"cannot create a development certificate in {settings.cert_dir}: {os_problem(error)}: "
                "give a directory you can write with --cert-dir or SIDECAR_WEBHOOK_CERT_DIR, or put tls.crt "
                f"and tls.key in it with `sidecar-webhook certs create --out {settings.cert_dir}`"
            ) from None
        _log.warning(
            "no certificate in %s: created a development CA and a certificate for %s; clients must trust %s",
            settings.cert_dir,
            ", ".join(pki.DEVELOPMENT_HOSTS),
            settings.cert_dir / tls.CA_CERT,
        )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=HttpProtocol,
        ssl_certfile=cert_file,
        ssl_keyfile=key_file,
        log_config=None,
        access_log=False,  # the app writes one structured line per review instead
        server_header=False,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        limit_concurrency=MAX_CONNECTIONS,
        lifespan="off",
        # The API server calls us directly: there is no proxy whose headers to trust or to parse.
        proxy_headers=False,
    )
    drain = settings.shutdown_delay
    _Server(config, state, settings.cert_dir, drain, keeper, settings.client_ca_file).run(listeners)


def _listen(host: str, port: int) -> list[socket.socket]:
    """Sockets bound to each address of `host` (a name may have an IPv4 and an IPv6 one), as asyncio's
    create_server binds them; uvicorn listens on them. Raises SetupError naming the port and the fix."""
    bound: list[socket.socket] = []
    try:
        for family, kind, protocol, _, address in socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        ):
            listener = socket.socket(family, kind, protocol)
            bound.append(listener)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            listener.bind(address)
    except OSError as error:
        for listener in bound:
            listener.close()
        where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
        if error.errno == errno.EADDRINUSE:
            raise SetupError(
                f"port {port} is already in use on {host} (another sidecar-webhook still running?): stop "
                "what holds it, or pick another port with --port or SIDECAR_WEBHOOK_PORT"
            ) from None
        if error.errno == errno.EACCES:
            raise SetupError(
                f"cannot listen on {where}: permission denied (ports below 1024 need privileges): pick "
                "another port with --port or SIDECAR_WEBHOOK_PORT"
            ) from None
        raise SetupError(
            f"cannot listen on {where}: {os_problem(error)}: give an address of this machine with --host "
            "or SIDECAR_WEBHOOK_HOST"
        ) from None
    return bound


def _address(listener: socket.socket) -> str:
    host, port = listener.getsockname()[:2]
    return f"[{host}]:{port}" if listener.family == socket.AF_INET6 else f"{host}:{port}"


def _allow_all_file_descriptors() -> None:
    """Raise the soft limit on open files to the hard one (Go does the same at start): the default
    1024 would refuse connections long before MAX_CONNECTIONS."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
