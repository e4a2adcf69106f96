"""One write per response: a review's answer leaves the server as one TLS record, and the transport
wrapper that does it keeps order and sends what it holds before closing. And no TLS read-ahead
beyond what uvicorn itself buffers of a body."""

import asyncio
import json
import socket
import ssl
import struct
from pathlib import Path

import uvicorn
import uvloop
from uvicorn.server import ServerState

from tests.kube import load_review
from tests.server import RunningServer
from webhook.protocol import TLS_READ_AHEAD_BYTES, HttpProtocol, OneWritePerTurn

APPLICATION_DATA = 23


class Recording(asyncio.Transport):
    """Stands in for the socket's transport, to see the writes the wrapper makes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def test_writes_of_one_turn_go_out_together_after_it_and_in_order() -> None:
    async def scenario() -> list[bytes]:
        transport = Recording()
        wrapper = OneWritePerTurn(transport, asyncio.get_running_loop())
        wrapper.write(b"headers,")
        wrapper.write(b"body")
        assert transport.writes == [], "held until the end of the turn"
        await asyncio.sleep(0)
        wrapper.write(b"next")
        await asyncio.sleep(0)
        return transport.writes

    assert asyncio.run(scenario()) == [b"headers,body", b"next"]


def test_close_sends_what_is_held_first_and_later_writes_go_nowhere() -> None:
    async def scenario() -> Recording:
        transport = Recording()
        wrapper = OneWritePerTurn(transport, asyncio.get_running_loop())
        wrapper.write(b"last answer")
        wrapper.close()
        wrapper.write(b"after close")
        await asyncio.sleep(0)
        return transport

    transport = asyncio.run(scenario())
    assert transport.writes == [b"last answer"] and transport.closed


def records_until(
    raw: socket.socket, client: ssl.SSLObject, incoming: ssl.MemoryBIO, end: bytes
) -> list[int]:
    """Read raw TLS records off the socket until the decrypted stream holds `end`; their types."""
    types, plain, buffered = [], b"", b""
    while end not in plain:
        buffered += raw.recv(65536)
        while len(buffered) >= 5:
            kind, _, length = struct.unpack("!BHH", buffered[:5])
            if len(buffered) < 5 + length:
                break
            types.append(kind)
            incoming.write(buffered[: 5 + length])
            buffered = buffered[5 + length :]
        try:
            while chunk := client.read(65536):
                plain += chunk
        except ssl.SSLWantReadError:
            pass
    return types


def test_a_review_is_answered_in_one_tls_record(server: RunningServer) -> None:
    body = json.dumps(load_review("seed-pod")).encode()
    request = (
        b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = server.tls_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        while True:  # the handshake, by hand over the socket
            try:
                client.do_handshake()
                break
            except ssl.SSLWantReadError:
                raw.sendall(outgoing.read())
                incoming.write(raw.recv(65536))
        raw.sendall(outgoing.read())
        # TLS 1.3 servers send session tickets after the handshake: let them arrive and read them.
        raw.settimeout(0.5)
        try:
            incoming.write(raw.recv(65536))
            client.read(65536)
        except (TimeoutError, ssl.SSLWantReadError):
            pass
        raw.settimeout(10)
        client.write(request)
        raw.sendall(outgoing.read())
        types = records_until(raw, client, incoming, b'"kind":"AdmissionReview"')
    assert types == [APPLICATION_DATA], f"the answer came in {len(types)} records"


def test_a_tls_connection_decrypts_no_further_ahead_than_uvicorn_buffers(server: RunningServer) -> None:
    """On the server's own event loop and TLS transport: the buffer of TLS input that uvicorn has
    not taken yet is held to 64 KiB (its default is 256 KiB a connection: 3 MiB more at the peak
    of 16 clients sending 1 MiB pods at once)."""
    certs: Path = server.cert_dir
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(certs / "tls.crt", certs / "tls.key")

    async def scenario() -> tuple[int, int]:
        config = uvicorn.Config(app=unused_app, http=HttpProtocol, lifespan="off")
        config.load()
        made: list[HttpProtocol] = []

        def protocol() -> HttpProtocol:
            made.append(HttpProtocol(config=config, server_state=ServerState(), app_state={}))
            return made[-1]

        listener = await asyncio.get_running_loop().create_server(protocol, "127.0.0.1", 0, ssl=tls)
        port = listener.sockets[0].getsockname()[1]
        async with asyncio.timeout(10):
            _, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=server.tls_context(), server_hostname="localhost"
            )
            while not made or made[0].transport is None:  # the server's side of the handshake
                await asyncio.sleep(0.01)
        limits: tuple[int, int] = made[0].transport.get_read_buffer_limits()
        writer.close()
        listener.close()
        return limits

    low, high = uvloop.run(scenario())
    assert high == TLS_READ_AHEAD_BYTES == 64 * 1024 and low <= high


async def unused_app(scope: object, receive: object, send: object) -> None:
    raise AssertionError("no request is sent")
