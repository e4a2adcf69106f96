"""The attacks of the security review (issue 18), each against the real server over real TLS, from
127.0.0.1 only, bounded in count and time. While each runs, an honest client reviews pods as the API
server does (TLS that trusts only the CA, the API server's 5 s timeout): none of its calls may fail,
and the server's peak memory stays under a bound well below the Deployment's limit of 256 MiB.

Run with `-s` to see, for each attack, the server's peak memory and the honest client's calls.
"""

import copy
import json
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.kube import load_review
from tests.server import RunningServer
from webhook.server import MAX_CONNECTIONS

# The webhook configuration's timeoutSeconds (deploy/base): an answer later than this is, to the API
# server, no answer, and with failurePolicy Fail the pod is refused. The honest client's only deadline.
API_SERVER_TIMEOUT_SECONDS = 5.0
# The Deployment's memory limit is 256Mi and the server idles near 55 MiB: each attack must leave it
# far from the limit, with room for the reviews it serves meanwhile. The attacks run one after another
# on one server, which keeps some of what the floods of connections took (50 to 60 KiB each, up to the
# connection limit): the last peaks near 115 MiB.
PEAK_MEMORY_MIB = 150
# How long to wait for the server to act on a deadline of its own (10 s) before the test gives up: a
# bound that makes the test end, not a timing it asserts.
WAIT_SECONDS = 30
# The attacks that run for a time run this long: several turns of every limit they meet (a turn of
# the large-body gate, a header deadline), a few seconds of the test's time.
ATTACK_SECONDS = 4.0


def review_of(size: int) -> bytes:
    """The seed pod's review, padded with an annotation to about `size` bytes (the API server allows
    256 KiB of annotations)."""
    review = load_review("seed-pod")
    body = json.dumps(review).encode()
    if size > len(body):
        review["request"]["object"]["metadata"]["annotations"]["example.com/padding"] = "x" * (
            size - len(body)
        )
        body = json.dumps(review).encode()
    return body


JSON = {"content-type": "application/json"}
SMALL_REVIEW = review_of(0)
LARGE_REVIEW = review_of(100_000)  # the review that trickling bodies pushed to 9.5 s


@dataclass
class Honest:
    """The API server's side: reviews, one after another on kept-alive connections, until stopped."""

    server: RunningServer
    bodies: tuple[bytes, ...] = (SMALL_REVIEW, LARGE_REVIEW)
    calls: int = 0
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(
            base_url=self.server.url, verify=self.server.tls_context(), timeout=API_SERVER_TIMEOUT_SECONDS
        ) as client:
            while not self.stop.is_set():
                body = self.bodies[self.calls % len(self.bodies)]
                self.calls += 1
                try:
                    answer = client.post("/mutate", content=body, headers=JSON)
                    if answer.status_code != 200 or answer.json()["response"]["allowed"] is not True:
                        self.failures.append(f"{answer.status_code}: {answer.text[:200]}")
                except httpx.HTTPError as error:  # a timeout included: past the API server's deadline
                    self.failures.append(f"{type(error).__name__}: {error}")
                self.stop.wait(0.02)  # the pace of a busy cluster, not a loop that starves the attack


@dataclass
class Outcome:
    peak_mib: float
    honest: Honest


@contextmanager
def attacked(server: RunningServer, name: str) -> Iterator[Outcome]:
    """Around an attack: the server's peak memory from its start, and an honest client throughout."""
    status = f"/proc/{server.process.pid}/status"
    with open(f"/proc/{server.process.pid}/clear_refs", "w") as clear:
        clear.write("5")  # the peak resident size starts again from the current one
    honest = Honest(server)
    outcome = Outcome(0.0, honest)
    worker = threading.Thread(target=honest.run)
    worker.start()
    try:
        yield outcome
    finally:
        honest.stop.set()
        worker.join()
        with open(status) as lines:
            peak_kib = next(int(line.split()[1]) for line in lines if line.startswith("VmHWM:"))
        outcome.peak_mib = peak_kib / 1024
        print(
            f"\n{name}: peak {outcome.peak_mib:.0f} MiB; honest client: {len(honest.failures)} of "
            f"{honest.calls} calls failed{': ' + honest.failures[0] if honest.failures else ''}"
        )


def assert_held_up(outcome: Outcome) -> None:
    honest = outcome.honest
    assert honest.calls >= 3, "the honest client made too few calls to tell"
    assert honest.failures == [], f"{len(honest.failures)} of {honest.calls} honest calls failed"
    assert outcome.peak_mib < PEAK_MEMORY_MIB


def tls_connection(server: RunningServer, timeout: float = WAIT_SECONDS) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
    return server.tls_context().wrap_socket(raw, server_hostname="localhost")


