"""Request metrics of an HTTP service (the gateway, the OpenAI frontend), taken by a pure ASGI middleware.

Pure ASGI rather than Starlette's BaseHTTPMiddleware, so responses are not buffered and streams
flow as they are written. Route labels are the route templates ("/compare/{pair}"), never raw
paths, so the label cardinality stays fixed whatever clients send.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import Gauge

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[..., Awaitable[Any]], Callable[..., Awaitable[Any]]], Awaitable[None]]


class RequestMetrics:
    """Counts the HTTP requests in flight on ``in_flight`` and hands each finished one to ``record``
    (a service's subclass sets both)."""

    in_flight: Gauge

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def record(self, scope: Scope, route: str, status: int, seconds: float) -> None:
        """One finished request: its route template ("unmatched" if none), final status and wall time."""
        raise NotImplementedError

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = {"code": 500}

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        start = time.perf_counter()
        self.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.in_flight.dec()
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.record(scope, route, status["code"], time.perf_counter() - start)
