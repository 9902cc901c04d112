"""One writer and many readers: real servers on one database (a real PostgreSQL, or one SQLite file).

The writer publishes a snapshot after every write; readers follow it and answer from memory.
Checked here: answers of readers, the writer and the single SQLite process are byte-identical
for the same snapshot_version; write RPCs on a reader name the writer; GetSnapshot is cheap
and says the role and the lag; a writer replays what was committed but never applied (a reply
lost after the commit).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from graph.seed_data import KOSMOS2_ID, SD_ID, SEED_MODELS
from graph.store import sqlite_url
from services.matchgraph.types import event_from_pb, record_to_pb
from unfragile.matchgraph.v1 import matchgraph_pb2 as pb

EXTRA = ["clip-vit-b-32", "blip-base", "sdxl", "dall-e-3", "owl-vit"]
IDS = [KOSMOS2_ID, SD_ID, *EXTRA]


def _records() -> list[pb.ModelRecord]:
    out = [record_to_pb(m) for m in SEED_MODELS]
    for k, mid in enumerate(EXTRA):
        out.append(pb.ModelRecord(id=mid, name=mid.upper(), type=pb.MODEL_TYPE_MODEL, adoption=[
            pb.Signal(kind="downloads", value=1000 * (k + 1), source="test", observed_at="2026-01-01")]))
    return out


def _batch(n: int, seed: int) -> pb.RecordMatchesRequest:
    rng = random.Random(seed)
    events = []
    for i in range(n):
        matched = rng.sample(IDS, rng.randint(2, 4))
        events.append(pb.MatchEvent(event_id=f"s{seed}-{i}", query=rng.choice(["caption images", "draw a cat"]),
                                    matched=matched, compared=matched[:2], clicked=matched[:1],
                                    timestamp_ms=1_700_000_000_000 + i))
    return pb.RecordMatchesRequest(events=events)


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def _snapshot(server: Any) -> pb.GetSnapshotResponse:
    return server.stub.GetSnapshot(pb.GetSnapshotRequest(), timeout=10)


def _answers(server: Any) -> tuple[bytes | str, ...]:
    """Rank and two Compares, serialized (or the error while a model is still missing)."""
    calls = [lambda: server.stub.Rank(pb.RankRequest(limit=50), timeout=30),
             lambda: server.stub.Compare(pb.CompareRequest(a="kosmos2", b="sd"), timeout=30),
             lambda: server.stub.Compare(pb.CompareRequest(a="sdxl", b="clip-vit-b-32"), timeout=30)]
    out: list[bytes | str] = []
    for call in calls:
        try:
            out.append(call().SerializeToString(deterministic=True))
        except grpc.RpcError as err:
            out.append(f"{err.code().name}: {err.details()}")
    return tuple(out)


@pytest.fixture()
def cluster(make_server: Callable[..., Any]) -> Callable[[int], tuple[Any, list[Any]]]:
    """A writer and ``n`` readers on one database of the test's backend."""
    def make(n: int, **overrides: Any) -> tuple[Any, list[Any]]:
        writer = make_server("shared.db", role="writer", **overrides)
        readers = [make_server(f"reader{i}", role="reader", db_url=writer.settings.db_url,
                               writer_address=writer.running.address, **overrides) for i in range(n)]
        return writer, readers
    return make


def test_readers_writer_and_single_sqlite_process_answer_byte_for_byte(cluster, make_server, tmp_path):
    """Step by step (one write, then every process reads), each reader reaches the writer's snapshot_version
    and then gives the same bytes as the writer and as one SQLite process that took the same writes."""
    writer, readers = cluster(2)
    single = make_server("single", db_url=sqlite_url(tmp_path / "single.db"))
    steps: list[Callable[[Any], Any]] = [
        (lambda s, r=r: s.stub.UpsertModel(pb.UpsertModelRequest(model=r), timeout=30)) for r in _records()]
    steps += [(lambda s, k=k: s.stub.RecordMatches(iter([_batch(40, k)]), timeout=30)) for k in range(3)]
    steps += [(lambda s, e=e: s.stub.RecordFeedback(pb.RecordFeedbackRequest(  # outcomes: success rates move
        match_id=e, outcome=pb.MATCH_OUTCOME_SUCCESS), timeout=30)) for e in ("s0-0", "s1-3")]
    seen = set()
    for step in steps:
        step(writer)
        step(single)
        want = _snapshot(single).snapshot_version
        for server in (writer, *readers):
            wait_until(lambda server=server, want=want: _snapshot(server).snapshot_version == want)
        expected = _answers(single)
        assert [_answers(s) for s in (writer, *readers)] == [expected] * 3
        seen.add(want)
    assert len(seen) == len(steps)  # every write changed the snapshot
    final = _snapshot(readers[0])
    assert (final.role, final.graph_version, final.lag_events, final.stale) == ("reader", 120, 0, False)
    assert final.writer_address == writer.running.address and final.publication > 0