def read_until_closed(connection: socket.socket) -> bytes:
    """All the server sends until it closes (a reset counts as closed); the socket timeout bounds it."""
    received = b""
    try:
        while chunk := connection.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def sending_until_answered(
    connection: ssl.SSLSocket, chunk: bytes, most: int, stop: threading.Event, every: float = 0.0
) -> bytes:
    """Send `chunk` again and again (as fast as the server takes it, or one every `every` seconds),
    `most` bytes at the most, until the server answers; then all it sends until it closes. Never
    blocked in a send: a server that has stopped reading would reset the connection under a blocked
    sender, and the reset would take its answer with it."""
    connection.setblocking(False)
    watch = selectors.DefaultSelector()
    wanted = selectors.EVENT_READ if every else selectors.EVENT_READ | selectors.EVENT_WRITE
    watch.register(connection, wanted)
    sent, answer, deadline = 0, b"", time.monotonic() + WAIT_SECONDS
    try:
        while not answer and time.monotonic() < deadline:
            ready = watch.select(every or deadline - time.monotonic())
            events = ready[0][1] if ready else selectors.EVENT_WRITE  # quiet for `every`: time to send
            if events & selectors.EVENT_READ:
                try:
                    answer = connection.recv(65536) or b"(closed)"
                except ssl.SSLWantReadError:
                    continue  # TLS records of its own (session tickets), not an answer
            if not answer and events & selectors.EVENT_WRITE and sent < most and not stop.is_set():
                with suppress(ssl.SSLWantWriteError, ssl.SSLWantReadError):
                    sent += connection.send(chunk)
    except (ConnectionError, ssl.SSLError):
        return answer
    finally:
        watch.close()
    connection.settimeout(WAIT_SECONDS)
    return answer if answer == b"(closed)" else answer + read_until_closed(connection)


def closed_by_server(connections: list[Any], seconds: float) -> int:
    """How many of `connections` the server closes within `seconds` (a bound, so the test ends)."""
    selector = selectors.DefaultSelector()
    for connection in connections:
        connection.setblocking(False)
        selector.register(connection, selectors.EVENT_READ)
    closed, deadline = 0, time.monotonic() + seconds
    while closed < len(connections) and (left := deadline - time.monotonic()) > 0:
        for key, _ in selector.select(left):
            try:
                ended = key.fileobj.recv(65536) == b""  # type: ignore[union-attr]
            except (ssl.SSLWantReadError, BlockingIOError):
                continue
            except (ConnectionError, ssl.SSLError):
                ended = True
            if ended:
                selector.unregister(key.fileobj)
                closed += 1
    selector.close()
    return closed


def test_endless_headers_are_cut_off_at_a_cap_with_431(server: RunningServer) -> None:
    """Headers sent as fast as the connection takes them, on two connections, again and again: the
    server stops each at a cap, answers 431 with a JSON body and closes, instead of holding all of it."""
    most = 64 * 1024 * 1024  # per connection: the attack's own bound, far past any cap
    stop = threading.Event()

    def again_and_again(_: int) -> list[bytes]:
        answers = [endless_headers()]
        while not stop.is_set():
            answers.append(endless_headers())
        return answers

    def endless_headers() -> bytes:
        with tls_connection(server) as connection:
            connection.sendall(b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nX-Fill: ")
            return sending_until_answered(connection, b"a" * 65536, most, threading.Event())

    with attacked(server, "endless headers on 2 connections") as outcome, ThreadPoolExecutor(2) as pool:
        attackers = [pool.submit(again_and_again, i) for i in range(2)]
        outcome.honest.stop.wait(ATTACK_SECONDS)
        stop.set()
        answers = [answer for attacker in attackers for answer in attacker.result()]
    assert_held_up(outcome)
    for answer in answers:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 431 "), answer[:200]
        assert b"connection: close" in head.lower()
        assert json.loads(body)["error"].startswith("the request's headers are larger than")


def test_headers_over_the_cap_that_arrive_whole_in_one_read_get_431_too(server: RunningServer) -> None:
    with tls_connection(server) as connection:
        connection.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Fill: %s\r\n\r\n" % (b"a" * 40_000)
        )
        answer = read_until_closed(connection)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert server.process.poll() is None


@pytest.mark.parametrize("kind", ["idle", "stalled in a body"])
def test_connections_waiting_on_their_clients_are_closed_to_make_room_instead_of_refusing_reviews(
    server: RunningServer, kind: str
) -> None:
    """More connections than the server holds, each kept alive and idle after one call, or each stalled
    in a small body (which, unlike a large one, waits for no turn): those that have waited the
    longest are closed to make room, and reviews go on."""
    count = 1100  # the review held 1,000; more than the server holds, whatever its limit

    def waiting_connection(_: int) -> ssl.SSLSocket:
        connection = tls_connection(server)
        if kind == "stalled in a body":
            connection.sendall(
                b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                b"Content-Length: 5000\r\n\r\n{"
            )
            return connection
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += connection.recv(65536)
        return connection

    with attacked(server, f"{count} connections {kind}") as outcome:
        with ThreadPoolExecutor(16) as pool:
            waiting = list(pool.map(waiting_connection, range(count)))
        try:
            # Held while the honest client goes on, then counted: the server closed the oldest ones.
            outcome.honest.stop.wait(1.0)
            closed = closed_by_server(waiting, 1.0)
        finally:
            for connection in waiting:
                connection.close()
    assert_held_up(outcome)
    assert closed >= count - MAX_CONNECTIONS


