"""The gateway's routing to a scaled-out MatchGraph (services/gateway/upstream.py), on real servers:

- reads go only to replicas whose gRPC health says SERVING (client-side health checking): one that is
  loading or draining gets no calls, and gets them again once it serves;
- recorded searches, match records and their feedback go to whichever of several writer-capable MatchGraphs
  leads, and follow the leadership when the leader stops and a standby takes over (real PostgreSQL).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from graph.seed_data import SEED_MODELS
from services.core.server import RunningServer, start_server
from services.gateway.upstream import ChannelConfig, GrpcMatchGraph
from services.matchgraph.app import FULL_NAME, build_service
from services.matchgraph.app import Settings as GraphSettings
from services.matchgraph.types import record_to_pb
from unfragile.matchgraph.v1 import matchgraph_pb2 as pb
from unfragile.matchgraph.v1 import matchgraph_pb2_grpc as pb_grpc

COMMON: dict[str, Any] = dict(port=0, metrics_port=-1, bootstrap_rounds=50, graph_bootstrap_rounds=10)


def _serve(**kw: Any) -> RunningServer:
    settings = GraphSettings(**COMMON, **kw)
    return start_server(settings, build_service(settings))


async def _roles(up: GrpcMatchGraph, n: int) -> list[str]:
    return [(await up.snapshot()).role for _ in range(n)]


def test_reads_skip_a_replica_that_is_not_serving(tmp_path: Path):
    db = f"sqlite:///{tmp_path / 'g.db'}"
    writer = _serve(db_url=db, role="writer")
    reader = _serve(db_url=db, role="reader", writer_address=writer.address, change_poll_interval_s=0.02)

    async def scenario() -> tuple[list[str], list[str], list[str]]:
        up = GrpcMatchGraph(ChannelConfig(target=f"{writer.address},{reader.address}"))
        try:
            both = await _roles(up, 20)
            writer.health.set(FULL_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)  # e.g. loading, draining
            await asyncio.sleep(0.3)
            one = await _roles(up, 20)
            writer.health.set(FULL_NAME, health_pb2.HealthCheckResponse.SERVING)
            await asyncio.sleep(0.3)
            again = await _roles(up, 20)
        finally:
            await up.close()
        return both, one, again
    try:
        both, one, again = asyncio.run(scenario())
    finally:
        reader.stop(0)
        writer.stop(0)
    assert set(both) == {"writer", "reader"}  # round robin over the two
    assert set(one) == {"reader"}  # nothing reached the replica that was not SERVING
    assert set(again) == {"writer", "reader"}  # and it takes reads again once it serves


@pytest.mark.parametrize("db_backend", ["postgresql"])
def test_recorded_searches_follow_the_leader_across_a_takeover(graph_dbs):
    url = graph_dbs.url()
    a = _serve(db_url=url, role="writer", leader_retry_s=0.1)
    b = _serve(db_url=url, role="writer", leader_retry_s=0.1)
    with grpc.insecure_channel(a.address) as ch:
        for m in SEED_MODELS:
            pb_grpc.MatchGraphStub(ch).UpsertModel(pb.UpsertModelRequest(model=record_to_pb(m)), timeout=30)
    ids = [m.id for m in SEED_MODELS]

    def events(tag: str) -> list[pb.MatchEvent]:
        return [pb.MatchEvent(event_id=f"{tag}{i}", query="q", matched=ids) for i in range(5)]

    def feedback(match_id: str) -> pb.RecordFeedbackRequest:
        return pb.RecordFeedbackRequest(match_id=match_id, outcome=pb.MATCH_OUTCOME_SUCCESS, source="api")

    async def scenario() -> tuple[int, int, str, list[bool], str]:
        up = GrpcMatchGraph(ChannelConfig(target=b.address), writer_target=f"{b.address},{a.address}")
        try:
            first = (await up.record_matches(events("x"))).inserted  # b stands by: the gateway finds a
            before = await up.record_match("caption an image", ids)  # the catalogue's writes follow it too
            dup = [(await up.record_feedback(feedback(before))).duplicate]
            a.stop(0)  # the leader stops: it releases the lock, b takes over
            deadline = time.monotonic() + 20
            while (await up.snapshot()).role != "writer":
                assert time.monotonic() < deadline, "the standby did not take over"
                await asyncio.sleep(0.05)
            second = (await up.record_matches(events("y"))).inserted
            after = await up.record_match("generate an image", ids)
            dup += [(await up.record_feedback(feedback(after))).duplicate,
                    (await up.record_feedback(feedback(before))).duplicate]  # stored before the takeover
            passport = (await up.passport(ids[0])).model.id  # a catalogue read, on the reader
            return first, second, up._leader or "", dup, passport
        finally:
            await up.close()
    try:
        first, second, leader, duplicates, passport = asyncio.run(scenario())
    finally:
        b.stop(0)
        a.stop(0)
    assert (first, second, leader) == (5, 5, b.address)
    assert duplicates == [False, False, True]
    assert passport == ids[0]
