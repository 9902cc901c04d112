"""Prometheus metrics every service shares, and the /metrics HTTP endpoint.

Request counts and latency are recorded by the error interceptor for every RPC,
labelled by service, method and final status code, so dashboards get error rates by
code and latency percentiles without each servicer doing anything.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

# Latency buckets from 1 ms to 5 min: tiny CPU models answer in ms, diffusion on real
# checkpoints takes tens of seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

GRPC_REQUESTS = Counter(
    "unfragile_grpc_requests_total",
    "RPCs finished, by service, method and gRPC status code.",
    ["service", "method", "code"],
)
GRPC_LATENCY = Histogram(
    "unfragile_grpc_request_duration_seconds",
    "Wall time of each RPC from arrival to final status, by service, method and code.",
    ["service", "method", "code"],
    buckets=LATENCY_BUCKETS,
)
GRPC_IN_FLIGHT = Gauge(
    "unfragile_grpc_requests_in_flight", "RPCs currently being served.", ["service", "method"]
)
DOMAIN_ERRORS = Counter(
    "unfragile_errors_total",
    "Domain errors raised to clients, by error class and the status code they mapped to.",
    ["service", "method", "error", "code"],
)
MODEL_READY = Gauge(
    "unfragile_model_ready", "1 once the service's model (or database) is loaded and serving.", ["service"]
)


def start_metrics_server(port: int, host: str = "127.0.0.1") -> tuple[int, object]:
    """Serve the default registry on ``host:port``; returns (actual port, server)."""
    server, _thread = start_http_server(port, addr=host)
    return server.server_port, server
