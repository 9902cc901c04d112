"""Gateway overhead: what HTTP + JSON/HTML rendering adds on top of the gRPC call it makes.

A real MatchGraph (seeded: the two seed models and a few searches) and the real gateway
on localhost, warm, one keep-alive HTTP client, sequential calls. The baseline is the
same RPC made directly over gRPC in the same run; the result is the p50 latency the
gateway adds (ms), for the JSON comparison and for the full comparison page (template
plus four server-side SVG charts).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from benchmarks.common import Result, percentile

N = 200


def run() -> list[Result]:
    import grpc
    import httpx

    from graph.seed_data import KOSMOS2_ID, SD_ID, SEED_MODELS
    from services.core.server import start_server
    from services.gateway.server import start
    from services.gateway.settings import Settings
    from services.matchgraph.app import Settings as GraphSettings
    from services.matchgraph.app import build_service
    from services.matchgraph.types import record_to_pb
    from unfragile.matchgraph.v1 import matchgraph_pb2 as pb
    from unfragile.matchgraph.v1 import matchgraph_pb2_grpc as pb_grpc

    def once(fn) -> float:  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    with tempfile.TemporaryDirectory() as tmp:
        gs = GraphSettings(port=0, metrics_port=-1, db_url=f"sqlite:///{Path(tmp) / 'g.db'}")
        graph = start_server(gs, build_service(gs))
        channel = grpc.insecure_channel(graph.address)
        stub = pb_grpc.MatchGraphStub(channel)
        for m in SEED_MODELS:
            stub.UpsertModel(pb.UpsertModelRequest(model=record_to_pb(m)))
        gw = start(Settings(port=0, metrics_port=-1, matchgraph_target=graph.address, log_level="WARNING"))
        try:
            req = pb.CompareRequest(a=KOSMOS2_ID, b=SD_ID)
            page = f"/compare/{KOSMOS2_ID}-vs-{SD_ID}"
            with httpx.Client(base_url=gw.url) as http:
                etag = ""
                calls = {
                    "direct": lambda: stub.Compare(req),
                    "json": lambda: http.get("/api/v1/compare", params={"a": KOSMOS2_ID, "b": SD_ID}),
                    "page": lambda: http.get(page),
                    "revalidate": lambda: http.get(page, headers={"If-None-Match": etag}),
                }
                etag = http.get(page).headers["etag"]
                for fn in calls.values():
                    for _ in range(5):
                        fn()
                # Interleaved, so a busy machine slows every kind of call alike.
                lat: dict[str, list[float]] = {k: [] for k in calls}
                for _ in range(N):
                    for k, fn in calls.items():
                        lat[k].append(once(fn))
        finally:
            gw.stop()
            channel.close()
            graph.stop(0)

    direct = lat["direct"]
    base = percentile(direct, 50) * 1000

    def added(kind: str) -> float:
        return percentile([x - d for x, d in zip(lat[kind], direct)], 50) * 1000

    def ms(kind: str, q: float) -> str:
        return f"{percentile(lat[kind], q) * 1000:.2f} ms"

    note = f"{N} interleaved rounds, keep-alive; direct gRPC Compare p50 {base:.2f} ms, p99 {ms('direct', 99)}"
    return [
        Result("gateway.compare_json.added_p50_ms", added("json"), 10.0, "lower", "ms",
               "direct gRPC Compare in the same round (median of paired differences)",
               f"{note}; GET /api/v1/compare p50 {ms('json', 50)}, p99 {ms('json', 99)}"),
        Result("gateway.compare_page.added_p50_ms", added("page"), 20.0, "lower", "ms",
               "direct gRPC Compare in the same round (median of paired differences)",
               f"{note}; GET /compare/<a>-vs-<b> (HTML + 4 SVG charts) p50 {ms('page', 50)}, p99 {ms('page', 99)}; "
               f"If-None-Match -> 304 p50 {ms('revalidate', 50)}"),
    ]


if __name__ == "__main__":
    for r in run():
        print(r.name, f"{r.value:.2f}", r.unit, "met" if r.met else "NOT met", "-", r.notes)
