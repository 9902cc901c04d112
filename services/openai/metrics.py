"""Prometheus metrics of the OpenAI-compatible frontend.

Requests by route template and status, latency, time to the first streamed chunk, tokens
and images served, the gRPC calls it makes, the upstream calls it cancelled because the
client went away, and remote-image fetches by outcome. Route labels are templates, so
the label cardinality stays fixed whatever clients send.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from services.core.http_metrics import RequestMetrics, Scope
from services.core.metrics import LATENCY_BUCKETS

_P = "unfragile_openai_"

REQUESTS = Counter(_P + "requests_total", "HTTP requests answered by the OpenAI frontend, by route and status.",
                   ["route", "status"])
LATENCY = Histogram(_P + "request_duration_seconds", "Request start to the end of the response body, by route.",
                    ["route"], buckets=LATENCY_BUCKETS)
IN_FLIGHT = Gauge(_P + "requests_in_flight", "HTTP requests being served now (open streams included); the HPA "
                                             "scales on it.")
TTFT = Histogram(_P + "time_to_first_chunk_seconds", "Streamed answers: request start to the first content "
                 "chunk (chat) or partial image sent, by route.", ["route"], buckets=LATENCY_BUCKETS)
TOKENS = Counter(_P + "tokens_total", "Tokens in chat answers, by kind (prompt, completion).", ["kind"])
IMAGES = Counter(_P + "images_total", "Images returned, by operation (generations, edits).", ["operation"])
UPSTREAM_CALLS = Counter(_P + "upstream_requests_total", "gRPC calls made to the services, by RPC and status.",
                         ["rpc", "code"])
UPSTREAM_LATENCY = Histogram(_P + "upstream_duration_seconds", "Wall time of each gRPC call to a service.",
                             ["rpc"], buckets=LATENCY_BUCKETS)
UPSTREAM_CANCELLED = Counter(_P + "upstream_cancelled_total", "gRPC calls cancelled before their end because the "
                             "HTTP client disconnected (no work is done for nobody).", ["rpc"])
REMOTE_IMAGES = Counter(_P + "remote_images_total", "http(s) image_url fetches, by result (ok, refused, failed).",
                        ["result"])

for _kind in ("prompt", "completion"):
    TOKENS.labels(_kind)
for _op in ("generations", "edits"):
    IMAGES.labels(_op)
for _result in ("ok", "refused", "failed"):
    REMOTE_IMAGES.labels(_result)
for _rpc in ("StreamCaption", "Caption", "TextToImage"):
    UPSTREAM_CANCELLED.labels(_rpc)


class MetricsMiddleware(RequestMetrics):
    """Counts and times every HTTP request by route template and status."""

    in_flight = IN_FLIGHT

    def record(self, scope: Scope, route: str, status: int, seconds: float) -> None:
        REQUESTS.labels(route, str(status)).inc()
        LATENCY.labels(route).observe(seconds)
