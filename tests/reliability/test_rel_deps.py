"""MatchGraph with its dependencies (VisionLanguage, Diffusion) down or slow.

Guarantee: a dead or hanging model service never takes the match graph down with it.
Probes time out after ``probe_timeout_s`` with UNAVAILABLE naming the service and the
gRPC status, and the failure is recorded (metric, and on the comparison page); Search
falls back to FTS5 alone and says why; Compare still answers from stored evidence and
states how fresh its quality evidence is.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from tests.reliability.relhelpers import metric
from unfragile.diffusion.v1 import diffusion_pb2_grpc as dgrpc
from unfragile.matchgraph.v1 import matchgraph_pb2 as mpb
from unfragile.matchgraph.v1 import matchgraph_pb2_grpc as mgrpc
from unfragile.visionlanguage.v1 import visionlanguage_pb2_grpc as vgrpc

TIMEOUT_S = 1.0


class Hanging(vgrpc.VisionLanguageServicer, dgrpc.DiffusionServicer):
    """A model service that accepts every call and never answers (until released)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def _hang(self, context: Any) -> None:
        self.calls += 1
        self.release.wait(30)
        context.abort(grpc.StatusCode.UNAVAILABLE, "released")

    def Embed(self, request: Any, context: Any) -> Any:
        self._hang(context)

    def Similarity(self, request: Any, context: Any) -> Any:
        self._hang(context)

    def Caption(self, request: Any, context: Any) -> Any:
        self._hang(context)

    def Judge(self, request: Any, context: Any) -> Any:  # the probes' quality judge hangs too
        self._hang(context)

    def TextToImage(self, request: Any, context: Any) -> Iterator[Any]:
        self._hang(context)
        yield from ()


@pytest.fixture(scope="module")
def slow_target() -> Iterator[tuple[str, Hanging]]:
    servicer = Hanging()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    vgrpc.add_VisionLanguageServicer_to_server(servicer, server)
    dgrpc.add_DiffusionServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", servicer
    servicer.release.set()
    server.stop(0)


def _dead_target() -> str:
    with socket.socket() as s:  # a port nobody listens on (bound, then released)
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def _graph(servers: Any, tmp_path: Any, seed_records: Any, vl: str, diffusion: str) -> mgrpc.MatchGraphStub:
    srv = servers.graph(tmp_path / "g.db", visionlanguage_target=vl, diffusion_target=diffusion,
                        probe_timeout_s=TIMEOUT_S)
    stub = mgrpc.MatchGraphStub(servers.channel(srv))
    for rec in seed_records():
        stub.UpsertModel(mpb.UpsertModelRequest(model=rec), timeout=30)
    return stub


@pytest.mark.parametrize("fault", ["down", "slow"])
def test_matchgraph_degrades_when_model_services_fail(servers, tmp_path, seed_records, slow_target, fault) -> None:
    target = _dead_target() if fault == "down" else slow_target[0]
    stub = _graph(servers, tmp_path, seed_records, target, target)
    degraded0 = metric("unfragile_graph_search_degraded_total")
    errors0 = metric("unfragile_graph_probe_runs_total", {"trigger": "rpc", "result": "error"})

    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        stub.RunProbes(mpb.RunProbesRequest(max_prompts=1, seed=1), timeout=60)
    probe_s = time.monotonic() - t0
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert target in err.value.details()
    assert ("DEADLINE_EXCEEDED" if fault == "slow" else "UNAVAILABLE") in err.value.details()
    assert probe_s < 30  # bounded by probe_timeout_s, not by the dependency
    assert metric("unfragile_graph_probe_runs_total", {"trigger": "rpc", "result": "error"}) == errors0 + 1

    t0 = time.monotonic()
    found = stub.Search(mpb.SearchRequest(query="grounded captioning"), timeout=60)
    search_s = time.monotonic() - t0
    assert not found.embeddings_used and "full text only" in found.degraded_reason
    assert found.hits and found.hits[0].model_id == "kosmos-2-patch14-224" and found.hits[0].fts_rank == 1
    assert metric("unfragile_graph_search_degraded_total") == degraded0 + 1

    page = stub.Compare(mpb.CompareRequest(a="kosmos2", b="stable diffusion"), timeout=60)
    assert page.verdict and "| UnfragileRank |" in page.markdown
    stale = "stale" in page.markdown.lower()
    assert stale and "probe" in page.markdown.lower() and "stale" in page.html.lower()
    print(f"RELIABILITY deps {fault}: probe_failed_after_s={probe_s:.2f} search_fts_only_after_s={search_s:.2f} "
          f"compare_ok=True staleness_on_page={stale}")