def test_write_rpcs_on_a_reader_answer_failed_precondition_naming_the_writer(cluster):
    writer, (reader,) = cluster(1)
    calls = {
        "UpsertModel": lambda: reader.stub.UpsertModel(pb.UpsertModelRequest(model=_records()[0]), timeout=10),
        "RecordMatches": lambda: reader.stub.RecordMatches(iter([_batch(3, 0)]), timeout=10),
        "RunProbes": lambda: reader.stub.RunProbes(pb.RunProbesRequest(), timeout=10),
        "ImportModels": lambda: reader.stub.ImportModels(iter([pb.ImportModelsRequest(models=_records()[:1])]),
                                                         timeout=10),
        "RecordFeedback": lambda: reader.stub.RecordFeedback(pb.RecordFeedbackRequest(
            match_id="m", outcome=pb.MATCH_OUTCOME_SUCCESS), timeout=10),
        "ImportManifest": lambda: reader.stub.ImportManifest(pb.ValidateManifestRequest(text="a: 1"), timeout=10),
    }
    for name, call in calls.items():
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, name
        assert (f"send RecordMatches, UpsertModel, ImportModels, RunProbes, RecordFeedback, ImportManifest to the "
                f"writer at {writer.running.address}") in err.value.details()
    assert reader.engine.store.event_count() == 0 and reader.engine.store.model_nodes() == []


def test_get_snapshot_is_cheap_and_names_the_next_answer(cluster):
    writer, (reader,) = cluster(1)
    for r in _records():
        writer.stub.UpsertModel(pb.UpsertModelRequest(model=r), timeout=30)
    head = writer.stub.RecordMatches(iter([_batch(30, 1)]), timeout=30).graph_version
    # caught up: the events replayed *and* the writer's publication of them adopted (it can land after the replay)
    wait_until(lambda: _snapshot(reader).graph_version == head
               and _snapshot(reader).snapshot_version == _snapshot(writer).snapshot_version)
    reader.engine.scorer.invalidate()
    snap = _snapshot(reader)
    assert reader.engine.scorer._state is None  # nothing was scored to answer it
    assert snap.snapshot_version == reader.stub.Rank(pb.RankRequest(), timeout=30).snapshot_version
    assert snap.snapshot_version == _snapshot(writer).snapshot_version
    assert _snapshot(writer).role == "writer" and _snapshot(writer).publication == snap.publication


def test_reader_follows_upserts_of_existing_models_and_new_ones(cluster):
    writer, (reader,) = cluster(1)
    records = _records()
    for r in records:
        writer.stub.UpsertModel(pb.UpsertModelRequest(model=r), timeout=30)
    writer.stub.RecordMatches(iter([_batch(20, 2)]), timeout=30)
    renamed = pb.ModelRecord()
    renamed.CopyFrom(records[2])
    renamed.aliases.append("clip-b")
    writer.stub.UpsertModel(pb.UpsertModelRequest(model=renamed), timeout=30)
    writer.stub.UpsertModel(pb.UpsertModelRequest(model=pb.ModelRecord(
        id="new-model", name="New Model", type=pb.MODEL_TYPE_TOOL)), timeout=30)
    writer.stub.RecordMatches(iter([pb.RecordMatchesRequest(events=[pb.MatchEvent(
        event_id="late", query="q", matched=["new-model", "clip-b"])])]), timeout=30)
    want = _snapshot(writer).snapshot_version
    wait_until(lambda: _snapshot(reader).snapshot_version == want)
    got = reader.stub.GetModel(pb.GetModelRequest(model="clip-b"), timeout=30)
    assert got.model.id == "clip-vit-b-32"
    assert reader.stub.GetModel(pb.GetModelRequest(model="new-model"), timeout=30).scores.times_matched == 1
    assert reader.stub.Rank(pb.RankRequest(limit=50), timeout=30) == writer.stub.Rank(pb.RankRequest(limit=50))


