"""Run the HTTPS service: certificates, uvicorn over TLS, limits, readiness and graceful shutdown."""

import asyncio
import ctypes
import functools
import gc
import logging
import resource
import socket
import sys
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn
import uvloop

from webhook import logs, tls
from webhook.app import ServingState, create_app
from webhook.metrics import Metrics, metrics_endpoint
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
        metrics: Config | None = None,
    ) -> None:
        super().__init__(config)
        self.state = state
        self.cert_dir = cert_dir
        self.client_ca_file = client_ca_file
        self.drain = drain
        self.keeper = keeper
        self.metrics = metrics
        self._exit_at: tuple[float, int] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.metrics is None or self.should_exit:
            return
        # The same protocol, limits and connection count as the TLS port; uvicorn closes it with the
        # servers it made, on shutdown.
        protocol = functools.partial(
            HttpProtocol, config=self.metrics, server_state=self.server_state, app_state={}
        )
        try:
            listener = await asyncio.get_running_loop().create_server(
                protocol, self.metrics.host, self.metrics.port, backlog=self.metrics.backlog
            )
        except OSError as error:
            _log.error("cannot serve metrics on %s:%d: %s", self.metrics.host, self.metrics.port, error)
            sys.exit(3)  # uvicorn's exit code when its own port cannot be had
        self.servers.append(listener)
        _log.info("metrics on http://%s:%d/metrics", self.metrics.host, self.metrics.port)

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        tasks = []
        if self.keeper is not None:
            # The certificate comes from the cluster: listen only once there is one the caBundle trusts.
            await self.keeper.start()
            tasks.append(asyncio.create_task(self.keeper.run()))
        else:
            self.state.ready = True
        self.config.load()
        certificate = tls.ReloadingCertificate(
            self.cert_dir / tls.TLS_CERT, self.cert_dir / tls.TLS_KEY, self.client_ca_file
        )
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
    logs.configure(settings.log_level)
    _allow_all_file_descriptors()
    _give_large_buffers_back()
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

        pki.ensure_development_certificate(settings.cert_dir)
        _log.warning(
            "no certificate in %s: created a development CA and a certificate for %s; clients must trust %s",
            settings.cert_dir,
            ", ".join(pki.DEVELOPMENT_HOSTS),
            settings.cert_dir / tls.CA_CERT,
        )
    config = _config(app, settings.host, settings.port, ssl_certfile=cert_file, ssl_keyfile=key_file)
    metrics_config = None
    if settings.metrics_port:
        metrics_config = _config(metrics_endpoint(metrics), settings.host, settings.metrics_port)
        metrics_config.load()
    drain, client_ca = settings.shutdown_delay, settings.client_ca_file
    _Server(config, state, settings.cert_dir, drain, keeper, client_ca, metrics_config).run()


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


def _give_large_buffers_back() -> None:
    """Keep glibc's mmap threshold at its default of 128 KiB. glibc raises it, up to 32 MiB, whenever a
    block it had mapped is freed; from then on the 256 KiB TLS buffer of each connection (uvloop's) and
    the bodies being read come from the heap, whose pages the process keeps once they are free. After
    1,200 connections the server stayed 70 MiB larger for good, and every attack after that started
    from there (tests/test_attacks.py: 168 MiB at the peak of the last instead of 124)."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:  # glibc and musl have it; musl's does nothing
        mallopt(_M_MMAP_THRESHOLD, 128 * 1024)


_M_MMAP_THRESHOLD = -3  # glibc's malloc.h


def _allow_all_file_descriptors() -> None:
    """Raise the soft limit on open files to the hard one (Go does the same at start): the default
    1024 would refuse connections long before MAX_CONNECTIONS."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
