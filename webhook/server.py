"""Run the HTTPS service: certificates, uvicorn over TLS, readiness and graceful shutdown."""

import asyncio
import logging
import socket
from types import FrameType

import uvicorn

from webhook import logs, tls
from webhook.app import ServingState, create_app
from webhook.settings import Settings

# The API server's webhook client keeps idle connections for 90 s (Go's default). Keeping ours
# open longer means the client, not the server, closes an idle connection, so a request never
# races a close it cannot see.
KEEP_ALIVE_SECONDS = 120
# On SIGTERM: stop accepting, let requests in flight finish for up to this long, then exit;
# below the Deployment's termination grace period.
GRACEFUL_SHUTDOWN_SECONDS = 20

_log = logging.getLogger("sidecar_webhook.server")


class _Server(uvicorn.Server):
    def __init__(
        self, config: uvicorn.Config, state: ServingState, certificate: tls.ReloadingCertificate
    ) -> None:
        super().__init__(config)
        self.state = state
        self.certificate = certificate

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        watcher = asyncio.create_task(self.certificate.watch())
        try:
            await super().serve(sockets)
        finally:
            watcher.cancel()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.state.draining = True  # /readyz answers 503 from now on
        super().handle_exit(sig, frame)


def serve(settings: Settings) -> None:
    logs.configure(settings.log_level)
    cert_file, key_file = settings.cert_dir / tls.TLS_CERT, settings.cert_dir / tls.TLS_KEY
    if tls.ensure_development_certificate(settings.cert_dir):
        _log.warning(
            "no certificate in %s: created a development CA and a certificate for %s; clients must trust %s",
            settings.cert_dir,
            ", ".join(tls.DEVELOPMENT_HOSTS),
            settings.cert_dir / tls.CA_CERT,
        )
    state = ServingState()
    config = uvicorn.Config(
        create_app(settings, state),
        host=settings.host,
        port=settings.port,
        ssl_certfile=cert_file,
        ssl_keyfile=key_file,
        log_config=None,
        access_log=False,  # the app writes one structured line per review instead
        server_header=False,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        lifespan="off",
    )
    config.load()
    certificate = tls.ReloadingCertificate(cert_file, key_file)
    config.ssl = certificate.context
    state.ready = True
    _Server(config, state, certificate).run()
