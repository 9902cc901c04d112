"""Search events recorded by the pages (``record_searches``): one event per results page,
with the results opened and compared from it, landing in the real MatchGraph once."""

from __future__ import annotations

import asyncio
import re

import grpc
import httpx

from services.gateway.events import SearchRecorder
from services.gateway.server import start
from services.gateway.settings import Settings
from services.gateway.upstream import UpstreamError
from unfragile.matchgraph.v1 import matchgraph_pb2 as pb

from .conftest import KOSMOS, SD


def _counts(stub, model: str) -> tuple[int, int, int]:
    s = stub.GetModel(pb.GetModelRequest(model=model)).scores
    return s.times_matched, s.times_compared, s.times_clicked


def test_search_click_compare_becomes_one_event(fresh_graph):
    server, stub = fresh_graph
    before = {m: _counts(stub, m) for m in (KOSMOS, SD)}
    gw = start(Settings(port=0, metrics_port=-1, matchgraph_target=server.address, record_searches=True,
                        record_flush_s=3600, log_level="WARNING"))
    try:
        with httpx.Client(base_url=gw.url, follow_redirects=True, timeout=30) as http:
            page = http.get("/search", params={"q": "image"})
            sids = set(re.findall(r"sid=([0-9a-f]{32})", page.text))
            assert len(sids) == 1
            sid = sids.pop()
            matched = list(dict.fromkeys(re.findall(r'href="/models/([^"?]+)\?sid=', page.text)))
            assert set(matched) == {KOSMOS, SD}, "this query should match both seed models"
            assert http.get(f"/models/{KOSMOS}", params={"sid": sid}).status_code == 200
            http.get(f"/models/{KOSMOS}", params={"sid": sid})  # a second open is the same click
            assert http.get("/compare", params={"a": KOSMOS, "b": SD, "sid": sid}).status_code == 200
            http.get("/models/kosmos2", params={"sid": "f" * 32})  # unknown sid: ignored
            assert gw.server.config.app  # still serving; nothing sent yet (flush after an hour)
            assert _counts(stub, KOSMOS) == before[KOSMOS]
    finally:
        gw.stop()  # shutdown flushes what is pending
    k, s = _counts(stub, KOSMOS), _counts(stub, SD)
    assert k == (before[KOSMOS][0] + 1, before[KOSMOS][1] + 1, before[KOSMOS][2] + 1)
    assert s == (before[SD][0] + 1, before[SD][1] + 1, before[SD][2])


class FlakyUpstream:
    """Fails the first send with UNAVAILABLE, then records what it is given."""

    def __init__(self) -> None:
        self.calls: list[list[pb.MatchEvent]] = []

    async def record_matches(self, events):
        self.calls.append(list(events))
        if len(self.calls) == 1:
            raise UpstreamError(grpc.StatusCode.UNAVAILABLE, "down")
        return pb.RecordMatchesResponse(received=len(events), inserted=len(events))


def test_failed_send_is_retried_with_the_same_event_ids_and_memory_stays_bounded():
    up = FlakyUpstream()
    rec = SearchRecorder(up, flush_after_s=0, max_pending=3)

    async def scenario() -> None:
        sids = [rec.start_search(f"q{i}", ["m1", "m2"]) for i in range(5)]
        rec.clicked(sids[-1], "m2")
        rec.clicked(sids[-1], "not-matched")  # only matched models can be clicked
        assert await rec.flush() == 0  # UNAVAILABLE: kept (the newest 3) for the next try
        assert len(rec.pending) == 3
        assert await rec.flush() == 3
        first_ids = {e.event_id for e in up.calls[0]}
        assert {e.event_id for e in up.calls[1]} <= first_ids
        last = [e for e in up.calls[1] if e.event_id == f"gateway-{sids[-1]}"][0]
        assert list(last.clicked) == ["m2"] and list(last.matched) == ["m1", "m2"]
        assert rec.pending == {} and await rec.flush(force=True) == 0

    asyncio.run(scenario())


def test_etag_changes_when_the_snapshot_changes(fresh_graph):
    """New search data changes the ranks, so a cached comparison must not be revalidated."""
    server, stub = fresh_graph
    gw = start(Settings(port=0, metrics_port=-1, matchgraph_target=server.address, log_level="WARNING"))
    try:
        with httpx.Client(base_url=gw.url, timeout=30) as http:
            url = f"/api/v1/models/{SD}"
            before = http.get(url)
            stub.RecordMatches(iter([pb.RecordMatchesRequest(events=[
                pb.MatchEvent(event_id="gw-etag-1", query="diffusion art", matched=[SD], clicked=[SD])])]))
            after = http.get(url, headers={"If-None-Match": before.headers["etag"]})
            assert after.status_code == 200
            assert after.json()["scores"]["times_matched"] == before.json()["scores"]["times_matched"] + 1
            assert after.headers["etag"] != before.headers["etag"]
            assert int(after.headers["x-snapshot-version"]) != int(before.headers["x-snapshot-version"])
            assert after.json()["snapshot_version"] == stub.GetModel(pb.GetModelRequest(model=SD)).snapshot_version
    finally:
        gw.stop()
