"""uvicorn's HTTP/1.1 protocol, with a deadline and a size cap on each request's headers, idle
connections closed to make room for new ones, one write per response, and no more TLS read-ahead
than uvicorn's own 64 KiB of body.

Deadline: uvicorn closes idle keep-alive connections, but not one whose client connects and sends
nothing, or sends its headers a byte at a time (slowloris): each would hold a connection, and its
memory, for ever. As with Go's ReadHeaderTimeout, a request's headers must be complete within
HEADER_TIMEOUT of the connection opening or of the request's first byte; otherwise the connection
is closed. And they must fit in MAX_HEADER_BYTES: httptools keeps a header it has not seen the end
of in memory, without a limit of its own (one client sent 256 MiB of header in 2 s); beyond the cap
the answer is 431 and the connection is closed.

Room for new connections: uvicorn answers 503 to every request while MAX_CONNECTIONS connections are
open, idle ones included, so a client holding that many idle connections stopped all injection. As
nginx does, a connection that opens near the limit closes the connection that has waited on its client
the longest instead, if that is more than CLOSABLE_AFTER_SECONDS: idle (kept alive between requests,
or not yet past its headers), or still sending its body. Only a server whose connections are all busy
with a request, or began to wait just now, answers 503.

One write: uvicorn writes a response's headers and its body as they come, each its own TLS record
and system call. Holding the writes of one turn of the event loop and sending them together, as
Go's buffered response writer does, makes a review one record and one call: 6,600 -> 8,300 reviews/s
(docs/performance.md). Nothing waits longer than that turn.

Client certificate: when the client sent one (the server asks only with --client-ca-file, and the TLS
layer has verified it against that CA by then), each request's scope carries it as the ASGI TLS
extension, for /mutate to require.
"""

import asyncio
import heapq
import logging
import ssl
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from webhook.admission import refuse

# The API server sends a whole review at once; ten seconds is more than any of its calls may last.
HEADER_TIMEOUT_SECONDS = 10.0
# uvicorn stops reading a body once it holds 64 KiB the app hasn't asked for, but the TLS layer
# beneath decrypts ahead into a buffer of its own, 256 KiB a connection by default. Held to uvicorn's
# 64 KiB, 16 clients each sending a 1 MiB pod peak at 79 MiB instead of 82 (docs/performance.md),
# for a tenth of those pods' throughput.
TLS_READ_AHEAD_BYTES = 64 * 1024
# The API server's call carries a few hundred bytes of headers (a bearer token, if its
# AdmissionConfiguration gives one, adds a kilobyte or two). 32 KiB is nginx's default for all of a
# request's headers (4 buffers of 8k) and twice what uvicorn's own h11 parser allows; at the worst,
# every one of the 500 connections allowed in the middle of its headers, it is 16 MiB in all.
# Checked twice: on the headers once parsed (request line and fields, exactly), and, for headers
# that don't end, on the reads that end with them still incomplete (so what one read brings beyond
# the cap, at most a TLS read of 64 KiB, is in memory when it is refused).
MAX_HEADER_BYTES = 32 * 1024
# A connection that has waited on its client this long, idle or in the middle of its body, may be
# closed to make room. The API server sends a body right behind its headers, in milliseconds; and a
# connection in use is idle between its calls for less than this, so it is not closed under a request
# its client is sending at that moment (which would be lost). Whoever would keep the server full of
# connections younger than this must open them faster than MAX_CONNECTIONS every half second.
CLOSABLE_AFTER_SECONDS = 0.5
# uvicorn answers 503 at its limit of connections or of requests in flight. Room is made this far
# below it: the request of a connection closed to make room ends a turn or two of the event loop
# later, and until then it still counts.
HEADROOM = 32

_log = logging.getLogger("sidecar_webhook.server")
_HEADERS_TOO_LARGE = refuse(431, f"the request's headers are larger than {MAX_HEADER_BYTES} bytes").body


