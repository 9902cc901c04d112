#!/usr/bin/env python3
"""Container health check over the gRPC health protocol (grpc.health.v1).

Used by the images' HEALTHCHECK and docker-compose: it asks the server itself
rather than probing the port, because a service only reports SERVING once its
model (or database) is loaded, and flips to NOT_SERVING while it drains. Exits 0
on SERVING, 1 otherwise, printing the status so `docker inspect` shows why.

Kubernetes' native `grpc:` probes speak plaintext only; with TLS turned on
(`tls_cert_file`), use this as an `exec` probe with --ca (and --cert/--key when the
server wants client certificates). Health RPCs need no bearer token.

Usage: grpc-health [HOST:PORT] [SERVICE] [--ca PEM [--cert PEM --key PEM] [--server-name NAME]]
       (defaults: 127.0.0.1:50051, "" = the whole server)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def _channel(target: str, ca: Path | None, cert: Path | None, key: Path | None,
             server_name: str | None) -> grpc.Channel:
    if ca is None:
        return grpc.insecure_channel(target)
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    return grpc.secure_channel(target, creds, options=options)


def check(target: str, service: str, timeout: float = 3.0, ca: Path | None = None, cert: Path | None = None,
          key: Path | None = None, server_name: str | None = None) -> str:
    """The status name reported for ``service`` at ``target``, or why it could not be asked."""
    with _channel(target, ca, cert, key, server_name) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as exc:
            return f"UNREACHABLE ({exc.code().name})"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="grpc-health", description=__doc__.split("\n\n")[0])
    parser.add_argument("target", nargs="?", default="127.0.0.1:50051")
    parser.add_argument("service", nargs="?", default="")
    parser.add_argument("--ca", type=Path, help="PEM CA that signed the server certificate (TLS)")
    parser.add_argument("--cert", type=Path, help="PEM client certificate (mutual TLS)")
    parser.add_argument("--key", type=Path, help="PEM key of --cert")
    parser.add_argument("--server-name", help="name to verify in the server certificate, if not the target host")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv[1:])
    status = check(args.target, args.service, args.timeout, args.ca, args.cert, args.key, args.server_name)
    print(f"{args.target} {args.service or '<server>'}: {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
