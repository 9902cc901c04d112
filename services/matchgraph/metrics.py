"""MatchGraph-specific Prometheus metrics (request counts/latency come from the core interceptor)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram

from graph.ingest import IngestResult
from graph.search import SearchResult
from graph.store import Store
from graph.sync import Lag

EVENTS = Counter(
    "unfragile_graph_events_total",
    "Match events received by RecordMatches, by result (inserted, duplicate).",
    ["result"],
)
BATCH_SIZE = Histogram(
    "unfragile_graph_ingest_batch_size",
    "Events per RecordMatches message.",
    buckets=(1, 10, 100, 1_000, 5_000, 10_000, 25_000, 50_000),
)
GRAPH_VERSION = Gauge("unfragile_graph_version", "Sequence number of the last stored match event.")
MODELS = Gauge("unfragile_graph_models", "Models and tools in the catalogue.")
EDGES = Gauge("unfragile_graph_comatch_edges", "Distinct model-model co-match edges in the graph.")
PAGERANK_ITERATIONS = Histogram(
    "unfragile_graph_pagerank_iterations",
    "Power iterations of the last incremental (warm-started) PageRank refresh.",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
RANK_REFRESH_SECONDS = Histogram(
    "unfragile_graph_rank_refresh_seconds",
    "Wall time of each incremental rank refresh (warm-started PageRank + persisting it) after new matches.",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
SEARCH_DEGRADED = Counter(
    "unfragile_graph_search_degraded_total",
    "Searches answered from FTS5 alone because the embedding service was unavailable.",
)
PROBE_RUNS = Counter(
    "unfragile_graph_probe_runs_total", "Probe runs, by trigger (rpc, schedule) and result (ok, error).",
    ["trigger", "result"],
)
READER_LAG_EVENTS = Gauge(
    "unfragile_graph_reader_lag_events",
    "Committed match events this process's answers do not reflect yet (0 on a writer or a single process).",
)
READER_LAG_SECONDS = Gauge(
    "unfragile_graph_reader_lag_seconds",
    "How far behind the store this process's answers are: the oldest commit not yet served is at most this old "
    "(0 on a writer or a single process).",
)
READER_STALE = Gauge(
    "unfragile_graph_reader_stale",
    "1 while this reader is more than max_staleness_s behind the store (its answers carry stale_seconds).",
)
SNAPSHOT_VERSION = Gauge(
    "unfragile_graph_snapshot_version",
    "Store snapshot version of the writer's publication this process serves (a writer: the last it published); "
    "readers that are caught up show the writer's number.",
)
NOTIFY_TO_VISIBLE = Histogram(
    "unfragile_graph_notify_to_visible_seconds",
    "Reader: from first seeing a committed change (change notice or poll) to serving it.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
LEADER_TERM = Gauge(
    "unfragile_graph_leader_term",
    "Leadership term this process writes under, on PostgreSQL with writer-capable processes (0: a reader, a standby "
    "writer, or a lone writer without election); the writer that takes over shows a higher term.",
)
DB_POOL_SIZE = Gauge("unfragile_graph_db_pool_size", "PostgreSQL connections open in this process's pool.")
DB_POOL_IN_USE = Gauge("unfragile_graph_db_pool_in_use", "PostgreSQL connections of the pool checked out now.")
DB_POOL_WAITING = Gauge(
    "unfragile_graph_db_pool_waiting", "Calls waiting for a PostgreSQL connection (pool saturated when > 0).")


def observe_graph(models: int, edges: int, version: int, iterations: int | None = None,
                  seconds: float | None = None) -> None:
    """Graph size gauges; ``iterations`` and ``seconds`` of a rank refresh when one just ran."""
    MODELS.set(models)
    EDGES.set(edges)
    GRAPH_VERSION.set(version)
    if iterations is not None:
        PAGERANK_ITERATIONS.observe(iterations)
    if seconds is not None:
        RANK_REFRESH_SECONDS.observe(seconds)


def observe_ingest(result: IngestResult, batch: int, models: int) -> None:
    """Record one RecordMatches message's outcome and the graph's size after it.

    The edge gauge is set on each PageRank refresh instead: counting edges merges the queued deltas.
    """
    EVENTS.labels("inserted").inc(result.inserted)
    EVENTS.labels("duplicate").inc(result.duplicates)
    BATCH_SIZE.observe(batch)
    MODELS.set(models)
    GRAPH_VERSION.set(result.graph_version)


def observe_lag(lag: Lag) -> None:
    """A reader's lag after each follow step (a writer's is set once to 0)."""
    READER_LAG_EVENTS.set(lag.events)
    READER_LAG_SECONDS.set(lag.seconds)
    READER_STALE.set(int(lag.stale))
    SNAPSHOT_VERSION.set(lag.publication)


def watch_pool(store: Store) -> None:
    """Pool gauges read at scrape time; a store without a pool (SQLite) leaves them unset."""
    if store.pool_stats() is None:
        return

    def stat(field: str) -> Callable[[], float]:
        def read() -> float:
            stats = store.pool_stats()
            return float(getattr(stats, field)) if stats is not None else 0.0
        return read

    DB_POOL_SIZE.set_function(stat("size"))
    DB_POOL_IN_USE.set_function(stat("in_use"))
    DB_POOL_WAITING.set_function(stat("waiting"))


def observe_search(result: SearchResult) -> None:
    if not result.embeddings_used:
        SEARCH_DEGRADED.inc()


@contextmanager
def probe_run(trigger: str) -> Iterator[None]:
    try:
        yield
    except BaseException:
        PROBE_RUNS.labels(trigger, "error").inc()
        raise
    PROBE_RUNS.labels(trigger, "ok").inc()
