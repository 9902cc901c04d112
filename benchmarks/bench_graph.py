"""MatchGraph benchmarks: ingest rate, incremental refresh vs rebuild, Compare p99, restart.

One synthetic catalogue is built through the real code paths: 200k models (bulk insert,
random adoption/ecosystem signals), then ~340k search events of 3 matched models each,
ingested with ``Engine.record_events`` in batches of 10k (-> ~1M distinct co-match
edges). On that state:

- ``graph.ingest.events_per_s``: events/s of ``record_events`` (SQLite write + counters +
  incremental graph update), measured over the whole build.
- ``graph.refresh.rebuild_over_incremental``: time to rebuild a networkx graph from the
  co-match rows and run ``nx.pagerank`` from scratch, divided by the time of the
  incremental refresh after one more batch of 10k events (matrix + networkx delta, warm
  PageRank to a stricter tolerance than nx's default, and the percentiles of all models).
- ``graph.compare.p99_ms``: p99 of ``Compare`` over real gRPC from warm state (200 calls,
  50 distinct pairs).
- ``graph.restart.seconds``: a fresh server on the same file after a clean stop, from
  open to SERVING (graph rebuilt, PageRank loaded, all scores and intervals computed);
  the value is infinite unless the ranks served after it are identical.
- ``graph.restart_after_crash.seconds``: the same after an unclean stop (the ingest
  engine is dropped without its shutdown checkpoint), which adds the replay of the
  events since the last checkpoint.

- ``graph.pg.ingest_over_sqlite``: events/s of ``RecordMatches`` over gRPC into a server on
  PostgreSQL (a server this benchmark starts, fsync and synchronous_commit on) divided by the
  same stream into a server on SQLite with its default ``synchronous=FULL``.
- ``graph.sqlite.full_over_normal_ingest``: the same stream into SQLite with
  ``synchronous=FULL`` (fsync at every commit: survives power loss) divided by ``NORMAL``.
  Both storage entries use a smaller catalogue (``STORE_MODELS``) and ``STORE_ROUNDS`` rounds with
  the backends interleaved within each; the value is the median over the rounds of the ratio within
  a round (the two streams of one round meet the same machine load; on a shared 2-core machine the
  load drifts by 2x between rounds).

- ``graph.readers.*``: one writer and readers on PostgreSQL against the single SQLite process,
  and the refresh at 10 M co-match edges (``benchmarks/graph_scaleout.py`` says how each is made).
- ``graph.truth.*``: catalogue import rate from the file, and the rank refresh with shrinkage and
  freshness against the previous method's at ~1 M edges (``benchmarks/graph_truth.py``).

- ``graph.failover.*``: SIGKILL of the leading writer of two, mid-stream: takeover seconds, lost and
  duplicated events (``benchmarks/graph_failover.py``).

Sizes can be scaled down with UNFRAGILE_BENCH_GRAPH_SCALE (e.g. 0.1) for a quick look, and the
10 M-edge graph with UNFRAGILE_BENCH_GRAPH_BIG_SCALE (e.g. 0.1: 1 M edges);
UNFRAGILE_BENCH_GRAPH_ONLY=truth,storage,readers,big,failover,core runs only those parts (the other
entries in results.json are kept). These are read here only because benchmarks are not services.
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from benchmarks.common import Result, percentile
from graph.config import EngineConfig
from graph.engine import Engine
from graph.rank import midrank_percentile
from graph.records import MatchEvent, ModelRecord, Signal

PARTS = ("truth", "storage", "readers", "big", "failover", "core")
ONLY = [p for p in os.environ.get("UNFRAGILE_BENCH_GRAPH_ONLY", "").split(",") if p]
PREFIX = "" if ONLY else "graph."  # a partial run replaces only the entries it measured
SCALE = float(os.environ.get("UNFRAGILE_BENCH_GRAPH_SCALE", "1.0"))
N_MODELS = int(200_000 * SCALE)
N_EVENTS = int(340_000 * SCALE)  # x 3 models each -> ~1M distinct co-match edges
BATCH = 10_000
CONFIG = EngineConfig(bootstrap_rounds=100, graph_bootstrap_rounds=20, graph_bootstrap_tol=1e-6)
STORE_MODELS = max(2_000, int(20_000 * SCALE))
STORE_EVENTS = max(10_000, int(100_000 * SCALE))
STORE_BATCH = 5_000
STORE_ROUNDS = 5


def _models(rng: np.random.Generator, n: int = N_MODELS) -> list[ModelRecord]:
    dl = rng.lognormal(6, 3, n)
    likes = rng.lognormal(2, 2, n)
    integ = rng.integers(0, 10, n)
    out = []
    for i in range(n):
        adoption = [Signal("downloads", float(int(dl[i])), "bench", "2026-01-01")]
        if i % 3:
            adoption.append(Signal("likes", float(int(likes[i])), "bench", "2026-01-01"))
        out.append(ModelRecord(f"m{i}", f"Model {i}", adoption=tuple(adoption),
                               ecosystem=(Signal("integrations", float(integ[i]), "bench", "2026-01-01"),)))
    return out


def _events(rng: np.random.Generator, n: int, start: int, n_models: int = N_MODELS) -> list[MatchEvent]:
    picks = rng.integers(0, n_models, size=(n, 3))
    out = []
    for k in range(n):
        a, b, c = picks[k].tolist()
        if a == b or b == c or a == c:
            a, b, c = a, (a + 1) % n_models, (a + 2) % n_models
        out.append(MatchEvent(f"ev{start + k}", f"query {(start + k) % 5000}", (f"m{a}", f"m{b}", f"m{c}"),
                              (f"m{a}",), ()))
    return out


def _log(msg: str) -> None:
    print(f"  [bench_graph] {msg}", file=sys.stderr, flush=True)


def _load() -> str:
    """The machine's load average: the absolute numbers here are wall-clock on a shared machine."""
    return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


