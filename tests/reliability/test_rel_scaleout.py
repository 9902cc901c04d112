"""One writer and two readers as real processes on a real PostgreSQL, under faults.

Started as an operator starts them (``python -m services.cli serve matchgraph --set role=...``)
on a PostgreSQL server of this module's own (one test restarts it). Checked:

- kill -9 of the writer mid-ingest: after its restart no acknowledged event is lost, none is
  stored twice, each message is all-or-nothing, and the readers (answering all along)
  converge to the restarted writer's snapshot with byte-identical answers;
- PostgreSQL restarted under ingest: RecordMatches answers UNAVAILABLE with a retry-after-ms
  hint while it is down, the same writer process reconnects by itself, nothing acknowledged
  is lost, and the readers follow again;
- kill -9 of one reader under read load: the other keeps answering; the only client errors
  are calls that were in flight on the killed one;
- a reader on a hot standby whose replay is paused reports its lag and marks its answers
  stale past max_staleness_s, then catches up.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from services.core.client import channel
from tests.reliability.failover import message, rank_bytes, snapshot, stored_ids
from tests.reliability.relhelpers import ServerProcess, retry_after_ms, wait_until
from unfragile.matchgraph.v1 import matchgraph_pb2 as pb
from unfragile.matchgraph.v1 import matchgraph_pb2_grpc as pb_grpc

GRAPH_SETS = ("bootstrap_rounds=50", "graph_bootstrap_rounds=10", "grace_seconds=5", "pg_pool_timeout_s=1",
              "pg_connect_timeout_s=1")
WRITER_SETS = ("role=writer", "publish_check_s=0.3")
READER_SETS = ("role=reader", "follow_wait_s=0.3", "change_poll_interval_s=0.05")


class Cluster:
    """The module's PostgreSQL, writer and two readers; ``writer()`` restarts a killed writer."""

    def __init__(self, pg: Any, url: str) -> None:
        self.pg, self.url = pg, url
        self.procs: list[ServerProcess] = []
        self.writer_proc = self.spawn(*WRITER_SETS).wait_serving()
        self.readers = [self.spawn(*READER_SETS, f"writer_address={self.writer_proc.target}") for _ in range(2)]
        for r in self.readers:
            r.wait_serving()

    def spawn(self, *sets: str, db_url: str | None = None) -> ServerProcess:
        proc = ServerProcess("matchgraph", f"db_url={db_url or self.url}", *GRAPH_SETS, *sets)
        self.procs.append(proc)
        return proc

    def writer(self) -> ServerProcess:
        if self.writer_proc.proc.poll() is not None:
            self.writer_proc = self.spawn(*WRITER_SETS).wait_serving()
        return self.writer_proc

    def close(self) -> None:
        for p in self.procs:
            p.kill()


@pytest.fixture(scope="module")
def cluster(seed_records: Any) -> Iterator[Cluster]:
    from tests.pgserver import INSTALL_HINT, find_bin_dir, start_server

    if find_bin_dir() is None:
        pytest.skip(f"PostgreSQL server binaries (initdb, pg_ctl) not found: {INSTALL_HINT}")
    pg = start_server()
    c = None
    try:
        c = Cluster(pg, pg.create_database("graph"))
        with channel(c.writer_proc.target) as ch:
            stub = pb_grpc.MatchGraphStub(ch)
            for rec in seed_records():
                stub.UpsertModel(pb.UpsertModelRequest(model=rec), timeout=30)
        yield c
    finally:
        if c is not None:
            c.close()
        pg.destroy()


def _ids(seed_records: Any) -> list[str]:
    return [r.id for r in seed_records()]


def _readers_converge(c: Cluster) -> None:
    """Every reader reaches the writer's snapshot and answers Rank with the writer's bytes."""
    want = snapshot(c.writer().target).snapshot_version
    for r in c.readers:
        if r.proc.poll() is None:
            assert wait_until(lambda r=r: snapshot(r.target).snapshot_version == want, 30), "a reader lags"
            assert rank_bytes(r.target) == rank_bytes(c.writer().target)


