#!/usr/bin/env python3
"""Container health check over the gRPC health protocol (grpc.health.v1).

Used by the images' HEALTHCHECK and docker-compose: it asks the server itself
rather than probing the port, because a service only reports SERVING once its
model (or database) is loaded, and flips to NOT_SERVING while it drains. Exits 0
on SERVING, 1 otherwise, printing the status so `docker inspect` shows why.

Usage: grpc-health [HOST:PORT] [SERVICE]   (defaults: 127.0.0.1:$PORT, "" = whole server)
"""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(target: str, service: str, timeout: float = 3.0) -> str:
    """The status name reported for ``service`` at ``target``, or the RPC error code."""
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as exc:
            return f"UNREACHABLE ({exc.code().name})"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def main(argv: list[str]) -> int:
    target = argv[1] if len(argv) > 1 else "127.0.0.1:50051"
    service = argv[2] if len(argv) > 2 else ""
    status = check(target, service)
    print(f"{target} {service or '<server>'}: {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
