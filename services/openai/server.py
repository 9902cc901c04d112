"""Run the frontend: ``run(settings)`` blocks under uvicorn (``unfragile serve openai``);
``start(settings)`` serves from a thread and returns once it accepts connections (tests).

As for the gateway, the socket is bound here (``port=0`` works, the real port is known
before the first request, TCP_NODELAY is set) and SIGTERM/SIGINT drain in-flight requests
for ``grace_seconds`` and return normally, so the process exits 0.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import uvicorn

from services.core.metrics import start_metrics_server
from services.openai.app import create_app
from services.openai.settings import Settings

log = logging.getLogger(__name__)


def bind_socket(settings: Settings) -> socket.socket:
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle + delayed-ACK stalls per chunk
    sock.bind((settings.host, settings.port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    """uvicorn, except that a SIGTERM/SIGINT shutdown returns normally (exit 0, like the gRPC services)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def _server(settings: Settings) -> uvicorn.Server:
    tls: dict[str, object] = {}
    if settings.tls_cert_file and settings.tls_key_file:
        tls = {"ssl_certfile": str(settings.tls_cert_file), "ssl_keyfile": str(settings.tls_key_file)}
        if settings.tls_client_ca_file:
            tls.update(ssl_ca_certs=str(settings.tls_client_ca_file), ssl_cert_reqs=ssl.CERT_REQUIRED)
    config = uvicorn.Config(
        create_app(settings), log_level=settings.log_level.lower(), access_log=False,
        timeout_graceful_shutdown=int(settings.grace_seconds) or None, proxy_headers=False, lifespan="on",
        server_header=False, log_config=None, **tls)  # type: ignore[arg-type]
    return _Server(config)


def run(settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT, then drain and return (blocking; call from the main thread)."""
    sock = bind_socket(settings)
    port = sock.getsockname()[1]
    metrics_server = None
    if settings.metrics_port >= 0:
        mport, metrics_server = start_metrics_server(settings.metrics_port, settings.host)
        log.info("openai metrics on http://%s:%s/metrics", settings.host, mport)
    log.info("OpenAI-compatible API on %s/v1 (VisionLanguage at %s, Diffusion at %s)", settings.base_url(port),
             settings.visionlanguage_target or "-", settings.diffusion_target or "-")
    try:
        _server(settings).run(sockets=[sock])
    finally:
        sock.close()
        if metrics_server is not None:
            metrics_server.shutdown()  # type: ignore[attr-defined]


@dataclass
class RunningFrontend:
    """A frontend serving from a background thread."""

    settings: Settings
    port: int
    server: uvicorn.Server
    thread: threading.Thread
    sock: socket.socket

    @property
    def url(self) -> str:
        return self.settings.base_url(self.port)

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()


def start(settings: Settings, timeout: float = 30.0) -> RunningFrontend:
    """Start in a daemon thread (no signal handlers there) and wait until it serves."""
    sock = bind_socket(settings)
    server = _server(settings)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="openai", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("openai frontend thread exited during startup; see the log")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise TimeoutError(f"openai frontend did not start within {timeout:.0f}s")
        time.sleep(0.02)
    return RunningFrontend(settings, sock.getsockname()[1], server, thread, sock)


def wait_until_ready(base_url: str, timeout: float = 60.0) -> None:
    """Block until ``/readyz`` answers 200 (for ``unfragile up``)."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base_url.rstrip('/')}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except urllib.error.HTTPError as err:
            last = f"HTTP {err.code}"
        except OSError as err:
            last = str(err)
        time.sleep(0.2)
    raise TimeoutError(f"{base_url} not ready within {timeout:.0f}s (last: {last})")
