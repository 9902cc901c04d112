"""MatchGraph scale-out benchmarks (``graph.readers.*``), run by bench_graph.py.

One catalogue (``READ_MODELS`` models, ``READ_EVENTS`` events of 3 models) is built in an SQLite
file through the engine, then copied into a PostgreSQL this benchmark starts (fsync on) with
``graph migrate``: the single process and the writer/readers serve the same data. Every
MatchGraph runs as its own process (``python -m services.cli serve matchgraph``), the clients
in this process, all on this machine's cores (client load included).

- ``graph.readers.compare_p99_over_single``: Compare p99 on a reader / on the single SQLite
  process (same 50 warm pairs, sequential calls, one server busy at a time); the answers are
  checked byte-identical.
- ``graph.readers.capacity_2_over_1``: what two readers serve per CPU-second they get, over what one
  reader does: under the same Compare + Search (4:1) load per reader (one asyncio client, 8 concurrent
  calls per reader), each reader's requests served / its process CPU seconds (user + system, all
  threads), summed over the readers, divided by the one reader's; reader i is pinned to core i (when
  there are enough cores), and the involuntary context switches per request go in the notes. This
  measures the readers (does a second reader cost each request more: shared locks, the database,
  following?), not the machine: on 2 cores the client, both readers, the writer and PostgreSQL share
  the cores, so the wall-clock throughput ratio (in the notes, with each process's CPU use) shows the
  box's cores, not the readers.
- ``graph.readers.commit_to_visible_p99_s``: RecordMatches acknowledged by the writer -> the
  reader's GetSnapshot reports that graph version, p99 of sequential commits.
- ``graph.readers.refresh_10m_edges_s``: at 10 M co-match edges (``UNFRAGILE_BENCH_GRAPH_BIG_SCALE``
  scales it down, e.g. 0.1 for 1 M), one 10k-event batch applied, then PageRank (warm) and its
  bootstrap replicates refreshed, in seconds; ``graph.readers.refresh_10m_rebuild_ratio`` divides a
  rebuild from the edges (matrix, cold PageRank, replicates) by it.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Result, percentile

READ_MODELS = int(os.environ.get("UNFRAGILE_BENCH_GRAPH_READ_MODELS", "20000"))
READ_EVENTS = int(os.environ.get("UNFRAGILE_BENCH_GRAPH_READ_EVENTS", "100000"))
BIG_SCALE = float(os.environ.get("UNFRAGILE_BENCH_GRAPH_BIG_SCALE", "1.0"))
SERVER_SETS = ("bootstrap_rounds=100", "graph_bootstrap_rounds=20", "graph_bootstrap_tol=1e-6", "grace_seconds=2")


def _log(msg: str) -> None:
    print(f"  [bench_graph readers] {msg}", file=sys.stderr, flush=True)


def _load() -> str:
    return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


def _stub(target: str) -> Any:
    from services.core.client import channel
    from unfragile.matchgraph.v1 import matchgraph_pb2_grpc as pb_grpc

    return pb_grpc.MatchGraphStub(channel(target, balance=True))


def _build(tmp: Path, models: list[Any], event_batches: list[list[Any]], pg_url: str) -> str:
    """The catalogue and events in an SQLite file (returned), copied into ``pg_url``."""
    from graph.config import EngineConfig
    from graph.engine import Engine
    from graph.store import open_store, sqlite_url
    from graph.store.migrate import migrate

    url = sqlite_url(tmp / "single.db")
    engine = Engine(open_store(url), EngineConfig(bootstrap_rounds=100, graph_bootstrap_rounds=20,
                                                  graph_bootstrap_tol=1e-6))
    engine.store.bulk_insert_models(models)
    engine.load()
    for batch in event_batches:
        engine.record_events(batch)
    engine.close()  # refresh + checkpoint: every server below starts from the same PageRank vector
    src, dst = open_store(url), open_store(pg_url)
    try:
        migrate(src, dst)
    finally:
        src.close()
        dst.close()
    return url


def _compare_latency(target: str, pairs: list[tuple[str, str]]) -> tuple[list[float], list[bytes]]:
    from unfragile.matchgraph.v1 import matchgraph_pb2 as pb

    stub = _stub(target)
    answers = [stub.Compare(pb.CompareRequest(a=a, b=b), timeout=120).SerializeToString(deterministic=True)
               for a, b in pairs]  # warm: the first Compare of a pair computes its robustness curves
    lat = []
    for k in range(200):
        a, b = pairs[k % len(pairs)]
        t = time.perf_counter()
        stub.Compare(pb.CompareRequest(a=a, b=b), timeout=60)
        lat.append(time.perf_counter() - t)
    return lat, answers


def _cpu_s(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def _switches(pid: int) -> int:
    """Involuntary context switches of a process so far (all threads): how often the OS took its core away."""
    import psutil

    proc = psutil.Process(pid)
    return sum(t.involuntary for t in (psutil.Process(t.id).num_ctx_switches() for t in proc.threads()))


def _pin(readers: list[Any]) -> str:
    """Reader i on core i (when the machine has a core per reader): each reader's CPU is its own core's."""
    import psutil

    cores = os.cpu_count() or 1
    if cores < len(readers):
        return "readers not pinned (fewer cores than readers)"
    for i, r in enumerate(readers):
        psutil.Process(r.proc.pid).cpu_affinity([i])
        for t in psutil.Process(r.proc.pid).threads():
            psutil.Process(t.id).cpu_affinity([i])
    return f"reader i pinned to core i of {cores}"


def _throughput(readers: list[Any], pairs: list[tuple[str, str]], seconds: float,
                per_reader: int = 8) -> dict[str, Any]:
    """Compare + Search (4:1) load of ``per_reader`` concurrent calls per reader from one asyncio client (the
    cheapest Python client): calls/s, and per reader its calls and the CPU seconds its process used meanwhile;
    the client's own CPU seconds too."""
    concurrency = per_reader * len(readers)
    import asyncio

    from services.core.client import channel
    from unfragile.matchgraph.v1 import matchgraph_pb2 as pb
    from unfragile.matchgraph.v1 import matchgraph_pb2_grpc as pb_grpc

    queries = ["12", "345", "7001", "m99", "1999"]  # each matches a few models' names
    done = [0] * len(readers)

    async def load() -> None:
        channels = [channel(r.target, aio=True) for r in readers]
        stubs = [pb_grpc.MatchGraphStub(ch) for ch in channels]
        deadline = time.monotonic() + seconds

        async def work(i: int) -> None:
            k, which = i, i % len(readers)
            stub = stubs[which]
            while time.monotonic() < deadline:
                if k % 5 == 4:
                    await stub.Search(pb.SearchRequest(query=queries[k % len(queries)], limit=10), timeout=60)
                else:
                    a, b = pairs[k % len(pairs)]
                    await stub.Compare(pb.CompareRequest(a=a, b=b), timeout=60)
                done[which] += 1
                k += concurrency
        await asyncio.gather(*(work(i) for i in range(concurrency)))
        for ch in channels:
            await ch.close()

    cpu0, client0, t0 = [_cpu_s(r.proc.pid) for r in readers], time.process_time(), time.perf_counter()
    sw0 = [_switches(r.proc.pid) for r in readers]
    asyncio.run(load())
    wall = time.perf_counter() - t0
    cpu = [_cpu_s(r.proc.pid) - c for r, c in zip(readers, cpu0)]
    switched = [_switches(r.proc.pid) - s for r, s in zip(readers, sw0)]
    return {"rate": sum(done) / seconds, "calls": done, "cpu": cpu, "client_cpu": time.process_time() - client0,
            "wall": wall, "switches": switched}


