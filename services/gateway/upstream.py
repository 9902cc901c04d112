"""The gateway's only way to the match graph: async gRPC calls to the MatchGraph service.

One ``grpc.aio`` channel per application for reads, opened in the app's lifespan (it
belongs to the event loop that serves requests). Reads spread over every replica the read
target names (a headless Service's DNS name, or a comma-separated host:port list), round
robin over the replicas whose gRPC health says SERVING (client-side health checking: a
reader that is down, still loading after a restart, or draining gets no calls), and an
idempotent read that fails with UNAVAILABLE is retried once on another replica.

Writes (the recorded searches, match records and feedback) go to ``matchgraph_writer_target``: one target (e.g. a
Kubernetes Service that only the leader is ready behind), or a comma-separated list of
writer-capable MatchGraphs, of which the gateway follows the leader: it asks GetSnapshot
which one takes writes (the highest term), and when a write fails with UNAVAILABLE or
FAILED_PRECONDITION from one that does not lead, it finds the leader again and retries
once there (RecordMatches is idempotent by event id; RecordFeedback stores one outcome per match record, a
retry gets the stored one back). Every failure leaves here as
``UpstreamError`` carrying the gRPC status, so a single handler maps it to an HTTP status.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import grpc
import grpc.aio

from services.core.client import DEFAULT_MAX_MESSAGE_BYTES, bearer, channel, replicas_target, retry_unavailable
from services.core.http_status import retry_after_s
from services.core.names import full_name
from services.gateway import metrics
from services.gateway.catalogue_calls import READ_METHODS, CatalogueCalls
from services.gateway.settings import MatchGraphClient
from unfragile.matchgraph.v1 import matchgraph_pb2 as pb
from unfragile.matchgraph.v1 import matchgraph_pb2_grpc as pb_grpc

SERVICE_FULL_NAME = full_name("matchgraph")
# Reads are idempotent: one that meets a MatchGraph replica dying or draining is retried once (round robin: on
# another); calls go only to replicas whose health says SERVING.
READ_RETRIES = retry_unavailable(SERVICE_FULL_NAME, ["GetModel", "Rank", "Compare", "Search", "GetSnapshot",
                                                     *READ_METHODS], attempts=2, health_check=True)
T = TypeVar("T")
LEADERSHIP_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION)


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
    """MatchGraphAPI over real ``grpc.aio`` channels: reads to ``cfg.target``, writes to ``writer_target`` (the
    read channel when it is empty or equal; the leader when it lists several writer-capable processes)."""

    def __init__(self, cfg: ChannelConfig, writer_target: str = "") -> None:
        self._channel = self._open(cfg, replicas_target(cfg.target), balance=True, service_config=READ_RETRIES)
        self._stub = pb_grpc.MatchGraphStub(self._channel)
        writers = [t.strip() for t in writer_target.split(",") if t.strip()]
        self._writer_channels = [] if writers in ([], [cfg.target]) else \
            [self._open(cfg, t, balance=False) for t in writers]
        self._writers = {t: pb_grpc.MatchGraphStub(ch) for t, ch in zip(writers, self._writer_channels)}
        self._leader: str | None = writers[0] if len(self._writers) == 1 else None
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
            raise UpstreamError(err.code(), err.details() or err.code().name, retry_after_s(err)) from None
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
        """One RecordMatches stream carrying one batch (idempotent by event_id), to the leader."""
        async def send(stub: pb_grpc.MatchGraphStub) -> pb.RecordMatchesResponse:
            return await self._call(  # type: ignore[no-any-return]
                "RecordMatches", stub.RecordMatches, iter([pb.RecordMatchesRequest(events=events)]))
        return await self._write(send)

    async def _find_leader(self) -> str | None:
        """The writer whose GetSnapshot says it takes writes (the highest term if several claim it)."""
        names = list(self._writers)
        answers = await asyncio.gather(*(self._writers[n].GetSnapshot(  # type: ignore[misc]
            pb.GetSnapshotRequest(), timeout=min(self._timeout, 2.0), metadata=self._metadata) for n in names),
            return_exceptions=True)
        leading = [(a.term, n) for n, a in zip(names, answers)
                   if isinstance(a, pb.GetSnapshotResponse) and a.role in ("writer", "all")]
        return max(leading)[1] if leading else None

    async def _write(self, send: Callable[[pb_grpc.MatchGraphStub], Awaitable[T]]) -> T:
        """``send(stub)`` on the writer; with several, on the leader, retried once there after a takeover."""
        if not self._writers:
            return await send(self._stub)
        for attempt in (1, 2):
            if self._leader is None:
                self._leader = await self._find_leader()
            target = self._leader
            if target is None:
                raise UpstreamError(grpc.StatusCode.UNAVAILABLE, f"no MatchGraph among {self.writer_target} takes "
                                    f"writes right now (a takeover is under way); retry shortly", 1.0)
            try:
                return await send(self._writers[target])
            except UpstreamError as err:
                if err.code not in LEADERSHIP_CODES or attempt == 2:
                    raise
                if len(self._writers) == 1:
                    if err.code != grpc.StatusCode.UNAVAILABLE:
                        raise  # one target (e.g. a Service in front of the leader): only a dying one is retried
                else:
                    self._leader = await self._find_leader()
                    if err.code == grpc.StatusCode.FAILED_PRECONDITION and self._leader == target:
                        raise  # the leader itself refused: not a leadership question
                await asyncio.sleep(0.2)
        raise AssertionError("unreachable")

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
        for ch in self._writer_channels:
            await ch.close()


def open_matchgraph(settings: MatchGraphClient) -> GrpcMatchGraph:
    """Channels to the MatchGraph with the TLS/token settings: reads to ``matchgraph_target``, writes to
    ``matchgraph_writer_target``."""
    return GrpcMatchGraph(ChannelConfig(
        target=settings.matchgraph_target, timeout_s=settings.rpc_timeout_s, root_ca=settings.matchgraph_root_ca,
        client_cert=settings.matchgraph_client_cert, client_key=settings.matchgraph_client_key,
        token=settings.matchgraph_token, max_message_bytes=settings.max_message_bytes),
        writer_target=settings.matchgraph_writer_target)
