"""The gateway in front of one MatchGraph writer and its readers: reads go to the readers, recorded
searches to the writer; If-None-Match is answered 304 from GetSnapshot alone (no Compare upstream);
a stale reader's answers say so in a header and are never revalidated from the snapshot alone."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from services.core.server import RunningServer, start_server
from services.gateway.app import create_app
from services.gateway.caching import RENDER, STALE_HEADER
from services.gateway.server import start
from services.gateway.settings import Settings
from services.matchgraph.app import Settings as GraphSettings
from services.matchgraph.app import build_service
from unfragile.matchgraph.v1 import matchgraph_pb2 as pb
from unfragile.matchgraph.v1 import matchgraph_pb2_grpc as pb_grpc

from .conftest import KOSMOS, SD, seed_matchgraph


def _upstream_calls(rpc: str) -> float:
    return REGISTRY.get_sample_value("unfragile_gateway_upstream_requests_total", {"rpc": rpc, "code": "OK"}) or 0.0


@pytest.fixture()
def writer_and_reader(tmp_path: Path) -> Iterator[tuple[RunningServer, RunningServer, pb_grpc.MatchGraphStub]]:
    """A MatchGraph writer and one reader sharing an SQLite file (the reader polls it)."""
    common: dict[str, Any] = dict(port=0, metrics_port=-1, db_url=f"sqlite:///{tmp_path / 'g.db'}",
                                  bootstrap_rounds=50, graph_bootstrap_rounds=10, change_poll_interval_s=0.02,
                                  follow_wait_s=0.2)
    writer_settings = GraphSettings(**common, role="writer")
    writer = start_server(writer_settings, build_service(writer_settings))
    ch = grpc.insecure_channel(writer.address)
    stub = pb_grpc.MatchGraphStub(ch)
    seed_matchgraph(stub)
    reader_settings = GraphSettings(**common, role="reader", writer_address=writer.address)
    reader = start_server(reader_settings, build_service(reader_settings))
    _wait_caught_up(stub, reader.address)  # the seeding's last publication reached the reader
    yield writer, reader, stub
    reader.stop(0)
    ch.close()
    writer.stop(0)


def _wait_caught_up(writer: pb_grpc.MatchGraphStub, reader: str) -> None:
    """Until the reader answers from what the writer serves now: same events, same snapshot."""
    with grpc.insecure_channel(reader) as ch:
        stub = pb_grpc.MatchGraphStub(ch)
        deadline = time.monotonic() + 20
        while True:
            w, r = writer.GetSnapshot(pb.GetSnapshotRequest()), stub.GetSnapshot(pb.GetSnapshotRequest())
            if (r.graph_version, r.snapshot_version) == (w.graph_version, w.snapshot_version):
                return
            assert time.monotonic() < deadline, f"the reader did not catch up: {r} vs {w}"
            time.sleep(0.02)


def _wait_version(target: str, seq: int) -> None:
    with grpc.insecure_channel(target) as ch:
        stub = pb_grpc.MatchGraphStub(ch)
        deadline = time.monotonic() + 20
        while stub.GetSnapshot(pb.GetSnapshotRequest()).graph_version < seq:
            assert time.monotonic() < deadline, "the reader did not catch up"
            time.sleep(0.02)


def test_reads_go_to_readers_writes_to_the_writer_and_304_needs_no_compare(writer_and_reader):
    writer, reader, writer_stub = writer_and_reader
    gw = start(Settings(port=0, metrics_port=-1, matchgraph_target=reader.address,
                        matchgraph_writer_target=writer.address, record_searches=True, record_flush_s=0,
                        log_level="WARNING"))
    try:
        with httpx.Client(base_url=gw.url, timeout=30) as http:
            url = f"/api/v1/compare?a={KOSMOS}&b={SD}"
            first = http.get(url)
            etag = first.headers["etag"]
            assert first.status_code == 200 and etag.startswith(f'"{first.json()["snapshot_version"]}-{RENDER}-')
            compares, snapshots = _upstream_calls("Compare"), _upstream_calls("GetSnapshot")
            again = http.get(url, headers={"If-None-Match": etag})
            assert again.status_code == 304 and again.headers["etag"] == etag
            assert _upstream_calls("Compare") == compares and _upstream_calls("GetSnapshot") == snapshots + 1
            page = http.get(f"/compare/{KOSMOS}-vs-{SD}")
            assert http.get(f"/compare/{KOSMOS}-vs-{SD}",
                            headers={"If-None-Match": page.headers["etag"]}).status_code == 304
            # a search on the pages is recorded through the writer (a reader would refuse it) ...
            seq = writer_stub.GetSnapshot(pb.GetSnapshotRequest()).graph_version
            assert http.get("/search", params={"q": "image captioning"}).status_code == 200
            deadline = time.monotonic() + 20
            while writer_stub.GetSnapshot(pb.GetSnapshotRequest()).graph_version == seq:
                assert time.monotonic() < deadline, "the recorded search never reached the writer"
                time.sleep(0.05)
            _wait_version(reader.address, seq + 1)
            # ... and once the reader serves it, the old tag is no longer current: a full answer
            changed = http.get(url, headers={"If-None-Match": etag})
            assert changed.status_code == 200 and changed.headers["etag"] != etag
            assert _upstream_calls("Compare") == compares + 2  # the page above and this one
    finally:
        gw.stop()
    assert REGISTRY.get_sample_value("unfragile_gateway_search_events_total", {"result": "sent"}) >= 1


class StaleReader:
    """A reader that is 12.5 s behind its store: real protobuf answers marked stale."""

    def __init__(self) -> None:
        self.ranks = 0

    async def rank(self, capability: str, limit: int, offset: int) -> pb.RankResponse:
        self.ranks += 1
        return pb.RankResponse(total=0, snapshot_version=7, stale_seconds=12.5)

    async def snapshot(self) -> pb.GetSnapshotResponse:
        return pb.GetSnapshotResponse(snapshot_version=7, role="reader", lag_seconds=12.5, stale=True)

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        return None


def test_a_stale_answer_says_so_and_is_not_revalidated_from_the_snapshot():
    upstream = StaleReader()
    with TestClient(create_app(Settings(port=0, metrics_port=-1), lambda _s: upstream)) as client:
        first = client.get("/api/v1/rank")
        assert first.status_code == 200 and first.headers[STALE_HEADER] == "12.5"
        again = client.get("/api/v1/rank", headers={"If-None-Match": first.headers["etag"]})
        assert again.status_code == 304 and upstream.ranks == 2  # same bytes, but only after a full Rank
        assert re.fullmatch(rf'"7-{RENDER}-[0-9a-f]+"', first.headers["etag"])
