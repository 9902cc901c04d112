"""Leader failover with real processes on a real PostgreSQL: the cluster, a streaming client, the checks.

Shared by tests/reliability/test_rel_failover.py and benchmarks/graph_failover.py (test_rel_scaleout.py uses
its checks: snapshots, Rank bytes, test messages, stored event ids). Every MatchGraph is
started as an operator starts it (``python -m services.cli serve matchgraph --set role=writer|reader``);
the client is ``services.matchgraph.routing.LeaderClient``, which finds the leader with GetSnapshot and
retries an unacknowledged message on the new leader after a takeover.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from services.core.client import channel
from services.matchgraph.routing import LeaderClient
from tests.reliability.relhelpers import ServerProcess, wait_until
from unfragile.matchgraph.v1 import matchgraph_pb2 as pb
from unfragile.matchgraph.v1 import matchgraph_pb2_grpc as pb_grpc

GRAPH_SETS = ("bootstrap_rounds=50", "graph_bootstrap_rounds=10", "grace_seconds=5", "pg_pool_timeout_s=2",
              "pg_connect_timeout_s=2")


class Cluster:
    """``writers`` writer-capable processes and ``readers`` readers on the database ``url``."""

    def __init__(self, url: str, writers: int = 2, readers: int = 1, *sets: str) -> None:
        self.url, self.sets = url, sets
        self.procs: list[ServerProcess] = []
        self.writers = [self.spawn("role=writer") for _ in range(writers)]
        for w in self.writers:
            w.wait_serving()
        self.readers = [self.spawn("role=reader", "follow_wait_s=0.3").wait_serving() for _ in range(readers)]

    def spawn(self, *sets: str) -> ServerProcess:
        proc = ServerProcess("matchgraph", f"db_url={self.url}", *GRAPH_SETS, *self.sets, *sets)
        self.procs.append(proc)
        return proc

    @property
    def writer_targets(self) -> str:
        return ",".join(w.target for w in self.writers)

    def leader(self) -> ServerProcess:
        """The writer whose GetSnapshot says it takes writes (waits for one)."""
        found: list[ServerProcess] = []

        def look() -> bool:
            found[:] = [w for w in self.writers if w.proc.poll() is None and snapshot(w.target).role == "writer"]
            return len(found) == 1
        assert wait_until(look, 30, 0.05), "no single leader"
        return found[0]

    def restart(self, old: ServerProcess) -> ServerProcess:
        """A killed writer started again on its own port (it comes back as a standby)."""
        new = ServerProcess("matchgraph", f"db_url={self.url}", *GRAPH_SETS, *self.sets, "role=writer",
                            f"port={old.port}")
        self.procs.append(new)
        self.writers[self.writers.index(old)] = new
        return new.wait_serving()

    def close(self) -> None:
        for p in self.procs:
            p.kill()


def snapshot(target: str) -> pb.GetSnapshotResponse:
    with channel(target) as ch:
        return pb_grpc.MatchGraphStub(ch).GetSnapshot(pb.GetSnapshotRequest(), timeout=10)


def rank_bytes(target: str) -> bytes:
    with channel(target) as ch:
        return pb_grpc.MatchGraphStub(ch).Rank(pb.RankRequest(limit=50), timeout=30).SerializeToString(
            deterministic=True)


def message(tag: str, n: int, ids: list[str]) -> pb.RecordMatchesRequest:
    rng = random.Random(tag)
    return pb.RecordMatchesRequest(events=[
        pb.MatchEvent(event_id=f"{tag}-{k}", query=rng.choice(["find cats", "draw maps"]), matched=rng.sample(ids, 3))
        for k in range(n)])


@dataclass
class Ack:
    at: float
    target: str


@dataclass
class Streamer:
    """A client streaming ``size``-event RecordMatches messages with its own event ids to the leader, each
    retried (on the leader found again) until acknowledged; runs in a thread until ``finish``."""

    targets: str
    ids: list[str]
    prefix: str = "f"
    size: int = 100
    sent: dict[str, list[str]] = field(default_factory=dict)
    acked: list[str] = field(default_factory=list)
    acks: list[Ack] = field(default_factory=list)
    retried: int = 0  # messages sent more than once

    def __post_init__(self) -> None:
        self.client = LeaderClient(self.targets, retry_for_s=60.0)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        k = 0
        try:
            while not self.stop.is_set():
                tag = f"{self.prefix}{k}"
                msg = message(tag, self.size, self.ids)
                self.sent[tag] = [e.event_id for e in msg.events]
                attempts = [0]

                def send(stub: pb_grpc.MatchGraphStub, msg: pb.RecordMatchesRequest = msg,
                         attempts: list[int] = attempts) -> Any:
                    attempts[0] += 1
                    return stub.RecordMatches(iter([msg]), timeout=30)
                self.client.call(send)
                self.acks.append(Ack(time.monotonic(), self.client.leader or ""))
                self.acked += self.sent[tag]
                self.retried += attempts[0] > 1
                k += 1
        except BaseException as exc:  # surfaced by finish()
            self.error = exc

    def acked_by_other_since(self, since: float, target: str) -> float | None:
        """When the first message sent after ``since`` was acknowledged by a process other than ``target``."""
        return next((a.at for a in self.acks if a.at > since and a.target != target), None)

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(90)
        self.client.close()
        if self.error is not None:
            raise self.error


def stored_ids(url: str) -> list[str]:
    """Every stored event id in seq order; asserts the seqs are exactly 1..n."""
    from graph.store import open_store

    store = open_store(url)
    try:
        rows = [r for chunk in store.read_event_rows(0) for r in chunk]
    finally:
        store.close()
    assert [r[0] for r in rows] == list(range(1, len(rows) + 1)), "event seqs are not 1..n"
    return [r[1] for r in rows]


def lost_and_duplicated(url: str, streamer: Streamer) -> tuple[int, int, int]:
    """(acknowledged events missing from the store, events stored more than once, messages half-written)."""
    stored = stored_ids(url)
    counts: dict[str, int] = {}
    for e in stored:
        counts[e] = counts.get(e, 0) + 1
    lost = sum(1 for e in streamer.acked if e not in counts)
    duplicated = sum(n - 1 for n in counts.values())
    partial = sum(1 for ids in streamer.sent.values() if 0 < sum(e in counts for e in ids) < len(ids))
    return lost, duplicated, partial


def converged(cluster: Cluster, leader: ServerProcess, timeout: float = 30.0) -> int:
    """Every live process serves the leader's publication and graph version with byte-identical answers;
    returns that graph version."""
    want = snapshot(leader.target)
    for p in [*cluster.writers, *cluster.readers]:
        if p.proc.poll() is None and p is not leader:
            assert wait_until(lambda p=p: snapshot(p.target).snapshot_version == want.snapshot_version, timeout), \
                f"{p.target} did not reach the leader's snapshot"
            assert snapshot(p.target).graph_version == want.graph_version
            assert rank_bytes(p.target) == rank_bytes(leader.target)
    return int(want.graph_version)
