"""uvicorn's HTTP/1.1 protocol, with a deadline on each request's headers, one write per response, and
no more TLS read-ahead than uvicorn's own 64 KiB of body.

Deadline: uvicorn closes idle keep-alive connections, but not one whose client connects and sends
nothing, or sends its headers a byte at a time (slowloris): each would hold a connection, and its
memory, for ever. As with Go's ReadHeaderTimeout, a request's headers must be complete within
HEADER_TIMEOUT of the connection opening or of the request's first byte; otherwise the connection
is closed.

One write: uvicorn writes a response's headers and its body as they come, each its own TLS record
and system call. Holding the writes of one turn of the event loop and sending them together, as
Go's buffered response writer does, makes a review one record and one call: 6,600 -> 8,300 reviews/s
(README, "Performance"). Nothing waits longer than that turn.

Client certificate: when the client sent one (the server asks only with --client-ca-file, and the TLS
layer has verified it against that CA by then), each request's scope carries it as the ASGI TLS
extension, for /mutate to require.
"""

import asyncio
import ssl
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# The API server sends a whole review at once; ten seconds is more than any of its calls may last.
HEADER_TIMEOUT_SECONDS = 10.0
# uvicorn stops reading a body once it holds 64 KiB the app hasn't asked for, but the TLS layer
# beneath decrypts ahead into a buffer of its own, 256 KiB a connection by default. Held to uvicorn's
# 64 KiB, 16 clients each sending a 1 MiB pod peak at 79 MiB instead of 82 (README, "Performance"),
# for a tenth of those pods' throughput.
TLS_READ_AHEAD_BYTES = 64 * 1024


class HttpProtocol(HttpToolsProtocol):
    _header_deadline: asyncio.TimerHandle | None = None
    _tls: dict[object, object] | None = None  # the ASGI TLS extension, when the client sent a certificate

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        set_read_ahead = getattr(transport, "set_read_buffer_limits", None)
        if set_read_ahead is not None:  # TLS; plain TCP buffers nothing ahead of uvicorn
            set_read_ahead(high=TLS_READ_AHEAD_BYTES)
        # Called once the handshake is done, so the peer's certificate is known (and verified).
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self._tls = client_certificate_extension(ssl_object)
        super().connection_made(transport)
        # Everything uvicorn writes goes through self.transport; its flow control keeps the real one.
        self.transport = OneWritePerTurn(transport, self.loop)  # type: ignore[assignment]
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._tls is not None:
            self.scope["extensions"] = {"tls": self._tls}

    def data_received(self, data: bytes) -> None:
        between_requests = self.cycle is None or self.cycle.response_complete
        if self._header_deadline is None and between_requests:
            self._arm()  # the first bytes of the next request on a kept-alive connection
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._header_deadline = self.loop.call_later(HEADER_TIMEOUT_SECONDS, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            self.transport.close()


_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def client_certificate_extension(ssl_object: ssl.SSLObject) -> dict[object, object] | None:
    """The ASGI TLS extension of a connection whose client sent a certificate; None if it sent none."""
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    return {
        "server_cert": None,
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)],
        "client_cert_name": None,
        "client_cert_error": None,  # a certificate that failed verification ended the handshake
        "tls_version": _TLS_VERSIONS.get(ssl_object.version() or ""),
        "cipher_suite": None,
    }


class OneWritePerTurn:
    """A transport whose writes in one turn of the event loop reach the real one as a single write,
    in order, at the end of the turn; closing sends what is held first."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport, self._loop = transport, loop
        self._held: list[bytes] = []

    def write(self, data: bytes) -> None:
        self._held.append(data)
        if len(self._held) == 1:
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        if not self._held:
            return
        data, self._held = b"".join(self._held), []
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        # uvicorn asks this on every call: a method of its own, not __getattr__, which Python
        # reaches only after the usual lookup has failed and raised inside.
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
