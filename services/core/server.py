"""Server lifecycle shared by every service.

start -> health NOT_SERVING -> load model -> SERVING -> ... -> SIGTERM -> NOT_SERVING,
refuse new RPCs (UNAVAILABLE), drain in-flight ones for ``grace_seconds`` ->
release the model -> exit 0. Modelled on vLLM's ``grpc_server.py`` and grpc's
``health_checking`` example.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.core import metrics
from services.core.client import message_options
from services.core.health import HealthServicer
from services.core.interceptor import ErrorInterceptor, ServerState
from services.core.security import Authorizer, load_tokens, server_credentials
from services.core.settings import GrpcServerSettings

log = logging.getLogger(__name__)


@dataclass
class GrpcService:
    """What a service contributes: its servicer and how to load / release its model."""

    name: str  # short label for metrics, e.g. "visionlanguage"
    full_name: str  # proto full name, e.g. "unfragile.visionlanguage.v1.VisionLanguage"
    servicer: Any
    add_to_server: Callable[[Any, grpc.Server], None]
    load: Callable[[], None] = lambda: None
    close: Callable[[], None] = lambda: None
    extra_interceptors: list[grpc.ServerInterceptor] = field(default_factory=list)
    # RPC method names (e.g. "StartFineTune") that need the admin role once auth is on.
    admin_methods: frozenset[str] = frozenset()
    # Called once the port is bound, before ``load`` (e.g. to learn the address and add health names).
    listening: Callable[[RunningServer], None] = lambda _server: None


class RunningServer:
    """A started server; ``stop`` drains it and releases the model."""

    def __init__(self, settings: GrpcServerSettings, service: GrpcService) -> None:
        self.settings = settings
        self.service = service
        self.state = ServerState()
        self.health = HealthServicer()
        authorizer = None
        if settings.auth_tokens_file:
            authorizer = Authorizer(load_tokens(settings.auth_tokens_file), service.admin_methods,
                                    settings.allow_anonymous_reads)
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=settings.max_workers, thread_name_prefix=service.name),
            interceptors=[ErrorInterceptor(service.name, self.state, authorizer), *service.extra_interceptors],
            options=message_options(settings.max_message_bytes),
            maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
        )
        service.add_to_server(service.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (service.full_name, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        bind = f"{settings.host}:{settings.port}"
        if settings.tls_cert_file and settings.tls_key_file:
            creds = server_credentials(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)
            self.port = self.server.add_secure_port(bind, creds)
        else:
            self.port = self.server.add_insecure_port(bind)
        if self.port == 0:
            raise RuntimeError(f"could not bind {settings.host}:{settings.port}")
        self.metrics_port = -1
        self._metrics_server: Any = None
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.port}"

    def _set_health(self, status: int) -> None:
        for name in ("", self.service.full_name):
            self.health.set(name, status)

    def start(self) -> RunningServer:
        """Start answering (health says NOT_SERVING), load the model, then go SERVING."""
        self.server.start()
        if self.settings.metrics_port >= 0:
            self.metrics_port, self._metrics_server = metrics.start_metrics_server(
                self.settings.metrics_port, self.settings.host
            )
        log.info("%s listening on %s (metrics :%s); loading", self.service.name, self.address, self.metrics_port)
        try:
            self.service.listening(self)
            self.service.load()
        except BaseException:
            self.stop(0)
            raise
        metrics.MODEL_READY.labels(self.service.name).set(1)
        self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("%s SERVING on %s", self.service.name, self.address)
        return self

    def stop(self, grace: float | None = None) -> None:
        """Flip health, refuse new RPCs, drain in-flight ones, release the model."""
        with self._stop_lock:
            if self._stopped.is_set():
                return
            grace = self.settings.grace_seconds if grace is None else grace
            self.state.draining.set()
            self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
            self.health.enter_graceful_shutdown()  # any other health name a service added: NOT_SERVING too
            metrics.MODEL_READY.labels(self.service.name).set(0)
            log.info("%s draining for up to %.1fs", self.service.name, grace)
            # Keep the port open while in-flight RPCs finish: new RPCs reach the interceptor and
            # get a retryable UNAVAILABLE (grpc's own shutdown would CANCEL calls racing it).
            deadline = time.monotonic() + grace
            self.state.wait_idle(grace)
            self.server.stop(max(0.0, deadline - time.monotonic())).wait()
            try:
                self.service.close()
            finally:
                if self._metrics_server is not None:
                    self._metrics_server.shutdown()
                self._stopped.set()
                log.info("%s stopped", self.service.name)

    def wait(self) -> None:
        """Block until stopped. Waits in short slices: a signal the OS delivers to another thread (grpc's, torch's)
        only sets a flag that the main thread acts on when it runs again, and a wait with no timeout would let
        a SIGTERM go unanswered until something else woke it."""
        while not self._stopped.wait(0.2):
            pass

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT -> drain in a side thread (signal handlers must return fast)."""

        def handler(signum: int, _frame: Any) -> None:
            log.info("signal %s: shutting down", signum)
            threading.Thread(target=self.stop, name="drain", daemon=True).start()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)


def start_server(settings: GrpcServerSettings, service: GrpcService) -> RunningServer:
    """Build, start and load; returns once the service is SERVING."""
    return RunningServer(settings, service).start()
