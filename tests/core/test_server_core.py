"""The shared server machinery over real gRPC: error mapping, metrics, health, reflection, drain."""

from __future__ import annotations

import threading
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from common.errors import InvalidArgument, NotFound, ResourceExhausted
from services.core.server import GrpcService, start_server
from services.core.settings import GrpcServerSettings

SERVICE = "test.v1.Probe"


class ProbeServicer:
    """A servicer over raw bytes, so the core is tested without any model or proto."""

    def __init__(self) -> None:
        self.closed = False
        self.release = threading.Event()

    def Echo(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        if request == b"":
            raise InvalidArgument("prompt is empty: send at least one character")
        if request == b"missing":
            raise NotFound("model 'missing' is not loaded")
        if request == b"full":
            raise ResourceExhausted("queue is full (8 waiting)", retry_after_s=2.5)
        if request == b"bug":
            raise ValueError("secret internals")
        if request == b"slow":
            self.release.wait(10)
        return request.upper()

    def Count(self, request: bytes, context: grpc.ServicerContext):
        for i in range(3):
            yield str(i).encode()
        raise InvalidArgument("stream stopped by validation after 3 items")


def _add(servicer: ProbeServicer, server: grpc.Server) -> None:
    ident = lambda b: b  # noqa: E731 - raw bytes in and out
    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(servicer.Echo, ident, ident),
        "Count": grpc.unary_stream_rpc_method_handler(servicer.Count, ident, ident),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


@pytest.fixture()
def running():
    servicer = ProbeServicer()
    loaded = threading.Event()

    def close() -> None:
        servicer.closed = True

    service = GrpcService(name="probe", full_name=SERVICE, servicer=servicer, add_to_server=_add,
                          load=loaded.set, close=close)
    srv = start_server(GrpcServerSettings(port=0, metrics_port=0, grace_seconds=5), service)
    assert loaded.is_set()
    channel = grpc.insecure_channel(srv.address)
    yield srv, servicer, channel
    servicer.release.set()
    channel.close()
    srv.stop(0)


def _echo(channel: grpc.Channel, payload: bytes, timeout: float = 5) -> bytes:
    return channel.unary_unary(f"/{SERVICE}/Echo")(payload, timeout=timeout)


@pytest.mark.parametrize(
    "payload,code,text",
    [
        (b"", grpc.StatusCode.INVALID_ARGUMENT, "prompt is empty"),
        (b"missing", grpc.StatusCode.NOT_FOUND, "'missing' is not loaded"),
        (b"full", grpc.StatusCode.RESOURCE_EXHAUSTED, "queue is full"),
        (b"bug", grpc.StatusCode.INTERNAL, "incident"),
    ],
)
def test_domain_errors_map_to_precise_codes_and_server_keeps_serving(running, payload, code, text):
    srv, _, channel = running
    with pytest.raises(grpc.RpcError) as err:
        _echo(channel, payload)
    assert err.value.code() == code
    assert text in err.value.details()
    assert "secret internals" not in err.value.details()
    assert _echo(channel, b"ok") == b"OK"


def test_resource_exhausted_carries_retry_hint(running):
    _, _, channel = running
    with pytest.raises(grpc.RpcError) as err:
        _echo(channel, b"full")
    trailers = dict(err.value.trailing_metadata())
    assert trailers["retry-after-ms"] == "2500"


def test_stream_error_after_items_keeps_items_and_status(running):
    _, _, channel = running
    call = channel.unary_stream(f"/{SERVICE}/Count")(b"x", timeout=5)
    got = []
    with pytest.raises(grpc.RpcError) as err:
        for item in call:
            got.append(item)
    assert got == [b"0", b"1", b"2"]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_health_serving_and_reflection_lists_services(running):
    srv, _, channel = running
    stub = health_pb2_grpc.HealthStub(channel)
    for name in ("", SERVICE):
        assert stub.Check(health_pb2.HealthCheckRequest(service=name)).status == \
            health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    resp = next(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in resp.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names


def test_metrics_endpoint_counts_by_method_and_code(running):
    srv, _, channel = running
    with pytest.raises(grpc.RpcError):
        _echo(channel, b"")
    _echo(channel, b"a")
    body = urllib.request.urlopen(f"http://127.0.0.1:{srv.metrics_port}/metrics", timeout=5).read().decode()
    assert 'unfragile_grpc_requests_total{code="INVALID_ARGUMENT",method="Echo",service="probe"}' in body
    assert 'unfragile_grpc_requests_total{code="OK",method="Echo",service="probe"}' in body
    assert 'unfragile_grpc_request_duration_seconds_bucket{code="OK",le="0.001",method="Echo",service="probe"}' in body
    assert ('unfragile_errors_total{code="INVALID_ARGUMENT",error="InvalidArgument",method="Echo",'
            'service="probe"}') in body
    assert 'unfragile_model_ready{service="probe"} 1.0' in body


def test_drain_finishes_in_flight_refuses_new_then_releases_model(running):
    srv, servicer, channel = running
    result: dict[str, object] = {}

    def slow_call() -> None:
        result["value"] = _echo(channel, b"slow", timeout=10)

    t = threading.Thread(target=slow_call)
    t.start()
    time.sleep(0.3)  # the slow call is now in flight
    stopper = threading.Thread(target=srv.stop, kwargs={"grace": 5})
    stopper.start()
    time.sleep(0.3)
    stub = health_pb2_grpc.HealthStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        _echo(channel, b"new")  # refused while draining
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert not servicer.closed  # model is kept until in-flight work is done
    servicer.release.set()
    t.join(5)
    stopper.join(10)
    assert result["value"] == b"SLOW"
    assert servicer.closed
    with pytest.raises(grpc.RpcError):
        stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)


def test_health_not_serving_while_loading():
    servicer = ProbeServicer()
    gate, seen = threading.Event(), {}

    def load() -> None:
        gate.wait(5)

    service = GrpcService(name="probe", full_name=SERVICE, servicer=servicer, add_to_server=_add, load=load)
    from services.core.server import RunningServer

    srv = RunningServer(GrpcServerSettings(port=0, metrics_port=-1), service)
    starter = threading.Thread(target=srv.start)
    starter.start()
    time.sleep(0.3)
    from services.core.client import health_status

    seen["loading"] = health_status(srv.address)
    gate.set()
    starter.join(5)
    seen["loaded"] = health_status(srv.address)
    srv.stop(0)
    assert seen == {"loading": "NOT_SERVING", "loaded": "SERVING"}


def test_replica_lists_become_one_balanced_target():
    from services.core.client import replicas_target

    assert replicas_target("127.0.0.1:1,127.0.0.1:2") == "ipv4:127.0.0.1:1,127.0.0.1:2"
    assert replicas_target("localhost:5, 127.0.0.1:6") == "ipv4:127.0.0.1:5,127.0.0.1:6"  # names resolved once
    assert replicas_target("[::1]:7,[::1]:8") == "ipv6:[::1]:7,[::1]:8"
    for as_is in ("dns:///readers-headless:50053", "ipv4:10.0.0.1:1,10.0.0.2:1", "reader:50053"):
        assert replicas_target(as_is) == as_is
    with pytest.raises(ValueError, match="cannot resolve 'no-such-host.invalid:1'"):
        replicas_target("no-such-host.invalid:1,127.0.0.1:2")


def test_health_changes_racing_watchers_that_leave_do_not_deadlock_the_server():
    """Clients with client-side health checking keep Watch streams open. Status changes racing watchers that
    disconnect (a drain while a gateway stops) must not deadlock the server: grpc_health's own servicer sends
    under the lock the leaving watcher's close callback needs, and hangs here; ours sends outside it."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    import grpc.aio

    from services.core.health import HealthServicer

    servicer = HealthServicer()
    server = grpc.server(ThreadPoolExecutor(8))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    servicer.set("svc", health_pb2.HealthCheckResponse.SERVING)

    async def watchers_come_and_go() -> None:
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(20)]
        calls = [health_pb2_grpc.HealthStub(c).Watch(health_pb2.HealthCheckRequest(service="svc")) for c in channels]
        for call in calls:
            await asyncio.wait_for(call.read(), 10)
        await asyncio.gather(*(c.close() for c in channels))

    stop = threading.Event()

    def flip() -> None:
        k = 0
        while not stop.is_set():
            servicer.set("svc", health_pb2.HealthCheckResponse.SERVING if k % 2 else
                         health_pb2.HealthCheckResponse.NOT_SERVING)
            k += 1
    flipper = threading.Thread(target=flip, daemon=True)
    flipper.start()
    try:
        for _ in range(10):
            asyncio.run(watchers_come_and_go())
    finally:
        stop.set()
        flipper.join(10)
    assert not flipper.is_alive(), "a health change hung"
    servicer.enter_graceful_shutdown()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="svc"), timeout=5).status
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    server.stop(0)
