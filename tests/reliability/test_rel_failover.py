"""kill -9 of the leading writer mid-stream: a standby takes over, nothing acknowledged is lost or doubled.

Two writer-capable MatchGraphs and a reader, real processes on a real PostgreSQL. A client streams
100-event RecordMatches messages with its own event ids to the leader and, when a message is not
acknowledged, retries it on the leader it finds again. The leader is killed with SIGKILL in the middle of
the stream. Checked: the standby takes over (new term) and acknowledges the client's next message; every
acknowledged event is stored exactly once, no message is half-written, seqs stay 1..n; the reader, the new
leader and the old leader started again (it comes back as a standby naming the new leader) serve the same
snapshot, graph version and Rank bytes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.reliability.failover import Cluster, Streamer, converged, lost_and_duplicated, snapshot
from tests.reliability.relhelpers import wait_until


@pytest.fixture()
def cluster(pg_server, seed_records) -> Iterator[Cluster]:  # type: ignore[no-untyped-def]
    from services.matchgraph.routing import LeaderClient
    from unfragile.matchgraph.v1 import matchgraph_pb2 as pb

    c = Cluster(pg_server.create_database("failover", template="matchgraph_template"))
    try:
        client = LeaderClient(c.writer_targets)
        for rec in seed_records():
            client.call(lambda stub, rec=rec: stub.UpsertModel(pb.UpsertModelRequest(model=rec), timeout=30))
        client.close()
        yield c
    finally:
        c.close()
        pg_server.drop_database("failover")


def test_kill9_leader_mid_stream_standby_takes_over_nothing_lost_or_doubled(cluster, seed_records):
    old = cluster.leader()
    term = snapshot(old.target).term
    streamer = Streamer(cluster.writer_targets, [r.id for r in seed_records()])
    try:
        assert wait_until(lambda: len(streamer.acked) >= 1000, 60), "the stream did not start"
        killed_at = time.monotonic()
        old.kill()  # SIGKILL mid-stream
        assert wait_until(lambda: streamer.acked_by_other_since(killed_at, old.target) is not None, 60), \
            "no other writer acknowledged a message after the kill"
        took_over = streamer.acked_by_other_since(killed_at, old.target) - killed_at  # type: ignore[operator]
        acked_at_takeover = len(streamer.acked)
        assert wait_until(lambda: len(streamer.acked) >= acked_at_takeover + 500, 60)
    finally:
        streamer.finish()
    new = cluster.leader()
    assert new is not old and snapshot(new.target).term > term
    lost, duplicated, partial = lost_and_duplicated(cluster.url, streamer)
    assert (lost, duplicated, partial) == (0, 0, 0)
    back = cluster.restart(old)
    snap = snapshot(back.target)
    assert (snap.role, snap.leader_address) == ("standby", new.target)
    head = converged(cluster, new)
    assert head == len(set(streamer.acked))  # every message the client sent was acknowledged in the end
    print(f"RELIABILITY failover kill -9 leader: takeover (kill -> first write acknowledged by the new leader) "
          f"{took_over:.2f} s, acked={len(set(streamer.acked))} stored={head} lost={lost} duplicated={duplicated} "
          f"messages retried={streamer.retried} client switches={streamer.client.switches}")