def _rebuild_baseline(engine: Engine) -> float:
    """Rebuild networkx from the co-match rows and run nx.pagerank from scratch."""
    t = time.perf_counter()
    a, b, c = engine.graph.upper_edges()
    g: nx.Graph[int] = nx.Graph()
    g.add_nodes_from(range(len(engine.catalogue.ids)))
    g.add_weighted_edges_from(zip(a.tolist(), b.tolist(), c.tolist()))
    nx.pagerank(g, alpha=0.85, weight="weight")
    return time.perf_counter() - t


def _ingest_rate(db_url: str, messages: list, **sets: Any) -> float:
    """Events/s of one RecordMatches stream of ``messages`` into a fresh server on ``db_url``."""
    import grpc

    from services.core.server import start_server
    from services.matchgraph.app import Settings, build_service
    from unfragile.matchgraph.v1 import matchgraph_pb2_grpc as pb_grpc

    settings = Settings(port=0, metrics_port=-1, db_url=db_url, bootstrap_rounds=CONFIG.bootstrap_rounds,
                        graph_bootstrap_rounds=CONFIG.graph_bootstrap_rounds, **sets)
    running = start_server(settings, build_service(settings))
    try:
        with grpc.insecure_channel(running.address) as ch:
            stub = pb_grpc.MatchGraphStub(ch)
            gc.collect()
            t = time.perf_counter()
            resp = stub.RecordMatches(iter(messages), timeout=1200)
            elapsed = time.perf_counter() - t
    finally:
        running.stop(0)
    assert resp.inserted == sum(len(m.events) for m in messages), resp
    return resp.inserted / elapsed