class HttpProtocol(HttpToolsProtocol):
    _header_deadline: asyncio.TimerHandle | None = None
    _tls: dict[object, object] | None = None  # the ASGI TLS extension, when the client sent a certificate
    _header_bytes = 0
    # Since when the connection has waited on its client: opened, or its last answer sent (idle), or
    # its headers read (its body to come); None while the server works on a whole request. Of those
    # that may be closed to make room, the one waiting the longest goes first.
    _waiting_since: float | None = None

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
        self._waiting_since = self.loop.time()
        self._make_room()
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._tls is not None:
            self.scope["extensions"] = {"tls": self._tls}

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return  # refused or closed to make room: nothing more is read
        between_requests = self.cycle is None or self.cycle.response_complete
        if self._header_deadline is None and between_requests:
            self._arm()  # the first bytes of the next request on a kept-alive connection
        reading_headers = self._header_deadline is not None
        super().data_received(data)
        # This whole read was headers so far (unless the parser refused them and closed already).
        if reading_headers and self._header_deadline is not None and not self.transport.is_closing():
            self._header_bytes += len(data)
            if self._header_bytes > MAX_HEADER_BYTES:
                self._headers_too_large()

    def on_headers_complete(self) -> None:
        if self.transport.is_closing():
            return  # a request behind one refused in the same read: nothing more is served
        self._disarm()
        self._waiting_since = self.loop.time()
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > MAX_HEADER_BYTES:
            self._headers_too_large(parsing=True)
            return
        self._make_room()  # uvicorn counts the connections again for each request
        super().on_headers_complete()

    # Refused in its headers, a request has no cycle: what the parser still finds of it goes nowhere.
    def on_body(self, body: bytes) -> None:
        if not self.transport.is_closing():
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._waiting_since = None
        if not self.transport.is_closing():
            super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline:
            self._waiting_since = self.loop.time()

    def _make_room(self) -> None:
        """Near the connection limit, close the connections that have waited on their clients the
        longest, so that this one counts below it (uvicorn answers 503 to every request at it)."""
        if self.limit_concurrency is None or len(self.connections) < self.limit_concurrency - HEADROOM:
            return
        limit = self.limit_concurrency - HEADROOM
        # Closing connections count no more: uvicorn drops them only once lost, which a TLS close
        # puts off until the client answers it, or for webhook/server.py's TLS_SHUTDOWN_TIMEOUT_SECONDS.
        self.connections.difference_update([c for c in self.connections if c.transport.is_closing()])
        excess = len(self.connections) - limit + 1
        if excess <= 0:
            return
        since = self.loop.time() - CLOSABLE_AFTER_SECONDS
        waiting = [
            c
            for c in self.connections
            if isinstance(c, HttpProtocol) and c._waiting_since is not None and c._waiting_since < since
        ]
        for connection in heapq.nsmallest(excess, waiting, key=_waiting_order):
            connection._waiting_since = None
            # At once, not by a TLS close that waits for a client that may never answer it: until
            # then the connection holds its memory, and its request's task counts against the limit.
            connection.transport.abort()
            self.connections.discard(connection)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._header_bytes = 0
        self._header_deadline = self.loop.call_later(HEADER_TIMEOUT_SECONDS, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            self.transport.close()

    def _headers_too_large(self, parsing: bool = False) -> None:
        """431 and close: what follows the cap cannot be told from the next request."""
        self._disarm()
        self.transport.write(
            STATUS_LINE[431] + b"content-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (len(_HEADERS_TOO_LARGE), _HEADERS_TOO_LARGE)
        )
        self.transport.close()
        if not parsing:  # the header so far lives in the parser: let it go now, not with the connection
            self.parser = type(self.parser)(self)
        _log.warning("closed a connection whose request headers exceeded %d bytes", MAX_HEADER_BYTES)


def _waiting_order(connection: HttpProtocol) -> float:
    return connection._waiting_since or 0.0


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
