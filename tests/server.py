"""Start the real `sidecar-webhook serve` process for a test module, and clients that trust its CA."""

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

STARTUP_SECONDS = 20


@dataclass
class RunningServer:
    process: subprocess.Popen[bytes]
    port: int
    cert_dir: Path
    log_file: Path
    metrics_port: int = 0

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    def metrics(self) -> str:
        """What the plain-HTTP metrics port serves at /metrics."""
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).raise_for_status().text

    def tls_context(self) -> ssl.SSLContext:
        """What the API server does: trust only the caBundle, check the host name."""
        return ssl.create_default_context(cafile=self.cert_dir / "ca.crt")

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=self.tls_context(), timeout=10)

    def log(self) -> str:
        return self.log_file.read_text()


def free_port() -> int:
    (port,) = free_ports(1)
    return port


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports (all held open while choosing, so none repeats)."""
    with ExitStack() as sockets:
        bound = [sockets.enter_context(socket.socket()) for _ in range(count)]
        for s in bound:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in bound]


def start_server(
    cert_dir: Path, *extra: str, env: dict[str, str] | None = None, port: int | None = None
) -> RunningServer:
    """`sidecar-webhook serve` on `port` (a free one by default), its metrics on another free port, with
    `extra` flags, its output in a log file; not waited for."""
    port = port or free_port()
    metrics_port = free_port()
    log_file = cert_dir.parent / f"server-{port}.log"
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "webhook",
                "serve",
                "--port",
                str(port),
                "--metrics-port",
                str(metrics_port),
                "--cert-dir",
                str(cert_dir),
                *extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    return RunningServer(process, port, cert_dir, log_file, metrics_port)


def stop_server(server: RunningServer) -> None:
    stop_process(server.process)


def stop_process(process: subprocess.Popen[bytes], seconds: float = 30) -> None:
    """SIGTERM, and SIGKILL if it still runs after `seconds`; only this process, by its handle."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def running_server(cert_dir: Path, *extra: str, env: dict[str, str] | None = None) -> Iterator[RunningServer]:
    server = start_server(cert_dir, *extra, env=env)
    try:
        wait_until_ready(server)
        yield server
    finally:
        stop_server(server)


def wait_until_ready(server: RunningServer) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"the server exited with {server.process.returncode}:\n{server.log()}")
        if (server.cert_dir / "ca.crt").exists():
            try:
                with server.client() as client:
                    if client.get("/readyz").status_code == 200:
                        return
            except (httpx.TransportError, ssl.SSLError, OSError):
                pass
        time.sleep(0.05)
    raise RuntimeError(f"the server was not ready within {STARTUP_SECONDS} s:\n{server.log()}")