def storage_results() -> list[Result]:
    """The two storage ratios: PostgreSQL vs SQLite ingest, SQLite FULL vs NORMAL (see the docstring)."""
    from graph.store import StoreConfig, open_store, sqlite_url
    from tests.pgserver import start_server as start_postgres
    from unfragile.matchgraph.v1 import matchgraph_pb2 as pb

    rng = np.random.default_rng(1)
    models = _models(rng, STORE_MODELS)

    def stream(round_: int) -> list:
        events = _events(rng, STORE_EVENTS, round_ * STORE_EVENTS, STORE_MODELS)
        return [pb.RecordMatchesRequest(events=[
            pb.MatchEvent(event_id=e.event_id, query=e.query, matched=e.matched, compared=e.compared)
            for e in events[i:i + STORE_BATCH]]) for i in range(0, len(events), STORE_BATCH)]

    streams = [stream(r) for r in range(STORE_ROUNDS)]
    pg = start_postgres(durable=True)
    rates: dict[str, list[float]] = {"full": [], "normal": [], "pg": []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            urls = {"full": sqlite_url(Path(tmp) / "full.db"), "normal": sqlite_url(Path(tmp) / "normal.db"),
                    "pg": pg.create_database("bench")}
            sync = {"full": "FULL", "normal": "NORMAL", "pg": "FULL"}
            for key, url in urls.items():
                store = open_store(url, StoreConfig(sqlite_synchronous=sync[key]))  # type: ignore[arg-type]
                store.bulk_insert_models(models)
                store.close()
            for messages in streams:  # interleaved rounds: drifting machine load hits all three alike
                for key, url in urls.items():
                    rates[key].append(_ingest_rate(url, messages, sqlite_synchronous=sync[key]))
                    _log(f"ingest {key}: {rates[key][-1]:,.0f} events/s")
    finally:
        pg.destroy()
    best = {k: max(v) for k, v in rates.items()}

    def paired(a: str, b: str) -> tuple[float, str]:
        ratios = sorted(x / y for x, y in zip(rates[a], rates[b]))
        return float(np.median(ratios)), ", ".join(f"{r:.2f}" for r in ratios)

    pg_ratio, pg_all = paired("pg", "full")
    full_ratio, full_all = paired("full", "normal")
    what = (f"{STORE_EVENTS} events x 3 models per round as {STORE_EVENTS // STORE_BATCH} RecordMatches messages "
            f"of {STORE_BATCH} over gRPC, {STORE_MODELS} models; median over {len(streams)} rounds of the ratio "
            f"within a round (backends interleaved)")
    return [
        Result("graph.pg.ingest_over_sqlite", pg_ratio, 0.8, "higher", "ratio",
               "SQLite (synchronous=FULL, the default) ingest through the same RPC, in the same round",
               f"{what}: the rounds' ratios {pg_all}; best rates PostgreSQL {best['pg']:,.0f} events/s (new events "
               f"COPYed straight into the table under the advisory lock, four round trips per message; fsync on), "
               f"SQLite {best['full']:,.0f} events/s; {_load()}"),
        Result("graph.sqlite.full_over_normal_ingest", full_ratio, 0.8, "higher", "ratio",
               "SQLite synchronous=NORMAL ingest through the same RPC, in the same round",
               f"{what}: the rounds' ratios {full_all}; best rates FULL {best['full']:,.0f} events/s, NORMAL "
               f"{best['normal']:,.0f} events/s; {_load()}"),
    ]


def _ingest_and_refresh(engine: Engine, rng: np.random.Generator) -> tuple[list[Result], int]:
    """``graph.ingest.events_per_s`` and ``graph.refresh.rebuild_over_incremental``; returns them and the edges."""
    ingest_s, ingest_cpu, n_events = 0.0, 0.0, 0
    while n_events < N_EVENTS:  # build ~1M edges through record_events in 10k batches
        batch = _events(rng, BATCH, n_events)
        t, c = time.perf_counter(), time.process_time()
        engine.record_events(batch)
        ingest_s += time.perf_counter() - t
        ingest_cpu += time.process_time() - c
        n_events += len(batch)
    _log(f"ingested {n_events} events in {ingest_s:.1f} s")
    t = time.perf_counter()
    engine.refresh_graph()  # what the first read after the burst pays: merge deltas + warm PageRank
    first_read = time.perf_counter() - t
    edges = int(engine.graph.w.nnz // 2)
    results = [Result("graph.ingest.events_per_s", n_events / ingest_s, 50_000, "higher", "events/s",
                      "absolute", f"{n_events} events x 3 models in batches of {BATCH} into SQLite (WAL) "
                      f"with the per-model counters and the in-memory graph delta; "
                      f"{N_MODELS} models, {edges} edges at the end; process CPU {n_events / ingest_cpu:,.0f} "
                      f"events/s; the first read after the burst then took {first_read:.1f} s (merge + "
                      f"PageRank); {_load()}")]
    # -- incremental refresh after 10k new events vs nx rebuild + nx.pagerank
    new, first = engine.store.record_events(_events(rng, BATCH, n_events))  # the write is common to both
    gc.collect()
    t = time.perf_counter()
    engine.graph.version = first + len(new) - 1
    engine.counts.apply_ids([(e.matched, e.compared, e.clicked) for e in new], engine.catalogue.pos)
    iters = engine.graph.refresh()
    midrank_percentile(np.where(engine.graph.degree() > 0, engine.graph.pr, 0.0))
    incremental = time.perf_counter() - t
    engine.checkpoints.save_pagerank()
    gc.collect()
    rebuild = _rebuild_baseline(engine)
    _log(f"refresh: incremental {incremental:.2f} s, rebuild {rebuild:.2f} s")
    results.append(Result("graph.refresh.rebuild_over_incremental", rebuild / incremental, 5.0, "higher", "ratio",
                          "nx.Graph rebuild + nx.pagerank (default tol) from scratch",
                          f"{N_MODELS} models, {engine.graph.w.nnz // 2} edges, batch of {BATCH} events: "
                          f"incremental {incremental * 1000:.0f} ms ({iters} warm PageRank iterations to L1 "
                          f"< {CONFIG.pagerank.tol:g}, + percentiles), rebuild {rebuild * 1000:.0f} ms; {_load()}"))
    return results, edges


def _serve_and_rank(settings: Any) -> tuple[Any, float, list[tuple[str, float]]]:
    """A server started on ``settings`` (running), the seconds it took to SERVING, and its top-100 ranks."""
    import grpc

    from services.core.server import start_server
    from services.matchgraph.app import build_engine, build_service
    from unfragile.matchgraph.v1 import matchgraph_pb2 as pb
    from unfragile.matchgraph.v1 import matchgraph_pb2_grpc as pb_grpc

    gc.collect()
    t = time.perf_counter()
    running = start_server(settings, build_service(settings, build_engine(settings)))
    seconds = time.perf_counter() - t
    with grpc.insecure_channel(running.address) as ch:
        ranks = [(m.id, m.scores.rank.value) for m in pb_grpc.MatchGraphStub(ch).Rank(pb.RankRequest(limit=100)).models]
    return running, seconds, ranks


def _compare_p99(running: Any, rng: np.random.Generator) -> tuple[list[float], int]:
    import grpc

    from unfragile.matchgraph.v1 import matchgraph_pb2 as pb
    from unfragile.matchgraph.v1 import matchgraph_pb2_grpc as pb_grpc

    with grpc.insecure_channel(running.address) as ch:
        stub = pb_grpc.MatchGraphStub(ch)
        pairs = [(f"m{int(a)}", f"m{int(b)}") for a, b in rng.integers(0, N_MODELS, size=(50, 2)) if a != b]
        for a, b in pairs:  # warm: first Compare of a pair computes its robustness curves
            stub.Compare(pb.CompareRequest(a=a, b=b))
        lat = []
        for k in range(200):
            a, b = pairs[k % len(pairs)]
            t = time.perf_counter()
            stub.Compare(pb.CompareRequest(a=a, b=b))
            lat.append(time.perf_counter() - t)
    return lat, len(pairs)


def _compare_and_restarts(path: Path, ranks_orig: list[tuple[str, float]], edges: int,
                          rng: np.random.Generator) -> list[Result]:
    """``graph.compare.p99_ms`` on a server started after an unclean stop, and the two restart timings."""
    from services.matchgraph.app import Settings

    settings = Settings(port=0, metrics_port=-1, db_url=f"sqlite:///{path}", bootstrap_rounds=CONFIG.bootstrap_rounds,
                        graph_bootstrap_rounds=CONFIG.graph_bootstrap_rounds,
                        graph_bootstrap_tol=CONFIG.graph_bootstrap_tol)
    running, restart_s, ranks_before = _serve_and_rank(settings)
    _log(f"restart after unclean stop: {restart_s:.1f} s")
    try:
        lat, n_pairs = _compare_p99(running, rng)
    finally:
        running.stop(0)
    results = [Result("graph.compare.p99_ms", percentile(lat, 99) * 1000, 5.0, "lower", "ms", "absolute",
                      f"over gRPC, {N_MODELS} models / {edges} edges, 200 calls over {n_pairs} warm pairs; "
                      f"p50 {percentile(lat, 50) * 1000:.2f} ms; {_load()}")]
    # -- restart: the server above started on the state the ingest left; do it once more and compare ranks
    running, restart2, ranks_after = _serve_and_rank(settings)
    running.stop(0)
    same = ranks_after == ranks_before == ranks_orig
    results.append(Result("graph.restart.seconds", restart2, 30.0, "lower", "s", "absolute",
                          f"after a clean stop (SIGTERM drain checkpoints): open DB -> SERVING with {edges} edges, "
                          f"{N_MODELS} models (graph rebuilt, PageRank and its bootstrap loaded, all scores and "
                          f"intervals computed); top-100 ranks identical to those served before both "
                          f"restarts: {same}; {_load()}"))
    results.append(Result("graph.restart_after_crash.seconds", restart_s, 30.0, "lower", "s", "absolute",
                          f"after an unclean stop: as above, plus replaying the events since the last checkpoint "
                          f"(every {CONFIG.checkpoint_every_events:,} events) and recomputing the PageRank "
                          f"bootstrap; {_load()}"))
    if not same:
        for r in results[-2:]:
            r.value = float("inf")
    return results


def run() -> list[Result]:
    from benchmarks.graph_failover import failover_results
    from benchmarks.graph_scaleout import big_refresh_results, readers_results
    from benchmarks.graph_truth import import_results, refresh_results
    from graph.store import SqliteStore

    unknown = set(ONLY) - set(PARTS)
    if unknown:
        raise ValueError(f"UNFRAGILE_BENCH_GRAPH_ONLY: unknown parts {sorted(unknown)}; choose from {PARTS}")
    parts = set(ONLY or PARTS)
    results: list[Result] = import_results(_log) if "truth" in parts else []
    if "storage" in parts:
        results += storage_results()
    if "readers" in parts:
        results += readers_results(_models, _events)
    if "big" in parts:
        results += big_refresh_results(CONFIG)
    if "failover" in parts:
        results += failover_results(_models)
    if "core" not in parts:
        return results
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.db"
        store = SqliteStore(path)
        store.bulk_insert_models(_models(rng))
        engine = Engine(store, CONFIG)
        engine.load()
        got, edges = _ingest_and_refresh(engine, rng)
        results += got
        start = N_EVENTS + 2 * BATCH
        results += refresh_results(engine, [_events(rng, BATCH, start + k * BATCH) for k in range(3)], _log)
        engine.checkpoints.save_pagerank()  # as after the ingest: the restarts below start from this PageRank
        ranks_orig = [(i, c.rank.value) for i, _n, c in engine.rank("", 100, 0)[0]]  # before any restart
        engine.store.close()  # an unclean stop: no shutdown checkpoint
        del engine
        results += _compare_and_restarts(path, ranks_orig, edges, rng)
    return results


if __name__ == "__main__":
    for r in run():
        print(f"{r.name} = {r.value:.4g} {r.unit} (target {r.target}, {'met' if r.met else 'NOT met'}) {r.notes}")