class Ingest:
    """A client streaming 100-event messages to the writer, retrying a message until acknowledged."""

    def __init__(self, target: str, ids: list[str], prefix: str, retry: bool) -> None:
        self.ch = channel(target)
        self.stub = pb_grpc.MatchGraphStub(self.ch)
        self.ids, self.prefix, self.retry = ids, prefix, retry
        self.sent: dict[str, list[str]] = {}
        self.acked: list[str] = []
        self.errors: list[grpc.RpcError] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        k = 0
        while not self.stop.is_set():
            msg = message(f"{self.prefix}{k}", 100, self.ids)
            self.sent[f"{self.prefix}{k}"] = [e.event_id for e in msg.events]
            while not self.stop.is_set():
                try:
                    self.stub.RecordMatches(iter([msg]), timeout=30)
                    self.acked += self.sent[f"{self.prefix}{k}"]
                    break
                except grpc.RpcError as err:
                    self.errors.append(err)
                    if not self.retry:
                        return
                    time.sleep((retry_after_ms(err) or 200) / 1000)
            k += 1

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(60)
        self.ch.close()


def _check_stored(url: str, ingest: Ingest) -> None:
    stored = stored_ids(url)
    assert len(stored) == len(set(stored)), "an event is stored twice"
    stored_set = set(stored)
    missing = [e for e in ingest.acked if e not in stored_set]
    assert not missing, f"{len(missing)} acknowledged events lost, e.g. {missing[:3]}"
    partial = {k: sum(e in stored_set for e in v) for k, v in ingest.sent.items()}
    assert all(n in (0, len(ingest.sent[k])) for k, n in partial.items()), "a message was half-written"


def test_kill9_writer_mid_ingest_loses_and_duplicates_nothing(cluster, seed_records):
    ingest = Ingest(cluster.writer().target, _ids(seed_records), "k", retry=False)
    assert wait_until(lambda: len(ingest.acked) >= 1000, 60)
    cluster.writer_proc.kill()  # SIGKILL mid-ingest
    ingest.finish()
    assert ingest.errors and ingest.errors[0].code() == grpc.StatusCode.UNAVAILABLE
    for r in cluster.readers:  # the writer is gone: readers answer from the snapshot they have
        with channel(r.target) as ch:
            pb_grpc.MatchGraphStub(ch).Compare(pb.CompareRequest(a="tool-1", b="tool-2"), timeout=30)
    restarted = cluster.writer()
    _check_stored(cluster.url, ingest)
    with channel(restarted.target) as ch:  # the client's retry of everything: nothing new, nothing doubled
        stub = pb_grpc.MatchGraphStub(ch)
        head = len(stored_ids(cluster.url))
        for tag in list(ingest.sent)[:3]:
            assert stub.RecordMatches(iter([message(tag, 100, _ids(seed_records))]), timeout=30).graph_version == head
    _readers_converge(cluster)
    print(f"RELIABILITY scale-out kill -9 writer: acked={len(ingest.acked)} stored={head} lost=0 duplicated=0")


def test_postgres_restart_under_ingest_is_unavailable_then_reconnects(cluster, seed_records):
    writer = cluster.writer()
    pid = writer.proc.pid
    ingest = Ingest(writer.target, _ids(seed_records), "p", retry=True)
    assert wait_until(lambda: len(ingest.acked) >= 500, 60)
    cluster.pg.stop("fast")
    assert wait_until(lambda: len(ingest.errors) > 0, 30)
    time.sleep(1.0)
    cluster.pg.restart_on_same_port()
    acked_at_restart = len(ingest.acked)
    assert wait_until(lambda: len(ingest.acked) >= acked_at_restart + 500, 60), "the writer did not reconnect"
    ingest.finish()
    codes = {e.code() for e in ingest.errors}
    assert codes == {grpc.StatusCode.UNAVAILABLE}, codes
    assert all(retry_after_ms(e) for e in ingest.errors), "UNAVAILABLE without a retry hint"
    assert writer.proc.poll() is None and writer.proc.pid == pid  # the same process reconnected by itself
    _check_stored(cluster.url, ingest)
    _readers_converge(cluster)
    print(f"RELIABILITY scale-out postgres restart: unavailable_answers={len(ingest.errors)} "
          f"acked={len(ingest.acked)} lost=0")