def _capacity(run: dict[str, Any]) -> float:
    """Requests served per CPU-second, summed over the readers of a run."""
    return float(sum(n / c for n, c in zip(run["calls"], run["cpu"]) if c > 0))


def _commit_to_visible(writer: str, reader: str, ids: list[str], n: int = 60) -> list[float]:
    from unfragile.matchgraph.v1 import matchgraph_pb2 as pb

    w, r = _stub(writer), _stub(reader)
    rng = np.random.default_rng(7)
    out = []
    for k in range(n):
        picks = rng.choice(len(ids), size=(100, 3), replace=True)
        events = [pb.MatchEvent(event_id=f"vis{k}-{i}", query="q", matched=list(dict.fromkeys(ids[j] for j in p)))
                  for i, p in enumerate(picks)]
        t = time.perf_counter()
        seq = w.RecordMatches(iter([pb.RecordMatchesRequest(events=events)]), timeout=60).graph_version
        while r.GetSnapshot(pb.GetSnapshotRequest(), timeout=10).graph_version < seq:
            time.sleep(0.002)
        out.append(time.perf_counter() - t)
    return out


def readers_results(make_models: Callable[..., list[Any]], make_events: Callable[..., list[Any]]) -> list[Result]:
    from tests.pgserver import start_server as start_postgres
    from tests.reliability.relhelpers import ServerProcess

    rng = np.random.default_rng(3)
    models = make_models(rng, READ_MODELS)
    batches = [make_events(rng, 10_000, i, READ_MODELS) for i in range(0, READ_EVENTS, 10_000)]
    pg = start_postgres(durable=True)
    procs: list[ServerProcess] = []

    def serve(*sets: str) -> str:
        proc = ServerProcess("matchgraph", *SERVER_SETS, *sets)
        procs.append(proc)
        return proc.wait_serving(600).target

    try:
        with tempfile.TemporaryDirectory() as tmp:
            pg_url = pg.create_database("readers")
            sqlite = _build(Path(tmp), models, batches, pg_url)
            _log(f"built {READ_MODELS} models, {READ_EVENTS} events (SQLite and PostgreSQL)")
            pairs = [(f"m{int(a)}", f"m{int(b)}") for a, b in rng.integers(0, READ_MODELS, (50, 2)) if a != b]
            single = serve(f"db_url={sqlite}")
            writer = serve(f"db_url={pg_url}", "role=writer")
            readers = [serve(f"db_url={pg_url}", "role=reader", f"writer_address={writer}") for _ in range(2)]
            m = _measure(single, [p for p in procs if p.target in readers], pairs)
            m["visible"] = _commit_to_visible(writer, readers[0], [rec.id for rec in models[:2000]])
            _log(f"commit -> visible p99 {percentile(m['visible'], 99) * 1000:.0f} ms")
    finally:
        for p in procs:
            p.kill()
        pg.destroy()
    return _readers_report(m, len(pairs))


