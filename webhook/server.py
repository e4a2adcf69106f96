"""Run the HTTPS service: certificates, uvicorn over TLS, limits, readiness and graceful shutdown."""

import asyncio
import ctypes
import errno
import functools
import gc
import logging
import resource
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn
import uvloop

from webhook import logs, tls
from webhook.app import ServingState, create_app
from webhook.metrics import Metrics, metrics_endpoint
from webhook.mistakes import SetupError, os_problem
from webhook.protocol import HEADER_TIMEOUT_SECONDS, HttpProtocol
from webhook.settings import Settings

Config = uvicorn.Config

if TYPE_CHECKING:
    from webhook.cluster import ClusterCertificates

# The API server's webhook client keeps idle connections for 90 s (Go's default). Keeping ours
# open longer means the client, not the server, closes an idle connection, so a request never
# races a close it cannot see.
KEEP_ALIVE_SECONDS = 120
# On SIGTERM: stop accepting, let requests in flight finish for up to this long, then exit;
# below the Deployment's termination grace period.
GRACEFUL_SHUTDOWN_SECONDS = 20
# A bound on the memory that clients can make the server hold: a TLS connection costs 50 to 60 KiB
# (its TLS state and buffers; a request's task), so 1,100 of them took the server from 55 to 111 MiB
# idle and to 121 MiB stalled in their bodies (tests/test_attacks.py). The API servers of a cluster
# keep a few dozen. Near the bound, a new connection closes the one that has waited on its client the
# longest (webhook/protocol.py); only when all have a request in flight do new calls get 503.
MAX_CONNECTIONS = 500
# uvloop gives a TLS handshake 60 s by default, and a connection in its handshake is not yet one
# that uvicorn counts or closes. As Go's server does with ReadHeaderTimeout, the handshake gets the
# headers' deadline; the API server's takes milliseconds.
HANDSHAKE_TIMEOUT_SECONDS = HEADER_TIMEOUT_SECONDS
# glibc keeps the pages of what is freed in its heap: after a flood of connections (each with uvloop's
# 256 KiB TLS buffer) the server stayed 70 MiB larger for good, and each attack after it started from
# there (tests/test_attacks.py). Trimming the heap once a second (uvicorn ticks every 0.1 s) gives them
# back. Holding glibc's mmap threshold at 128 KiB did too, but made every review of a 1 MiB pod pay for
# fresh mappings: 4.1x the Go peer's throughput instead of 9.3x (bench, same run).
TRIM_EVERY_TICKS = 10
# A closing TLS connection waits this long for the client's close_notify (uvloop: 30 s) before its
# socket is let go: a client that never answers would keep it, and its buffers, that long.
TLS_SHUTDOWN_TIMEOUT_SECONDS = 2.0

_log = logging.getLogger("sidecar_webhook.server")


class TlsDeadlineLoop(uvloop.Loop):
    """uvloop's event loop, whose TLS servers cut off a handshake or a close that takes too long
    (uvicorn creates its servers without either timeout)."""

    async def create_server(self, *args: Any, **kwargs: Any) -> asyncio.AbstractServer:  # type: ignore[override]
        if kwargs.get("ssl") is not None:
            kwargs.setdefault("ssl_handshake_timeout", HANDSHAKE_TIMEOUT_SECONDS)
            kwargs.setdefault("ssl_shutdown_timeout", TLS_SHUTDOWN_TIMEOUT_SECONDS)
        return await super().create_server(*args, **kwargs)


class _Server(uvicorn.Server):
    def __init__(
        self,
        config: uvicorn.Config,
        state: ServingState,
        cert_dir: Path,
        drain: float,
        keeper: "ClusterCertificates | None" = None,
        client_ca_file: Path | None = None,
        metrics: tuple[Config, list[socket.socket]] | None = None,
    ) -> None:
        super().__init__(config)
        self.state = state
        self.cert_dir = cert_dir
        self.client_ca_file = client_ca_file
        self.drain = drain
        self.keeper = keeper
        self.metrics = metrics
        self._exit_at: tuple[float, int] | None = None
        self._trim_heap = _heap_trimmer()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.metrics is None or self.should_exit:
            return
        config, listeners = self.metrics
        # The same protocol, limits and connection count as the TLS port; uvicorn closes it with the
        # servers it made, on shutdown. Its sockets were bound at start (serve), so a port in use was
        # said there.
        protocol = functools.partial(
            HttpProtocol, config=config, server_state=self.server_state, app_state={}
        )
        for listener in listeners:
            server = await asyncio.get_running_loop().create_server(
                protocol, sock=listener, backlog=config.backlog
            )
            self.servers.append(server)
        _log.info("metrics on http://%s/metrics", ", ".join(_address(s) for s in listeners))

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
        if counter % TRIM_EVERY_TICKS == 0 and self._trim_heap is not None:
            self._trim_heap(0)
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
    metrics_listeners = (
        _listen(settings.host, settings.metrics_port, "--metrics-port or SIDECAR_WEBHOOK_METRICS_PORT")
        if settings.metrics_port
        else []
    )
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
    config = _config(app, settings.host, settings.port, ssl_certfile=cert_file, ssl_keyfile=key_file)
    metrics_port = None
    if metrics_listeners:
        metrics_config = _config(metrics_endpoint(metrics), settings.host, settings.metrics_port)
        metrics_config.load()
        metrics_port = (metrics_config, metrics_listeners)
    drain, client_ca = settings.shutdown_delay, settings.client_ca_file
    _Server(config, state, settings.cert_dir, drain, keeper, client_ca, metrics_port).run(listeners)


def _config(app: Any, host: str, port: int, **tls: Any) -> Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=HttpProtocol,
        loop=f"{__name__}:{TlsDeadlineLoop.__name__}",
        log_config=None,
        access_log=False,  # the app writes one structured line per review instead
        server_header=False,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        limit_concurrency=MAX_CONNECTIONS,
        lifespan="off",
        # The API server calls us directly: there is no proxy whose headers to trust or to parse.
        proxy_headers=False,
        **tls,
    )


def _heap_trimmer() -> Callable[[int], int] | None:
    """glibc's malloc_trim, which gives the free pages of the heap back to the system (None elsewhere)."""
    trim: Callable[[int], int] | None = getattr(ctypes.CDLL(None), "malloc_trim", None)
    return trim


def _listen(host: str, port: int, choose: str = "--port or SIDECAR_WEBHOOK_PORT") -> list[socket.socket]:
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
                f"what holds it, or pick another port with {choose}"
            ) from None
        if error.errno == errno.EACCES:
            raise SetupError(
                f"cannot listen on {where}: permission denied (ports below 1024 need privileges): pick "
                f"another port with {choose}"
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