def _load(target: str, threads: int, stop: threading.Event, log: list[tuple[float, grpc.StatusCode]],
          service_config: str | None = None) -> list[threading.Thread]:
    """``threads`` clients calling Compare in a loop over one round-robin channel; outcomes go to ``log``."""
    ch = channel(target, balance=True, service_config=service_config)
    stub = pb_grpc.MatchGraphStub(ch)

    def run() -> None:
        while not stop.is_set():
            try:
                stub.Compare(pb.CompareRequest(a="kosmos2", b="sd"), timeout=30)
                log.append((time.monotonic(), grpc.StatusCode.OK))
            except grpc.RpcError as err:
                log.append((time.monotonic(), err.code()))
    out = [threading.Thread(target=run) for _ in range(threads)]
    for t in out:
        t.start()
    return out


def test_kill9_one_reader_under_load_the_other_keeps_answering(cluster):
    """Two clients load both readers (round robin) when one is killed: a plain one loses only calls that were
    on their way to the killed reader, in the instant it died; one with the gateway's retry policy for reads
    (UNAVAILABLE -> another replica) loses none."""
    from services.gateway.upstream import READ_RETRIES

    target = "ipv4:" + ",".join(r.target for r in cluster.readers)
    stop, plain, retried = threading.Event(), [], []
    threads = 3
    workers = _load(target, threads, stop, plain) + _load(target, threads, stop, retried, READ_RETRIES)
    assert wait_until(lambda: len(plain) >= 30 and len(retried) >= 30, 60)
    killed_at = time.monotonic()
    cluster.readers[0].kill()
    time.sleep(2.0)
    stop.set()
    for t in workers:
        t.join(60)
    errors = [(t - killed_at, code) for t, code in plain if code != grpc.StatusCode.OK]
    after = [code for t, code in [*plain, *retried] if t > killed_at + 0.5]
    assert {code for _t, code in errors} <= {grpc.StatusCode.UNAVAILABLE}
    assert all(dt < 0.5 for dt, _code in errors), f"calls failed long after the kill: {errors}"
    assert len(errors) <= 2 * threads, f"{len(errors)} failed calls for {threads} clients: {errors}"
    assert [code for _t, code in retried if code != grpc.StatusCode.OK] == []
    assert after and all(code == grpc.StatusCode.OK for code in after)
    print(f"RELIABILITY scale-out kill -9 reader: calls={len(plain) + len(retried)} failed without retries="
          f"{len(errors)} (within {max((dt for dt, _c in errors), default=0) * 1000:.0f} ms of the kill, "
          f"{threads} clients), with the read retry policy=0, ok after the kill={len(after)}")


def test_reader_on_a_paused_standby_reports_lag_and_stale_answers(cluster, seed_records):
    standby = cluster.pg.standby()
    reader = cluster.spawn(*READER_SETS, "max_staleness_s=1", f"writer_address={cluster.writer().target}",
                           db_url=standby.url("graph")).wait_serving()
    with channel(cluster.writer().target) as ch:
        head = pb_grpc.MatchGraphStub(ch).RecordMatches(iter([message("s0", 50, _ids(seed_records))]),
                                                        timeout=30).graph_version
    assert wait_until(lambda: snapshot(reader.target).graph_version == head, 30)
    standby.sql("SELECT pg_wal_replay_pause()")
    try:
        with channel(cluster.writer().target) as ch:
            newer = pb_grpc.MatchGraphStub(ch).RecordMatches(iter([message("s1", 50, _ids(seed_records))]),
                                                             timeout=30).graph_version
        assert wait_until(lambda: snapshot(reader.target).stale, 30)
        snap = snapshot(reader.target)
        assert snap.graph_version == head and snap.lag_seconds > 1.0
        with channel(reader.target) as ch:
            stale = pb_grpc.MatchGraphStub(ch).Compare(pb.CompareRequest(a="kosmos2", b="sd"), timeout=30)
        assert stale.stale_seconds > 1.0
    finally:
        standby.sql("SELECT pg_wal_replay_resume()")
    assert wait_until(lambda: snapshot(reader.target).graph_version == newer and not snapshot(reader.target).stale,
                      30)
    reader.kill()
    print(f"RELIABILITY scale-out standby reader: stale after pause, lag_seconds={snap.lag_seconds:.1f}, caught up")