def _measure(single: str, readers: list[Any], pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Compare latency on the single process and a reader, read load over 1 and 2 readers."""
    _, ans_single = _compare_latency(single, pairs)  # warm each: robustness curves of every pair
    _, ans_reader = _compare_latency(readers[0].target, pairs)
    _compare_latency(readers[1].target, pairs)
    pinned = _pin(readers)
    lat_single = lat_reader = [float("inf")]
    one: dict[str, Any] = {"rate": 0.0}
    two: dict[str, Any] = {"rate": 0.0}
    for _round in range(2):  # interleaved rounds, best of each: the machine's load drifts
        lat_single = min(lat_single, _compare_latency(single, pairs)[0], key=lambda x: percentile(x, 99))
        lat_reader = min(lat_reader, _compare_latency(readers[0].target, pairs)[0], key=lambda x: percentile(x, 99))
        one = max(one, _throughput(readers[:1], pairs, 8.0), key=lambda r: _capacity(r) if "cpu" in r else 0.0)
        two = max(two, _throughput(readers, pairs, 8.0), key=lambda r: _capacity(r) if "cpu" in r else 0.0)
    _log(f"Compare p99: single {percentile(lat_single, 99) * 1000:.2f} ms, "
         f"reader {percentile(lat_reader, 99) * 1000:.2f} ms")
    _log(f"read load: 1 reader {one['rate']:.0f}/s ({_cores(one)}), 2 readers {two['rate']:.0f}/s ({_cores(two)})")
    return {"single": lat_single, "reader": lat_reader, "one": one, "two": two, "same": ans_single == ans_reader,
            "pinned": pinned}


def _cores(run: dict[str, Any]) -> str:
    """Cores each process used during a load run, and each reader's CPU per request."""
    readers = " + ".join(f"{c / run['wall']:.2f}" for c in run["cpu"])
    per = ", ".join(f"{c / n * 1000:.2f}" for n, c in zip(run["calls"], run["cpu"]) if n)
    switched = ", ".join(f"{s / n:.2f}" for n, s in zip(run["calls"], run["switches"]) if n)
    return (f"readers {readers} cores, client {run['client_cpu'] / run['wall']:.2f} cores; reader CPU per "
            f"request {per} ms, involuntary context switches per request {switched}")


def _readers_report(m: dict[str, Any], n_pairs: int) -> list[Result]:
    lat_single, lat_reader, one, two, visible = m["single"], m["reader"], m["one"], m["two"], m["visible"]
    same = m["same"]
    what = f"{READ_MODELS} models, {READ_EVENTS} events x 3 models"
    out = [
        Result("graph.readers.compare_p99_over_single", percentile(lat_reader, 99) / percentile(lat_single, 99),
               1.1, "lower", "ratio", "Compare p99 on the single SQLite process (role=all), same data",
               f"{what}; 200 sequential Compares over {n_pairs} warm pairs, each server its own process, best "
               f"of 2 interleaved rounds: reader "
               f"p99 {percentile(lat_reader, 99) * 1000:.2f} ms (p50 {percentile(lat_reader, 50) * 1000:.2f}), single "
               f"p99 {percentile(lat_single, 99) * 1000:.2f} ms (p50 {percentile(lat_single, 50) * 1000:.2f}); "
               f"answers byte-identical: {same}; {_load()}"),
        Result("graph.readers.capacity_2_over_1", _capacity(two) / _capacity(one), 1.8, "higher", "ratio",
               "one reader's requests per CPU-second of its process under the same load",
               f"{what}; Compare + Search 4:1, 8 concurrent calls per reader from one asyncio client (this process), "
               f"8 s each, best of 2 interleaved rounds, {m['pinned']}; requests per reader CPU-second: 2 readers "
               f"{_capacity(two):.0f} (sum), 1 reader {_capacity(one):.0f}. Wall clock the box shows "
               f"{two['rate']:.0f} vs {one['rate']:.0f} calls/s ({two['rate'] / one['rate']:.2f}x): with 1 reader "
               f"{_cores(one)}; with 2 readers {_cores(two)}; the {os.cpu_count()} cores are shared by the client, "
               f"the readers, the writer and PostgreSQL, so a second reader adds a process but no core; {_load()}"),
        Result("graph.readers.commit_to_visible_p99_s", percentile(visible, 99), 1.0, "lower", "s", "absolute",
               f"{what}; {len(visible)} sequential RecordMatches of 100 events: acknowledged by the writer -> "
               f"a reader's GetSnapshot shows that graph version (publish, NOTIFY, replay, PageRank adopted); "
               f"p50 {percentile(visible, 50) * 1000:.0f} ms; {_load()}"),
    ]
    if not same:
        out[0].value = float("inf")
    return out


def _big_graph(n_models: int, n_edges: int, rng: np.random.Generator) -> tuple[list[int], Any]:
    """``n_edges`` distinct random co-match edges (counts 1..4) between ``n_models`` store nodes."""
    x, y = rng.integers(0, n_models, size=(2, int(n_edges * 1.05)), dtype=np.int64)
    a, b = np.minimum(x, y), np.maximum(x, y)
    keys = np.unique((a * n_models + b)[a != b])
    keys = keys[rng.permutation(keys.shape[0])[:n_edges]]
    keys.sort()
    a, b = keys // n_models + 1, keys % n_models + 1
    return list(range(1, n_models + 1)), (a, b, rng.integers(1, 5, size=a.shape[0]).astype(np.int64))


def big_refresh_results(config: Any) -> list[Result]:
    """``graph.readers.refresh_10m_*`` (see the module docstring)."""
    import gc

    from graph.counts import MatchCounts, PageRankBootstrap
    from graph.rank import midrank_percentile

    n_edges = int(10_000_000 * BIG_SCALE)
    n_models = max(1000, n_edges // 5)
    rng = np.random.default_rng(11)
    nodes, edges = _big_graph(n_models, n_edges, rng)
    counts = MatchCounts(config.pagerank)
    counts.load(nodes, edges, 0, np.zeros((n_models, 3), dtype=np.int64))
    boot = PageRankBootstrap(counts.graph, config)
    t = time.perf_counter()
    counts.graph.refresh()
    boot.replicates()
    first = time.perf_counter() - t
    _log(f"{counts.graph.w.nnz // 2} edges, {n_models} models: first PageRank + replicates {first:.1f} s")
    groups = [tuple(int(x) for x in rng.choice(n_models, 3, replace=False)) for _ in range(10_000)]
    gc.collect()
    t = time.perf_counter()
    counts.apply(groups, [], [], 1)
    iters = counts.graph.refresh()
    reps, _has = boot.replicates()
    midrank_percentile(np.where(counts.graph.degree() > 0, counts.graph.pr, 0.0))
    incremental = time.perf_counter() - t
    a, b, c = counts.graph.upper_edges()
    gc.collect()
    t = time.perf_counter()
    fresh = MatchCounts(config.pagerank)
    fresh.load(nodes, (a, b, c), 1, np.zeros((n_models, 3), dtype=np.int64))
    cold = fresh.graph.refresh()
    PageRankBootstrap(fresh.graph, config).replicates()
    midrank_percentile(np.where(fresh.graph.degree() > 0, fresh.graph.pr, 0.0))
    rebuild = time.perf_counter() - t
    _log(f"refresh after 10k events: incremental {incremental:.1f} s, rebuild {rebuild:.1f} s")
    size = f"{counts.graph.w.nnz // 2:,} co-match edges, {n_models:,} models" + \
        ("" if BIG_SCALE == 1.0 else f" (scaled down: UNFRAGILE_BENCH_GRAPH_BIG_SCALE={BIG_SCALE:g})")
    return [
        Result("graph.readers.refresh_10m_edges_s", incremental, 120.0, "lower", "s", "absolute",
               f"{size}: one batch of 10,000 events applied, then PageRank ({iters} warm iterations to L1 < "
               f"{config.pagerank_tol:g}) and its {reps.shape[0]} bootstrap replicates (tol "
               f"{config.graph_bootstrap_tol:g}) refreshed and the percentiles taken; {_load()}"),
        Result("graph.readers.refresh_10m_rebuild_ratio", rebuild / incremental, 1.0, "higher", "ratio",
               "a rebuild from the edges: matrix, cold PageRank, replicates",
               f"{size}: rebuild {rebuild:.1f} s ({cold} cold PageRank iterations), incremental {incremental:.1f} s; "
               f"the replicates (one PageRank each, started from the new point estimate) are most of both; "
               f"{_load()}"),
    ]
