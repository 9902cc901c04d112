"""Prometheus metrics of the gateway: HTTP requests by route template, and its gRPC calls.

Route labels are the templates ("/compare/{pair}"), never raw paths, so a crawler
walking thousands of model pages cannot blow up the label cardinality. The default
registry is shared with services.core.metrics, so /metrics also shows the process
collectors like the gRPC services do.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from services.core.metrics import LATENCY_BUCKETS

HTTP_REQUESTS = Counter(
    "unfragile_http_requests_total", "HTTP requests answered by the gateway, by method, route template and status.",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "unfragile_http_request_duration_seconds", "Wall time from request start to the end of the response body.",
    ["method", "route"], buckets=LATENCY_BUCKETS,
)
HTTP_IN_FLIGHT = Gauge("unfragile_http_requests_in_flight", "HTTP requests being served now.")
UPSTREAM_CALLS = Counter(
    "unfragile_gateway_upstream_requests_total", "MatchGraph RPCs made by the gateway, by RPC and gRPC status.",
    ["rpc", "code"],
)
UPSTREAM_LATENCY = Histogram(
    "unfragile_gateway_upstream_duration_seconds", "Wall time of each MatchGraph RPC made by the gateway.",
    ["rpc"], buckets=LATENCY_BUCKETS,
)
SEARCH_EVENTS = Counter(
    "unfragile_gateway_search_events_total",
    "Search events from the pages (record_searches): sent to RecordMatches, or dropped while it was down.",
    ["result"],
)
NOT_MODIFIED = Counter(
    "unfragile_gateway_not_modified_total", "Answers that were 304 Not Modified thanks to If-None-Match.", ["route"],
)

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[..., Awaitable[Any]], Callable[..., Awaitable[Any]]], Awaitable[None]]


class MetricsMiddleware:
    """Pure ASGI middleware (no response buffering, unlike BaseHTTPMiddleware)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

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
        HTTP_IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            HTTP_IN_FLIGHT.dec()
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope.get("method", "GET")
            HTTP_REQUESTS.labels(method, route, str(status["code"])).inc()
            HTTP_LATENCY.labels(method, route).observe(time.perf_counter() - start)
            if status["code"] == 304:
                NOT_MODIFIED.labels(route).inc()
