"""The grpc.health.v1 servicer every server runs: grpc_health's, with updates sent outside its lock.

Clients with gRPC client-side health checking (the gateway, the CLI's read commands) keep a
``Watch`` stream open on every replica. grpc_health's servicer sends each status change to
the watchers while holding its lock, and waits for each send to complete; the completion
is delivered by the server's polling thread, which also runs the close callback of a
watcher that went away, and that callback takes the same lock. A status change racing a
client disconnect (e.g. a drain while the gateway stops) then deadlocks the server. Here a
second lock orders the sends (each watcher sees every status in order) and the polling
thread only ever takes the short state lock.
"""

from __future__ import annotations

import threading
from typing import Any

from grpc_health.v1 import health, health_pb2

_Base: Any = health.HealthServicer  # its stubs do not declare the state this subclass shares


class HealthServicer(_Base):  # type: ignore[misc]
    """``grpc_health.v1.health.HealthServicer`` without sends under the state lock (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__(experimental_non_blocking=True)
        self._send_lock = threading.RLock()  # orders sends; never taken by the server's polling thread

    def Watch(self, request: Any, context: Any, send_response_callback: Any = None) -> Any:
        if send_response_callback is None:  # a server without non-blocking streams: the blocking generator
            return super().Watch(request, context, send_response_callback)
        service = request.service
        with self._send_lock:
            with self._lock:
                status = self._server_status.get(service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
                self._send_response_callbacks.setdefault(service, set()).add(send_response_callback)
                context.add_callback(self._on_close_callback(send_response_callback, service))
            send_response_callback(health_pb2.HealthCheckResponse(status=status))
        return None

    def set(self, service: str, status: int) -> None:
        with self._send_lock:
            with self._lock:
                if self._gracefully_shutting_down:
                    return
                self._server_status[service] = status
                watchers = list(self._send_response_callbacks.get(service, ()))
            for send in watchers:
                send(health_pb2.HealthCheckResponse(status=status))

    def enter_graceful_shutdown(self) -> None:
        with self._send_lock:
            with self._lock:
                services = list(self._server_status)
            for service in services:
                self.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
            with self._lock:
                self._gracefully_shutting_down = True
