"""Client-side helpers: channels with the same message limits, and waiting for SERVING."""

from __future__ import annotations

import ipaddress
import json
import socket
import time
from pathlib import Path
from typing import Any, Literal, overload

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFAULT_MAX_MESSAGE_BYTES = 32 * 1024 * 1024
TARGET_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:", "xds:")


def message_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[tuple[str, Any]]:
    """Send and receive limits, the same on servers and clients."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


def channel_credentials(root_ca: Path, client_cert: Path | None = None,
                        client_key: Path | None = None) -> grpc.ChannelCredentials:
    """TLS verifying the server with ``root_ca``; a client certificate too for mutual TLS."""
    return grpc.ssl_channel_credentials(
        root_certificates=Path(root_ca).read_bytes(),
        private_key=Path(client_key).read_bytes() if client_key else None,
        certificate_chain=Path(client_cert).read_bytes() if client_cert else None,
    )


def retry_unavailable(service: str, methods: list[str], attempts: int = 3, health_check: bool = False) -> str:
    """A gRPC service config retrying ``methods`` of ``service`` on UNAVAILABLE (e.g. a replica that died or
    is draining: with round robin the retry goes to another one). Only for idempotent calls (reads).

    ``health_check`` adds gRPC client-side health checking: with round robin (``channel(balance=True)``) each
    replica's ``grpc.health.v1`` status of ``service`` is watched and calls go only to SERVING ones (not to one
    that is still loading after a restart, or draining)."""
    config: dict[str, object] = {"methodConfig": [{
        "name": [{"service": service, "method": m} for m in methods],
        "retryPolicy": {"maxAttempts": attempts, "initialBackoff": "0.05s", "maxBackoff": "0.5s",
                        "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]}
    if health_check:
        config["healthCheckConfig"] = {"serviceName": service}
    return json.dumps(config)


def replicas_target(targets: str) -> str:
    """One gRPC target for the replicas in ``targets``: a target as it is (``dns:///svc:port`` resolves to every
    replica), or a comma-separated list of host:port turned into a static ``ipv4:``/``ipv6:`` address list
    (host names are resolved once, here). Use it with ``channel(balance=True)``."""
    parts = [t.strip() for t in targets.split(",") if t.strip()]
    if len(parts) <= 1 or targets.startswith(TARGET_SCHEMES):  # one target, or already a gRPC target URI
        return parts[0] if len(parts) == 1 else targets
    v4: list[str] = []
    v6: list[str] = []
    for part in parts:
        host, _, port = part.rpartition(":")
        host = host.strip("[]")
        try:
            ips = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                ips = [ipaddress.ip_address(info[4][0]) for info in
                       socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)]
            except (OSError, ValueError) as exc:
                raise ValueError(f"cannot resolve {part!r} in the target list {targets!r}: {exc}") from None
        for ip in dict.fromkeys(ips):
            (v4 if ip.version == 4 else v6).append(f"{ip}:{port}" if ip.version == 4 else f"[{ip}]:{port}")
    return "ipv4:" + ",".join(v4) if v4 else "ipv6:" + ",".join(v6)


@overload
def channel(target: str, max_message_bytes: int = ..., *, root_ca: Path | None = ...,
            client_cert: Path | None = ..., client_key: Path | None = ..., balance: bool = ...,
            service_config: str | None = ..., aio: Literal[False] = ...) -> grpc.Channel: ...
@overload
def channel(target: str, max_message_bytes: int = ..., *, root_ca: Path | None = ...,
            client_cert: Path | None = ..., client_key: Path | None = ..., balance: bool = ...,
            service_config: str | None = ..., aio: Literal[True]) -> grpc.aio.Channel: ...
def channel(
    target: str,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    *,
    root_ca: Path | None = None,
    client_cert: Path | None = None,
    client_key: Path | None = None,
    balance: bool = False,
    service_config: str | None = None,
    aio: bool = False,
) -> grpc.Channel | grpc.aio.Channel:
    """The one way this project opens a channel: the servers' message limits, TLS when asked.

    With ``root_ca`` it is TLS (verifying the server); adding ``client_cert`` and
    ``client_key`` presents a client certificate for mutual TLS. ``balance`` spreads
    stateless calls over every address the target resolves to (round robin); leave it off
    for calls that must reach the same replica (WatchJob/CancelJob of a fine-tune job).
    ``service_config`` is a gRPC service config (JSON), e.g. ``retry_unavailable(...)``.
    ``aio`` returns a ``grpc.aio`` channel (for asyncio callers such as the gateway).
    """
    options = message_options(max_message_bytes)
    if service_config is not None:
        options += [("grpc.service_config", service_config), ("grpc.enable_retries", 1)]
    if balance:
        # With a headless Service (dns:///svc-headless:port) spread calls over every pod the
        # name resolves to; the default pick_first pins one HTTP/2 connection to one pod.
        options.append(("grpc.lb_policy_name", "round_robin"))
        # Its own connections: a new channel must not inherit another channel's reconnect backoff to an
        # address (gRPC shares subchannels process-wide), e.g. after a replica restarted on the same port.
        options.append(("grpc.use_local_subchannel_pool", 1))
    module: Any = grpc.aio if aio else grpc
    if root_ca is None:
        return module.insecure_channel(target, options=options)  # type: ignore[no-any-return]
    creds = channel_credentials(root_ca, client_cert, client_key)
    return module.secure_channel(target, creds, options=options)  # type: ignore[no-any-return]


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying a bearer token (works on insecure and TLS channels); none for ''."""
    return (("authorization", f"Bearer {token}"),) if token else ()


def health_status(target: str, service: str = "", timeout: float = 2.0) -> str:
    """The grpc.health.v1 status name of ``service`` at ``target``, or "UNREACHABLE"."""
    with channel(target) as ch:
        try:
            resp = health_pb2_grpc.HealthStub(ch).Check(  # type: ignore[attr-defined]  # stubs lack the generated methods
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError:
            return "UNREACHABLE"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


def wait_for_serving(target: str, service: str = "", timeout: float = 120.0) -> None:
    """Block until ``target`` reports SERVING, or raise TimeoutError naming the last status."""
    deadline = time.monotonic() + timeout
    status = "UNREACHABLE"
    while time.monotonic() < deadline:
        status = health_status(target, service)
        if status == "SERVING":
            return
        time.sleep(0.2)
    raise TimeoutError(f"{target} did not become SERVING within {timeout:.0f}s (last status: {status})")
