"""MatchGraph leader failover benchmarks (``graph.failover.*``), run by bench_graph.py.

Two writer-capable MatchGraphs and a reader, each its own process, on a PostgreSQL this benchmark
starts (fsync on), with ``FAILOVER_MODELS`` models. One client (``services.matchgraph.routing.LeaderClient``,
as ``unfragile graph record --target a,b`` uses it) streams 100-event RecordMatches messages with its own
event ids to the leader, retrying a message that was not acknowledged on the leader it finds again. The
leader is killed with SIGKILL ``FAILOVER_RUNS`` times, mid-stream; after each takeover the killed process
is started again (it comes back as a standby, so the next kill has a standby to take over).

- ``graph.failover.takeover_s``: the median over the runs of SIGKILL of the leader -> the first message
  acknowledged by another process (the standby's lock attempt, the catch-up and first publication under
  its term, and the client finding it: everything a client waits for).
- ``graph.failover.lost_events``: acknowledged events missing from the store after all runs.
- ``graph.failover.duplicated_events``: events stored more than once (every retried message included).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import numpy as np

from benchmarks.common import Result, percentile

FAILOVER_RUNS = int(os.environ.get("UNFRAGILE_BENCH_FAILOVER_RUNS", "7"))
FAILOVER_MODELS = 2_000


def _log(msg: str) -> None:
    print(f"  [bench_graph failover] {msg}", file=sys.stderr, flush=True)


def _load() -> str:
    return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


def _kill_leader(cluster: Any, streamer: Any, wait_until: Any) -> float:
    """Once the stream has moved on 500 events, SIGKILL the leader; seconds until another one acknowledges."""
    leader = cluster.leader()
    start = len(streamer.acked)
    assert wait_until(lambda: len(streamer.acked) >= start + 500, 120), "the stream stalled"
    killed_at = time.monotonic()
    leader.kill()
    assert wait_until(lambda: streamer.acked_by_other_since(killed_at, leader.target) is not None, 120), "no takeover"
    return float(streamer.acked_by_other_since(killed_at, leader.target) - killed_at)


def failover_results(make_models: Any) -> list[Result]:
    from graph.store import open_store
    from tests.pgserver import start_server as start_postgres
    from tests.reliability.failover import Cluster, Streamer, converged, lost_and_duplicated, snapshot
    from tests.reliability.relhelpers import wait_until

    pg = start_postgres(durable=True)
    cluster = streamer = None
    takeovers: list[float] = []
    try:
        url = pg.create_database("failover")
        models = make_models(np.random.default_rng(5), FAILOVER_MODELS)
        store = open_store(url)
        store.bulk_insert_models(models)
        store.close()
        cluster = Cluster(url, 2, 1)
        streamer = Streamer(cluster.writer_targets, [m.id for m in models[:200]])
        for run in range(FAILOVER_RUNS):
            took = _kill_leader(cluster, streamer, wait_until)
            takeovers.append(took)
            _log(f"run {run + 1}: takeover {took:.2f} s (term {snapshot(cluster.leader().target).term})")
            cluster.restart(next(w for w in cluster.writers if w.proc.poll() is not None))
        streamer.finish()
        lost, duplicated, partial = lost_and_duplicated(url, streamer)
        head = converged(cluster, cluster.leader())
    finally:
        if streamer is not None and not streamer.stop.is_set():
            streamer.finish()
        if cluster is not None:
            cluster.close()
        pg.destroy()
    acked = len(set(streamer.acked))
    what = (f"{FAILOVER_RUNS} SIGKILLs of the leader (2 writer-capable processes + 1 reader, PostgreSQL with fsync on, "
            f"{FAILOVER_MODELS} models) under one client streaming 100-event RecordMatches messages")
    spread = ", ".join(f"{t:.2f}" for t in sorted(takeovers))
    return [
        Result("graph.failover.takeover_s", percentile(takeovers, 50), 5.0, "lower", "s", "absolute",
               f"{what}: SIGKILL -> first message acknowledged by the new leader, median of {len(takeovers)} runs "
               f"(all: {spread} s; leader_retry_s 0.5); {_load()}"),
        Result("graph.failover.lost_events", float(lost), 0.0, "lower", "events", "absolute",
               f"{what}: acknowledged events missing from the store afterwards, of {acked} acknowledged; "
               f"{partial} half-written messages; {streamer.retried} messages retried on the new leader; every "
               f"process converged to graph version {head} with identical Rank bytes; {_load()}"),
        Result("graph.failover.duplicated_events", float(duplicated), 0.0, "lower", "events", "absolute",
               f"{what}: events stored more than once (seqs 1..{head} checked gapless), {streamer.retried} messages "
               f"sent twice or more; {_load()}"),
    ]