def test_tls_handshakes_that_never_finish_are_cut_off(server: RunningServer) -> None:
    """Connections that never finish their TLS handshake, silent or stopped inside a ClientHello: the
    server closes each one (on its own deadline; uvloop's default would hold them for a minute)."""
    count = 300
    # A TLS record header announcing a ClientHello of 512 bytes, and then nothing.
    partial_hello = bytes([22, 3, 1, 2, 0, 1, 0, 1, 252])

    def half_open(index: int) -> socket.socket:
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_SECONDS)
        if index % 2:
            raw.sendall(partial_hello)
        return raw

    with attacked(server, f"{count} unfinished TLS handshakes") as outcome:
        with ThreadPoolExecutor(16) as pool:
            stalled = list(pool.map(half_open, range(count)))
        try:
            closed = closed_by_server(stalled, WAIT_SECONDS)
        finally:
            for connection in stalled:
                connection.close()
    assert_held_up(outcome)
    assert closed == count


def test_bodies_trickled_by_many_clients_do_not_hold_up_a_large_review(server: RunningServer) -> None:
    """Clients that declare a 100 kB body and send it a byte at a time, each starting again as soon
    as the server cuts it off: an honest 100 kB review still comes through in time."""
    declared = 100_000
    stop = threading.Event()
    cut_off: list[bytes] = []

    def trickle(_: int) -> None:
        while not stop.is_set():
            with tls_connection(server) as connection:
                connection.sendall(
                    b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n{" % declared
                )
                answer = sending_until_answered(connection, b" ", declared - 2, stop, every=0.05)
                if not stop.is_set():
                    cut_off.append(answer[:12])

    with attacked(server, "8 clients trickling 100 kB bodies") as outcome:
        outcome.honest.bodies = (LARGE_REVIEW,)
        with ThreadPoolExecutor(8) as pool:
            tricklers = [pool.submit(trickle, i) for i in range(8)]
            outcome.honest.stop.wait(ATTACK_SECONDS)
            stop.set()
            for trickler in tricklers:
                trickler.result()
    assert_held_up(outcome)
    assert cut_off and all(answer.startswith(b"HTTP/1.1 408") for answer in cut_off), cut_off[:3]


def costly_review(containers: int, name_digits: int = 5) -> bytes:
    """A review of a pod with `containers` containers and 8 log files in 8 directories."""
    review = copy.deepcopy(load_review("seed-pod"))
    pod = review["request"]["object"]
    pod["metadata"]["annotations"]["sidecar.example/log-path"] = ",".join(
        f"/logs/{i}/app.log" for i in range(8)
    )
    pod["spec"]["containers"] = [{"name": f"c{i:0{name_digits}d}", "image": "x"} for i in range(containers)]
    return json.dumps(review, separators=(",", ":")).encode()


def test_pods_that_would_cost_too_much_are_refused_at_once(server: RunningServer) -> None:
    """The 1 MB pod of 26,500 containers with 8 log paths, six at a time, and 7.7 MB of containers sent
    straight to the port: each is refused with a small answer saying why, and reviews go on."""
    pods = [costly_review(26_500)] * 6 + [costly_review(230_000, name_digits=6)]
    stop = threading.Event()
    answers: list[tuple[int, int, str]] = []

    def send(body: bytes) -> None:
        with httpx.Client(base_url=server.url, verify=server.tls_context(), timeout=WAIT_SECONDS) as client:
            while not stop.is_set():
                answer = client.post("/mutate", content=body, headers=JSON)
                answers.append((answer.status_code, len(answer.content), answer.text[:300]))

    name = "6 pods of 26,500 containers and 7.7 MB of containers"
    with attacked(server, name) as outcome, ThreadPoolExecutor(len(pods)) as pool:
        attackers = [pool.submit(send, body) for body in pods]
        outcome.honest.stop.wait(ATTACK_SECONDS)
        stop.set()
        for attacker in attackers:
            attacker.result()
    assert_held_up(outcome)
    assert answers
    for status, size, text in answers:
        assert status == 413 and size < 1000, (status, size, text)
        assert "JSON objects" in json.loads(text)["error"]


def test_the_attacks_left_the_server_running(server: RunningServer) -> None:
    assert server.process.poll() is None
    with server.client() as client:
        assert client.get("/healthz").status_code == 200
    assert "Traceback" not in server.log()
