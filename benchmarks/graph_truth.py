"""``graph.truth.*``: what the evidence rules cost.

- ``graph.truth.import_models_per_s``: catalogue models per second from a JSON Lines file into the
  store: parse and validate every line (``graph.catalogue_file``), then ``Engine.import_models`` in
  batches of ``catalogue_file.IMPORT_BATCH`` (as the import command sends them; one SQLite transaction
  each: model rows, aliases, tasks, dated observations,
  capabilities, published results, full-text search documents, one statement per table and the
  FTS5 index added in one statement). The file is made from the shipped
  catalogue's real lines, repeated with changed ids, names and aliases (``IMPORT_MODELS`` of them).
  The notes give the process-CPU rate and each stage's share.
- ``graph.truth.refresh_over_baseline``: after a batch of events on the ~1M-edge graph, the rank
  refresh with shrinkage and freshness (PageRank warm refresh, shrunk Match Graph values, the
  renormalised rank over five dimensions of which freshness is one) divided by the refresh the
  previous method did (the same PageRank refresh, Match Graph as PageRank percentiles, a fixed
  four-dimension weighted sum). Each round takes a new batch; the two point computations are timed
  on the same refreshed graph (best of three) and the PageRank refresh is added to both.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Result
from graph import catalogue_file, rank, rates
from graph.config import EngineConfig
from graph.engine import Engine

SCALE = float(os.environ.get("UNFRAGILE_BENCH_GRAPH_SCALE", "1.0"))
IMPORT_MODELS = max(5_000, int(50_000 * SCALE))
IMPORT_BATCH = catalogue_file.IMPORT_BATCH  # what `unfragile graph import catalogue` sends per message
REFRESH_ROUNDS = 3


def _copy(line: dict[str, Any], k: int) -> dict[str, Any]:
    """A catalogue line as the k-th synthetic model: new id, name, aliases and slug; the same content."""
    d: dict[str, Any] = json.loads(json.dumps(line))
    tail = f"-x{k}"
    d["id"] += tail
    d["name"] += f" x{k}"
    d["aliases"] = [a + tail for a in d.get("aliases") or []]
    d["slug"] = (d.get("slug") or d["id"]) + tail
    if d.get("hub_id"):
        d["hub_id"] += tail
    return d


def import_results(log: Any = print) -> list[Result]:
    from graph.store import SqliteStore

    lines = [json.loads(x) for x in catalogue_file.DEFAULT_PATH.read_text(encoding="utf-8").splitlines() if x.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "catalogue.jsonl"
        with path.open("w", encoding="utf-8") as fh:
            for k in range(IMPORT_MODELS):
                fh.write(json.dumps(_copy(lines[k % len(lines)], k)) + "\n")
        engine = Engine(SqliteStore(Path(tmp) / "import.db"), EngineConfig())
        engine.load()
        wall, cpu = time.perf_counter(), time.process_time()
        records = catalogue_file.load(path)
        parsed_wall, parsed_cpu = time.perf_counter(), time.process_time()
        for i in range(0, len(records), IMPORT_BATCH):
            engine.import_models(records[i:i + IMPORT_BATCH], validated=True)
        end_wall, end_cpu = time.perf_counter(), time.process_time()
        stored = len(engine.catalogue.ids)
        engine.store.close()
    rate = stored / (end_wall - wall)
    log(f"import: {rate:,.0f} models/s ({IMPORT_MODELS} models)")
    return [Result("graph.truth.import_models_per_s", rate, 5_000, "higher", "models/s", "absolute",
                   f"{IMPORT_MODELS} models ({len(lines)} real catalogue lines repeated with new ids) from one JSON "
                   f"Lines file into SQLite (WAL, synchronous=FULL) in transactions of {IMPORT_BATCH}: parse + "
                   f"validate {parsed_wall - wall:.1f} s, store {end_wall - parsed_wall:.1f} s (rows, dated "
                   f"observations, FTS5 search documents); process CPU {stored / (end_cpu - cpu):,.0f} models/s "
                   f"(parse {stored / (parsed_cpu - cpu):,.0f}/s, store {stored / (end_cpu - parsed_cpu):,.0f}/s); "
                   f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")]


def _best(fn: Any, n: int = 3) -> float:
    best = float("inf")
    for _ in range(n):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def refresh_results(engine: Engine, batches: list[list[Any]], log: Any = print) -> list[Result]:
    """``graph.truth.refresh_over_baseline`` on ``engine``'s graph, one round per event batch."""
    n = len(engine.catalogue.ids)
    rng = np.random.default_rng(5)
    values = rng.random((n, 5))  # the catalogue-derived dimensions are cached between event batches
    mask = rng.random((n, 5)) < 0.7
    mask[:, 3] = True  # match graph: always measured (its prior)
    weights = np.tile([engine.config.weights[d] for d in rank.DIMENSIONS], (n, 1))
    old_w = np.array([0.25, 0.25, 0.25, 0.25])
    c = engine.config
    g = engine.graph
    refresh_s = old_s = new_s = 0.0
    for events in batches:
        engine.record_events(events)
        t = time.perf_counter()
        g.refresh()
        refresh_s += time.perf_counter() - t

        def old() -> None:
            p = rank.midrank_percentile(np.where(g.degree() > 0, g.pr, 0.0))
            x = np.column_stack([values[:, 0], values[:, 2], p, values[:, 1]])
            (x * old_w).sum(axis=1) * 100

        def new() -> None:
            matched = engine.counts.stats[:, 0]
            x = values.copy()
            x[:, 3] = rates.match_graph_point(g.pr, matched, c.match_graph_prior, c.match_graph_strength)
            rank.rank_points(x, mask, weights, mask)

        old_s += _best(old)
        new_s += _best(new)
    ratio = (refresh_s + new_s) / (refresh_s + old_s)
    edges = int(g.w.nnz // 2)
    log(f"truth refresh: PageRank {refresh_s:.2f} s, points old {old_s * 1000:.0f} ms, new {new_s * 1000:.0f} ms")
    return [Result("graph.truth.refresh_over_baseline", ratio, 1.2, "lower", "ratio",
                   "the same refresh with the previous method (Match Graph as PageRank percentiles, a fixed "
                   "four-dimension weighted sum)",
                   f"{n} models, {edges} co-match edges, {len(batches)} batches of {len(batches[0])} events: warm "
                   f"PageRank {refresh_s * 1000:.0f} ms in all; points with shrinkage and freshness "
                   f"{new_s * 1000:.0f} ms vs percentiles {old_s * 1000:.0f} ms; load average "
                   f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")]
