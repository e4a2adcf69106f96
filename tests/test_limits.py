"""Limits against clients that are slow, silent or many: the server closes or refuses them on time,
and keeps answering everyone else meanwhile."""

import asyncio
import json
import socket
import ssl
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from tests.kube import load_review
from tests.server import RunningServer
from webhook import app, pki
from webhook.app import BODY_TIMEOUT_SECONDS
from webhook.protocol import HEADER_TIMEOUT_SECONDS
from webhook.settings import Settings

# How long past a deadline the server may take to act on it, at most.
SLACK_SECONDS = 10


def tls_connection(server: RunningServer, timeout: float) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
    return server.tls_context().wrap_socket(raw, server_hostname="localhost")


def read_until_closed(connection: ssl.SSLSocket) -> bytes:
    """Everything the server sends until it closes the connection (the socket timeout bounds it)."""
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    return received


def silent_client(server: RunningServer) -> bytes:
    with tls_connection(server, HEADER_TIMEOUT_SECONDS + SLACK_SECONDS) as connection:
        return read_until_closed(connection)


def slow_headers(server: RunningServer) -> bytes:
    with tls_connection(server, HEADER_TIMEOUT_SECONDS + SLACK_SECONDS) as connection:
        connection.sendall(b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: applic")
        return read_until_closed(connection)


def slow_headers_after_a_request(server: RunningServer) -> bytes:
    """On a kept-alive connection: one request answered, then a second whose headers never end."""
    with tls_connection(server, HEADER_TIMEOUT_SECONDS + SLACK_SECONDS) as connection:
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        first = b""
        while b'{"status":"ok"}' not in first:
            first += connection.recv(65536)
        connection.sendall(b"POST /mutate HTTP/1.1\r\nHost: loc")
        return read_until_closed(connection)


def slow_body(server: RunningServer) -> bytes:
    with tls_connection(server, BODY_TIMEOUT_SECONDS + SLACK_SECONDS) as connection:
        connection.sendall(
            b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b'Content-Length: 5000\r\n\r\n{"apiVersion":'
        )
        return read_until_closed(connection)


def test_slow_and_silent_clients_are_cut_off_while_others_are_served(server: RunningServer) -> None:
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=4) as pool:
        silent, headers, headers_later, body = (
            pool.submit(f, server)
            for f in (silent_client, slow_headers, slow_headers_after_a_request, slow_body)
        )
        # Meanwhile, ordinary calls are answered at once.
        with server.client() as client:
            for _ in range(20):
                assert client.get("/healthz").status_code == 200
                review = client.post(
                    "/mutate",
                    content=json.dumps(load_review("seed-pod")),
                    headers={"content-type": "application/json"},
                )
                assert review.status_code == 200
        assert silent.result() == b"", "a client that never sends a request is closed without an answer"
        assert headers.result() == b"", "headers that never complete are closed without an answer"
        assert headers_later.result() == b"", "so are those of a later request on the same connection"
        answer = body.result().decode()
    assert answer.startswith("HTTP/1.1 408"), answer
    assert '"error":"the body did not arrive within' in answer
    assert time.monotonic() - started < max(HEADER_TIMEOUT_SECONDS, BODY_TIMEOUT_SECONDS) + SLACK_SECONDS


def test_many_open_connections_do_not_stop_health_checks_and_reviews(server: RunningServer) -> None:
    # 300 connections that sit idle after the handshake, as a slowloris would open them.
    with ThreadPoolExecutor(max_workers=16) as pool:
        idle = list(pool.map(lambda _: tls_connection(server, 30), range(300)))
    try:
        with server.client() as client:
            for _ in range(10):
                assert client.get("/healthz").json() == {"status": "ok"}
            review = client.post(
                "/mutate",
                content=json.dumps(load_review("seed-pod")),
                headers={"content-type": "application/json"},
            )
            assert review.status_code == 200 and review.json()["response"]["allowed"] is True
    finally:
        for connection in idle:
            connection.close()


