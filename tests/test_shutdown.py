"""SIGTERM under load: /readyz turns 503 at once, the server keeps serving through its drain delay,
every request it accepted gets its answer, and it exits on its own within the grace period."""

import json
import signal
import threading
import time
import uuid
from pathlib import Path

import httpx

from tests.kube import load_review
from tests.server import running_server
from webhook.server import GRACEFUL_SHUTDOWN_SECONDS

DRAIN_SECONDS = 1.5
GRACE_SECONDS = 40  # the Deployment's terminationGracePeriodSeconds
CLIENTS = 4


def test_sigterm_under_load_loses_no_accepted_review(tmp_path: Path) -> None:
    seed = load_review("seed-pod")
    answered: dict[str, int] = {}  # uid -> HTTP status, for every answer a client received
    after_sigterm: list[str] = []
    sigterm_sent = threading.Event()
    lock = threading.Lock()

    with running_server(tmp_path / "certs", "--shutdown-delay", str(DRAIN_SECONDS)) as server:

        def load() -> None:
            # Bounded: until the server goes away, 60 s, or 20,000 requests.
            give_up = time.monotonic() + 60
            with server.client() as client:
                for _ in range(20_000):
                    if time.monotonic() > give_up:
                        return
                    uid = str(uuid.uuid4())
                    review = {**seed, "request": {**seed["request"], "uid": uid}}
                    try:
                        answer = client.post(
                            "/mutate",
                            content=json.dumps(review),
                            headers={"content-type": "application/json"},
                        )
                    except httpx.TransportError:
                        return  # refused or closed without an answer: never accepted, never logged
                    with lock:
                        answered[uid] = answer.status_code
                        if sigterm_sent.is_set():
                            after_sigterm.append(uid)

        senders = [threading.Thread(target=load) for _ in range(CLIENTS)]
        for sender in senders:
            sender.start()
        with server.client() as monitor:
            while len(answered) < 200:
                time.sleep(0.01)
            assert monitor.get("/readyz").status_code == 200
            server.process.send_signal(signal.SIGTERM)
            sigterm_sent.set()
            signalled_at = time.monotonic()
            # Through the first half of the drain the server still answers, and says it is draining.
            while time.monotonic() - signalled_at < DRAIN_SECONDS / 2:
                assert monitor.get("/readyz").json() == {"status": "draining"}
                time.sleep(0.05)
        server.process.wait(timeout=GRACE_SECONDS)
        for sender in senders:
            sender.join(timeout=60)
        log = server.log()

    assert server.process.returncode in (0, -signal.SIGTERM)
    assert DRAIN_SECONDS + GRACEFUL_SHUTDOWN_SECONDS < GRACE_SECONDS
    accepted = {entry["uid"] for entry in map(json.loads, log.splitlines()) if "uid" in entry}
    assert accepted, "the server logged the reviews it accepted"
    assert accepted <= set(answered), "every review the server accepted reached its client"
    assert set(answered.values()) == {200}, "no accepted review failed"
    assert after_sigterm, "reviews were still served while draining"