def test_a_commit_whose_reply_was_lost_is_replayed_by_the_writer(cluster):
    """The store holds a batch the writer never applied (committed, then the connection dropped before
    the reply: the client saw UNAVAILABLE). The writer notices by itself (its periodic check) and
    publishes it; the client's retry then counts the batch as duplicates and changes nothing."""
    writer, (reader,) = cluster(1, publish_check_s=0.2)
    for r in _records():
        writer.stub.UpsertModel(pb.UpsertModelRequest(model=r), timeout=30)
    before = writer.stub.GetModel(pb.GetModelRequest(model="sd"), timeout=30).scores.times_matched
    lost = _batch(25, 7)
    new, _first = writer.engine.store.record_events([event_from_pb(e) for e in lost.events])  # the lost commit
    assert len(new) == 25 and writer.engine.graph_version() == 0
    head = writer.engine.store.graph_version()
    wait_until(lambda: writer.engine.graph_version() == head and _snapshot(reader).graph_version == head)
    sd_hits = sum(SD_ID in e.matched for e in lost.events)
    for s in (writer, reader):
        assert s.stub.GetModel(pb.GetModelRequest(model="sd"), timeout=30).scores.times_matched == before + sd_hits
    retry = writer.stub.RecordMatches(iter([lost]), timeout=30)
    assert (retry.inserted, retry.duplicates, retry.graph_version) == (0, 25, head)
    assert writer.stub.GetModel(pb.GetModelRequest(model="sd"), timeout=30).scores.times_matched == before + sd_hits


@pytest.mark.parametrize("db_backend", ["sqlite"])
def test_ingest_replays_the_gap_before_applying_a_new_batch(make_server, upsert_seed):
    """The same gap on a single process (no publisher): the next RecordMatches applies it first, so the
    graph equals a recount of every stored event."""
    s = make_server()
    upsert_seed(s.stub)
    lost = pb.RecordMatchesRequest(events=[pb.MatchEvent(event_id=f"lost{i}", query="q", matched=[KOSMOS2_ID, SD_ID])
                                           for i in range(10)])
    s.engine.store.record_events([event_from_pb(e) for e in lost.events])
    retry = s.stub.RecordMatches(iter([lost, pb.RecordMatchesRequest(events=[pb.MatchEvent(
        event_id="next", query="q", matched=[KOSMOS2_ID, SD_ID])])]), timeout=30)
    assert (retry.inserted, retry.duplicates, retry.graph_version) == (1, 10, 11)
    pairs, matched = s.engine.store.recount_from_events()
    assert s.engine.graph.w.sum() / 2 == sum(pairs.values()) == 11
    assert s.stub.GetModel(pb.GetModelRequest(model="sd"), timeout=30).scores.times_matched == 11


@pytest.mark.parametrize("db_backend", ["postgresql"])
def test_a_reader_on_a_lagging_standby_says_it_is_stale(make_server, pg_server, pg_standby):
    """A reader on a hot standby whose replay is paused falls behind the writer: past max_staleness_s
    GetSnapshot says stale with its lag, read answers carry stale_seconds, the lag metrics show it; once
    replay resumes it catches up and its answers are the writer's again, unmarked."""
    from prometheus_client import REGISTRY

    writer = make_server("primary", role="writer")
    for r in _records():
        writer.stub.UpsertModel(pb.UpsertModelRequest(model=r), timeout=30)
    head = writer.stub.RecordMatches(iter([_batch(20, 4)]), timeout=30).graph_version
    pg_server.wait_replayed(pg_standby)
    reader = make_server("standby", role="reader", db_url=pg_standby.url(writer.settings.db_url.rsplit("/", 1)[1]),
                         writer_address=writer.running.address, max_staleness_s=1.0, follow_wait_s=0.2,
                         change_poll_interval_s=0.05)
    wait_until(lambda: _snapshot(reader).graph_version == head)
    assert not _snapshot(reader).stale
    assert reader.stub.Compare(pb.CompareRequest(a="kosmos2", b="sd"), timeout=30).stale_seconds == 0
    pg_standby.sql("SELECT pg_wal_replay_pause()")
    try:
        newer = writer.stub.RecordMatches(iter([_batch(20, 5)]), timeout=30).graph_version
        wait_until(lambda: _snapshot(reader).stale)
        snap = _snapshot(reader)
        assert snap.graph_version == head and snap.lag_seconds > 1.0 and snap.max_staleness_s == 1.0
        assert reader.stub.Compare(pb.CompareRequest(a="kosmos2", b="sd"), timeout=30).stale_seconds > 1.0
        assert reader.stub.Rank(pb.RankRequest(), timeout=30).stale_seconds > 1.0
        assert REGISTRY.get_sample_value("unfragile_graph_reader_lag_seconds") > 1.0
        assert REGISTRY.get_sample_value("unfragile_graph_reader_stale") == 1.0
    finally:
        pg_standby.sql("SELECT pg_wal_replay_resume()")
    wait_until(lambda: _snapshot(reader).graph_version == newer and not _snapshot(reader).stale)
    fresh = reader.stub.Compare(pb.CompareRequest(a="kosmos2", b="sd"), timeout=30)
    assert fresh.stale_seconds == 0
    assert fresh == writer.stub.Compare(pb.CompareRequest(a="kosmos2", b="sd"), timeout=30)
