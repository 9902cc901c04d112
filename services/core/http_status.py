"""A gRPC service's answer as an HTTP one, for the HTTP services in front of gRPC ones (the gateway, the
OpenAI frontend): the status, and the retry hint.

The mapping is Google's published one (the same grpc-gateway uses), so clients that know either side
can predict the other. UNKNOWN/INTERNAL/DATA_LOSS become 502 Bad Gateway: the fault is upstream, not in
the HTTP service, and a 5xx there must not be confused with a bug of its own (500).
"""

from __future__ import annotations

import grpc
import grpc.aio

GRPC_TO_HTTP: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 502,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 502,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 502,
}


def retry_after_s(err: grpc.aio.AioRpcError) -> float | None:
    """The service's ``retry-after-ms`` trailer in seconds (None when absent or malformed)."""
    for key, value in err.trailing_metadata() or ():
        if key == "retry-after-ms":
            try:
                return max(0.0, int(value) / 1000.0)
            except ValueError:
                return None
    return None


def retry_after_header(seconds: float | None) -> dict[str, str]:
    """Retry-After in whole seconds, at least 1 (1 when the service gave no hint)."""
    wait = seconds if seconds is not None else 1.0
    return {"Retry-After": str(max(1, int(wait + 0.999)))}
