"""The gateway's only way to the match graph: async gRPC calls to the MatchGraph service.

One ``grpc.aio`` channel per application, opened in the app's lifespan (it belongs to
the event loop that serves requests); with a separate writer target (``matchgraph_writer_target``:
MatchGraph readers take the reads, the writer the recorded searches) a second one for
writes. Reads spread over every address the read target resolves to (round robin), so a
headless Service of readers shares the load. Every failure leaves here as ``UpstreamError``
carrying the gRPC status, so a single handler maps it to an HTTP status.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc
import grpc.aio

from services.core.client import DEFAULT_MAX_MESSAGE_BYTES, bearer, channel, retry_unavailable
from services.core.names import full_name
from services.gateway import metrics
from services.gateway.catalogue_calls import READ_METHODS, CatalogueCalls
from unfragile.matchgraph.v1 import matchgraph_pb2 as pb
from unfragile.matchgraph.v1 import matchgraph_pb2_grpc as pb_grpc

SERVICE_FULL_NAME = full_name("matchgraph")
# Reads are idempotent: one that meets a MatchGraph replica dying or draining is retried (round robin: on another).
READ_RETRIES = retry_unavailable(SERVICE_FULL_NAME, ["GetModel", "Rank", "Compare", "Search", "GetSnapshot",
                                                     *READ_METHODS])


class UpstreamError(Exception):
    """A MatchGraph call that did not return OK: its status, message and retry hint."""

    def __init__(self, code: grpc.StatusCode, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s


class MatchGraphAPI(Protocol):
    """What the routes need; tests may hand in any object with these coroutines."""

    async def search(self, query: str, limit: int, type_filter: str = "") -> pb.SearchResponse: ...
    async def rank(self, capability: str, limit: int, offset: int) -> pb.RankResponse: ...
    async def compare(self, a: str, b: str) -> pb.CompareResponse: ...
    async def get_model(self, model: str, explain: bool) -> pb.GetModelResponse: ...
    async def record_matches(self, events: list[pb.MatchEvent]) -> pb.RecordMatchesResponse: ...
    async def snapshot(self) -> pb.GetSnapshotResponse: ...
    async def ready(self) -> bool: ...
    async def close(self) -> None: ...


def _retry_after(err: grpc.aio.AioRpcError) -> float | None:
    for key, value in err.trailing_metadata() or ():
        if key == "retry-after-ms":
            try:
                return max(0.0, int(value) / 1000.0)
            except ValueError:
                return None
    return None


@dataclass
class ChannelConfig:
    target: str
    timeout_s: float = 10.0
    root_ca: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    token: str = ""
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES


class GrpcMatchGraph(CatalogueCalls):
    """MatchGraphAPI over real ``grpc.aio`` channels: reads to ``cfg.target``, writes to ``writer_target``
    (the same channel when it is empty or equal)."""

    def __init__(self, cfg: ChannelConfig, writer_target: str = "") -> None:
        self._channel = self._open(cfg, cfg.target, balance=True, service_config=READ_RETRIES)
        self._stub = pb_grpc.MatchGraphStub(self._channel)
        self._writer_channel = None
        self._writer_stub = self._stub
        if writer_target and writer_target != cfg.target:
            self._writer_channel = self._open(cfg, writer_target, balance=False)
            self._writer_stub = pb_grpc.MatchGraphStub(self._writer_channel)
        self._timeout = cfg.timeout_s
        self._metadata = bearer(cfg.token) or None
        self.target = cfg.target
        self.writer_target = writer_target or cfg.target

    @staticmethod
    def _open(cfg: ChannelConfig, target: str, balance: bool, service_config: str | None = None) -> grpc.aio.Channel:
        return channel(target, cfg.max_message_bytes, root_ca=cfg.root_ca, client_cert=cfg.client_cert,
                       client_key=cfg.client_key, balance=balance, service_config=service_config, aio=True)

    async def _call(self, name: str, method, request):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        code = "OK"
        try:
            return await method(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as err:
            code = err.code().name
            raise UpstreamError(err.code(), err.details() or err.code().name, _retry_after(err)) from None
        finally:
            metrics.UPSTREAM_CALLS.labels(name, code).inc()
            metrics.UPSTREAM_LATENCY.labels(name).observe(time.perf_counter() - start)

    async def search(self, query: str, limit: int, type_filter: str = "") -> pb.SearchResponse:
        return await self._call("Search", self._stub.Search, pb.SearchRequest(query=query, limit=limit,
                                                                               type=type_filter))

    async def rank(self, capability: str, limit: int, offset: int) -> pb.RankResponse:
        request = pb.RankRequest(capability=capability, limit=limit, offset=offset)
        return await self._call("Rank", self._stub.Rank, request)

    async def compare(self, a: str, b: str) -> pb.CompareResponse:
        return await self._call("Compare", self._stub.Compare, pb.CompareRequest(a=a, b=b))

    async def get_model(self, model: str, explain: bool) -> pb.GetModelResponse:
        return await self._call("GetModel", self._stub.GetModel, pb.GetModelRequest(model=model, explain=explain))

    async def record_matches(self, events: list[pb.MatchEvent]) -> pb.RecordMatchesResponse:
        """One RecordMatches stream carrying one batch (idempotent by event_id)."""
        return await self._call("RecordMatches", self._writer_stub.RecordMatches,
                                iter([pb.RecordMatchesRequest(events=events)]))

    async def snapshot(self) -> pb.GetSnapshotResponse:
        """What the next read would be computed from (cheap: nothing is scored upstream)."""
        return await self._call("GetSnapshot", self._stub.GetSnapshot, pb.GetSnapshotRequest())

    async def ready(self) -> bool:
        """True when the MatchGraph health check says SERVING."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        try:
            resp = await health_pb2_grpc.HealthStub(self._channel).Check(  # type: ignore[attr-defined]  # stubs lack the generated methods
                health_pb2.HealthCheckRequest(service=SERVICE_FULL_NAME), timeout=min(self._timeout, 2.0)
            )
        except grpc.aio.AioRpcError:
            return False
        return resp.status == health_pb2.HealthCheckResponse.SERVING

    async def close(self) -> None:
        await self._channel.close()
        if self._writer_channel is not None:
            await self._writer_channel.close()
