"""The server side of TLS: its context, and the certificate reloaded when its files change.

Standard library only: the server loads and serves certificates, and making them is the business of
webhook/pki.py, whose `cryptography` would cost the server about 8 MiB of memory for nothing.
"""

import asyncio
import logging
import ssl
from pathlib import Path

CA_CERT, CA_KEY, TLS_CERT, TLS_KEY = "ca.crt", "ca.key", "tls.crt", "tls.key"
# How often the server looks for a new certificate on disk. A Secret volume is updated within about a
# minute of the Secret; a second more is nothing, and reading two small files a second costs nothing.
RELOAD_INTERVAL_SECONDS = 1.0

_log = logging.getLogger("sidecar_webhook.tls")


def has_pair(directory: Path) -> bool:
    """Whether `directory` has a serving certificate and its key."""
    return (directory / TLS_CERT).exists() and (directory / TLS_KEY).exists()


# TLS 1.2 suites: forward secret (ECDHE) and authenticated encryption (AES-GCM, ChaCha20-Poly1305)
# only, as Go's crypto/tls prefers and Mozilla's "intermediate" profile allows. The CBC suites
# OpenSSL offers by default have a history of padding oracles (Lucky13) and are used by no API
# server. TLS 1.3 suites are AEAD by design and set apart by OpenSSL: this string leaves them as they are.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def server_context(cert_file: Path, key_file: Path, client_ca_file: Path | None = None) -> ssl.SSLContext:
    """The server side of TLS: 1.2 at least (what the API server speaks) with AEAD suites only, the
    certificate loaded.

    With `client_ca_file`, clients are asked for a certificate, and one that the CA did not sign (or
    not for client authentication) ends the handshake. A client without one still connects: the
    kubelet's HTTPS probes send none, so the TLS layer can't require it; /mutate does (webhook/app.py).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.load_cert_chain(cert_file, key_file)
    if client_ca_file is not None:
        context.verify_mode = ssl.CERT_OPTIONAL
        try:
            context.load_verify_locations(cafile=client_ca_file)
        except ssl.SSLError as error:
            error.filename = str(client_ca_file)  # OpenSSL names no file: say which one it could not use
            raise
    return context


class ReloadingCertificate:
    """The server's TLS context, with the certificate reloaded in place when its files change.

    A Secret volume updates by swapping a symlink, so the files change under a running server.
    Loading a new chain into the same SSLContext serves it to every new handshake, while connections
    already open keep theirs: no restart, no failed request. A pair that doesn't load (say a
    certificate written before its key) is retried on the next look, the old one served meanwhile.
    """

    def __init__(self, cert_file: Path, key_file: Path, client_ca_file: Path | None = None) -> None:
        self.cert_file, self.key_file = cert_file, key_file
        self._loaded = self._contents()
        self.context = server_context(cert_file, key_file, client_ca_file)

    def _contents(self) -> bytes:
        return self.cert_file.read_bytes() + b"\0" + self.key_file.read_bytes()

    def reload_if_changed(self) -> bool:
        try:
            contents = self._contents()
            if contents == self._loaded:
                return False
            self.context.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as error:
            _log.warning("certificate changed but does not load yet, still serving the old one: %s", error)
            return False
        self._loaded = contents
        _log.info("reloaded the certificate from %s", self.cert_file)
        return True

    async def watch(self, interval: float = RELOAD_INTERVAL_SECONDS) -> None:
        while True:
            await asyncio.sleep(interval)
            self.reload_if_changed()