def test_tls_1_0_and_1_1_are_refused(server: RunningServer) -> None:
    for version in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        client = old_tls_client(version)
        if not can_speak(client, version):
            pytest.skip(
                f"this machine's OpenSSL cannot speak {version.name} at all, so a refusal proves nothing"
            )
        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
            pytest.raises(ssl.SSLError),
        ):
            client.wrap_socket(raw, server_hostname="localhost")


def old_tls_client(version: ssl.TLSVersion) -> ssl.SSLContext:
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
    with warnings.catch_warnings():  # these versions are deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        client.minimum_version = client.maximum_version = version
    client.set_ciphers("DEFAULT:@SECLEVEL=0")
    return client


def can_speak(client: ssl.SSLContext, version: ssl.TLSVersion) -> bool:
    """Whether `client` completes a handshake with a local server that does accept `version`."""
    directory = Path(tempfile.mkdtemp())
    pki.ensure_development_certificate(directory)
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        server_side.minimum_version = version
    server_side.set_ciphers("DEFAULT:@SECLEVEL=0")
    server_side.load_cert_chain(f"{directory}/tls.crt", f"{directory}/tls.key")
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def accept() -> None:
            connection, _ = listener.accept()
            try:
                server_side.wrap_socket(connection, server_side=True).close()
            except (ssl.SSLError, OSError):
                connection.close()

        thread = threading.Thread(target=accept)
        thread.start()
        try:
            with (
                socket.create_connection(listener.getsockname(), timeout=10) as raw,
                client.wrap_socket(raw) as connection,
            ):
                return (
                    connection.version()
                    == {ssl.TLSVersion.TLSv1: "TLSv1", ssl.TLSVersion.TLSv1_1: "TLSv1.1"}[version]
                )
        except (ssl.SSLError, OSError):
            return False
        finally:
            thread.join(timeout=10)


def test_large_bodies_are_read_a_few_at_a_time_and_small_ones_never_wait(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The app in this process, called as uvicorn calls it, with a short body deadline. Clients that
    stall in a large body take every turn, then as many more queue behind them: the first are cut off
    at their deadline (408), the last are refused for want of a turn (503), and a small review is
    answered at once meanwhile."""
    monkeypatch.setattr(app, "BODY_TIMEOUT_SECONDS", 0.5)
    small = json.dumps(load_review("seed-pod")).encode()
    turns = app.LARGE_BODIES_AT_ONCE

    async def call(endpoints: FastAPI, declared: int, body: bytes | None) -> tuple[int, bytes]:
        async def receive() -> dict[str, object]:
            if body is None:
                await asyncio.Event().wait()  # a client that stalls in its body
            return {"type": "http.request", "body": body, "more_body": False}

        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        headers = [(b"content-type", b"application/json"), (b"content-length", str(declared).encode())]
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/mutate",
            "query_string": b"",  # ASGI requires it; FastAPI reads it
            "headers": headers,
        }
        await endpoints(scope, receive, send)  # type: ignore[arg-type]
        return sent[0]["status"], sent[1]["body"]

    async def scenario() -> None:
        endpoints = app.create_app(settings)
        large = 1024 * 1024
        holders = [asyncio.create_task(call(endpoints, large, None)) for _ in range(turns)]
        await asyncio.sleep(0.05)
        queued = [asyncio.create_task(call(endpoints, large, None)) for _ in range(2 * turns)]
        await asyncio.sleep(0.05)
        status, answer = await call(endpoints, len(small), small)
        assert status == 200 and json.loads(answer)["response"]["allowed"] is True
        assert not any(task.done() for task in holders + queued), "the small review did not wait for them"
        assert [(await task)[0] for task in holders] == [408] * turns
        # The first `turns` of the queue get the turns the holders leave and stall in their turn (408);
        # the others are still waiting for one at their deadline.
        answers = [await task for task in queued]
        assert [status for status, _ in answers] == [408] * turns + [503] * turns
        assert b"other large reviews were being read" in answers[-1][1]

    asyncio.run(scenario())
