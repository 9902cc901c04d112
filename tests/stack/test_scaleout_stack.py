"""A scaled-out stack as ``unfragile up --graph-db-url postgresql://... --graph-readers 2`` runs it: one
MatchGraph writer and two readers on a real PostgreSQL, the gateway in front. The seed comparison page is
served from the readers (the writer answers no read), and every process stops cleanly."""

from __future__ import annotations

import re
import time
import urllib.request

from graph.seed_data import KOSMOS2_ID, SD_ID, SEED_MODELS
from services.core.client import channel
from services.matchgraph.types import record_to_pb
from services.stack import GATEWAY, READER, Stack
from unfragile.matchgraph.v1 import matchgraph_pb2 as pb
from unfragile.matchgraph.v1 import matchgraph_pb2_grpc as pb_grpc


def _count(metrics_url: str, method: str) -> float:
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    return sum(float(v) for v in re.findall(
        rf'^unfragile_grpc_requests_total{{[^}}]*method="{method}"[^}}]*}} (\S+)$', text, re.M))


def test_writer_two_readers_and_gateway_on_postgres_serve_the_seed_page(pg_server, tmp_path):
    url = pg_server.create_database("stack_graph", template="matchgraph_template")
    names = ["matchgraph", f"{READER}1", f"{READER}2", GATEWAY]
    stack = Stack(data_dir=tmp_path / "var", ports=Stack.free_ports(names), graph_db_url=url, graph_readers=2)
    try:
        stack.start(["matchgraph", GATEWAY], timeout=240)
        assert [p.name for p in stack.procs] == names
        with channel(stack.target("matchgraph")) as ch:  # `unfragile graph seed --target <writer>`
            writer = pb_grpc.MatchGraphStub(ch)
            for m in SEED_MODELS:
                writer.UpsertModel(pb.UpsertModelRequest(model=record_to_pb(m)), timeout=30)
            want = writer.GetSnapshot(pb.GetSnapshotRequest(), timeout=10).snapshot_version
        for r in stack.readers:
            with channel(stack.target(r)) as ch:
                stub = pb_grpc.MatchGraphStub(ch)
                for _ in range(200):
                    if stub.GetSnapshot(pb.GetSnapshotRequest(), timeout=10).snapshot_version == want:
                        break
                    time.sleep(0.05)
                snap = stub.GetSnapshot(pb.GetSnapshotRequest(), timeout=10)
                assert (snap.role, snap.snapshot_version) == ("reader", want)
        pages = [urllib.request.urlopen(f"{stack.gateway_url}/compare/{KOSMOS2_ID}-vs-{SD_ID}", timeout=60)
                 for _ in range(4)]
        html = pages[0].read().decode()
        assert all(p.status == 200 for p in pages)
        assert "Verdict" in html and "kosmos-2-patch14-224" in html and "Stable Diffusion" in html
        assert int(pages[0].headers["X-Snapshot-Version"]) == want
        served = {p.name: _count(p.metrics_url, "Compare") for p in stack.procs if p.name != GATEWAY}
        assert served["matchgraph"] == 0 and served[f"{READER}1"] + served[f"{READER}2"] == 4, served
    finally:
        codes = stack.stop()
    assert codes == dict.fromkeys(names, 0), codes
