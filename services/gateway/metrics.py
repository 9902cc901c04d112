"""Prometheus metrics of the gateway: HTTP requests by route template, and its gRPC calls.

Route labels are the templates ("/compare/{pair}"), never raw paths, so a crawler
walking thousands of model pages cannot blow up the label cardinality. The default
registry is shared with services.core.metrics, so /metrics also shows the process
collectors like the gRPC services do.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from services.core.http_metrics import RequestMetrics, Scope
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


class MetricsMiddleware(RequestMetrics):
    """Every HTTP request by method, route template and status, its latency, and the 304 answers."""

    in_flight = HTTP_IN_FLIGHT

    def record(self, scope: Scope, route: str, status: int, seconds: float) -> None:
        method = scope.get("method", "GET")
        HTTP_REQUESTS.labels(method, route, str(status)).inc()
        HTTP_LATENCY.labels(method, route).observe(seconds)
        if status == 304:
            NOT_MODIFIED.labels(route).inc()
