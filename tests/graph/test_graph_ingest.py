"""Idempotent RecordMatches, the derived match graph, Times Matched, identical state after restart."""

from __future__ import annotations

import random

import grpc
import numpy as np
import pytest

from graph.store import SqliteStore, open_store
from unfragile.matchgraph.v1 import matchgraph_pb2 as pb

EXTRA = ["clip-vit-b-32", "blip-base", "sdxl", "dall-e-3", "llava-1-5", "owl-vit"]


def _add_extra(stub) -> None:
    for k, mid in enumerate(EXTRA):
        stub.UpsertModel(pb.UpsertModelRequest(model=pb.ModelRecord(
            id=mid, name=mid.upper(), type=pb.MODEL_TYPE_MODEL,
            adoption=[pb.Signal(kind="downloads", value=1000 * (k + 1), source="test", observed_at="2026-01-01")])))


def _events(n: int, seed: int, prefix: str = "e") -> list[pb.MatchEvent]:
    rng = random.Random(seed)
    ids = ["kosmos-2-patch14-224", "stable-diffusion", *EXTRA]
    out = []
    for i in range(n):
        matched = rng.sample(ids, rng.randint(1, 4))
        out.append(pb.MatchEvent(event_id=f"{prefix}{i}", query=rng.choice(["caption images", "text to image",
                                                                          "image embeddings", "Caption  Images"]),
                                 matched=matched, compared=matched[:2] if len(matched) > 1 else [],
                                 clicked=matched[:1], timestamp_ms=1_700_000_000_000 + i))
    return out


def _stream(events: list[pb.MatchEvent], size: int):
    for i in range(0, len(events), size):
        yield pb.RecordMatchesRequest(events=events[i:i + size])


def test_record_matches_is_idempotent(seeded):
    _add_extra(seeded.stub)
    ev = _events(300, 1)
    first = seeded.stub.RecordMatches(_stream(ev, 64))
    assert (first.received, first.inserted, first.duplicates, first.batches) == (300, 300, 0, 5)
    before = seeded.stub.GetModel(pb.GetModelRequest(model="sd")).scores
    replay = seeded.stub.RecordMatches(_stream(ev[::-1], 100))  # same events, other order and batching
    assert (replay.inserted, replay.duplicates) == (0, 300)
    assert replay.graph_version == first.graph_version
    after = seeded.stub.GetModel(pb.GetModelRequest(model="sd")).scores
    assert after == before
    # duplicates inside one batch count once
    dup = seeded.stub.RecordMatches(iter([pb.RecordMatchesRequest(events=[_events(1, 9, "x")[0]] * 3)]))
    assert (dup.inserted, dup.duplicates) == (1, 2)


def test_times_matched_and_comatch_counts_follow_the_events(seeded):
    _add_extra(seeded.stub)
    assert seeded.engine.graph.g.number_of_edges() == 0  # build the networkx view now: later batches are deltas
    ev = _events(200, 2)
    seeded.stub.RecordMatches(_stream(ev, 50))
    expected = sum("stable-diffusion" in e.matched for e in ev)
    card = seeded.stub.GetModel(pb.GetModelRequest(model="Stable Diffusion")).scores
    assert card.times_matched == expected
    assert card.times_compared == sum("stable-diffusion" in e.compared for e in ev)
    assert card.times_clicked == sum("stable-diffusion" in e.clicked for e in ev)
    rows = {r.feature: (r.a, r.b) for r in seeded.stub.Compare(pb.CompareRequest(a="sd", b="kosmos2")).rows}
    assert rows["Times Matched"][0] == f"{expected:,}"
    # the incrementally maintained graph equals a recount from the events table alone
    store = seeded.engine.store
    pairs, matched = store.recount_from_events()
    a, b, c = seeded.engine.graph.upper_edges()
    assert {(min(x, y), max(x, y)): k for x, y, k in zip(a.tolist(), b.tolist(), c.tolist())} == dict(pairs)
    g = seeded.engine.graph
    dense = g.w.toarray()
    for (x, y), cnt in pairs.items():
        assert dense[g.index[x], g.index[y]] == dense[g.index[y], g.index[x]] == cnt
        assert g.g[g.index[x]][g.index[y]]["weight"] == cnt  # networkx holds the same counts
    for node, cnt in matched.items():
        assert seeded.engine.counts.stats[g.index[node], 0] == cnt


def test_incremental_pagerank_matches_networkx(seeded):
    _add_extra(seeded.stub)
    for k in range(3):
        seeded.stub.RecordMatches(_stream(_events(100, 10 + k, f"b{k}-"), 25))
    g = seeded.engine.graph
    assert g.dirty  # ingest defers PageRank to the next read
    assert seeded.engine.refresh_graph() > 0 and not g.dirty
    np.testing.assert_allclose(g.pr, g.to_networkx_pagerank(), atol=1e-9)


def test_restart_rebuilds_identical_graph_and_ranks(make_server):
    s = make_server("restart.db")
    from graph.seed_data import SEED_MODELS
    from services.matchgraph.types import record_to_pb

    for m in SEED_MODELS:
        s.stub.UpsertModel(pb.UpsertModelRequest(model=record_to_pb(m)))
    _add_extra(s.stub)
    s.stub.RecordMatches(_stream(_events(400, 3), 100))
    rank_before = s.stub.Rank(pb.RankRequest(limit=50))
    page_before = s.stub.Compare(pb.CompareRequest(a="kosmos2", b="sd"))
    pr_before, w_before = s.engine.graph.pr.copy(), s.engine.graph.w.toarray()
    s.restart()
    assert s.stub.Rank(pb.RankRequest(limit=50)) == rank_before
    assert s.stub.Compare(pb.CompareRequest(a="kosmos2", b="sd")) == page_before
    np.testing.assert_array_equal(s.engine.graph.pr, pr_before)
    np.testing.assert_array_equal(s.engine.graph.w.toarray(), w_before)
    # a cold rebuild (no checkpoint, no persisted vector: replay every event) gives the same graph,
    # and PageRank equal to the tolerance
    s.engine.store.delete_state()
    s.engine.load()
    np.testing.assert_array_equal(s.engine.graph.w.toarray(), w_before)
    np.testing.assert_allclose(s.engine.graph.pr, pr_before, atol=1e-9)


def test_restart_replays_events_after_the_checkpoint(make_server, upsert_seed):
    s = make_server("replay.db", checkpoint_every_events=150)
    upsert_seed(s.stub)
    _add_extra(s.stub)
    s.stub.RecordMatches(_stream(_events(400, 5), 100))  # checkpoints at 200 and 400 ... then more events:
    s.stub.RecordMatches(_stream(_events(120, 6, "late"), 60))
    w_before = s.engine.graph.w.toarray()
    stats_before = s.engine.counts.stats.copy()
    assert s.engine.checkpoints.version < s.engine.graph.version  # the last 120 are not checkpointed
    # simulate a crash: rebuild from the store without the clean-shutdown checkpoint
    from graph.engine import Engine

    fresh = Engine(s.engine.store, s.engine.config)
    fresh.load()
    np.testing.assert_array_equal(fresh.graph.w.toarray(), w_before)
    np.testing.assert_array_equal(fresh.counts.stats, stats_before)


@pytest.mark.parametrize("event, words", [
    (pb.MatchEvent(event_id="", query="q", matched=["sd"]), "event_id"),
    (pb.MatchEvent(event_id="1", query=" ", matched=["sd"]), "query"),
    (pb.MatchEvent(event_id="1", query="q"), "matched is empty"),
    (pb.MatchEvent(event_id="1", query="q", matched=["sd", "ghost"]), "ghost"),
    (pb.MatchEvent(event_id="1", query="q", matched=["sd"], clicked=["kosmos2"]), "not in matched"),
    (pb.MatchEvent(event_id="1", query="q", matched=["sd", "stable-diffusion"]), "twice"),
])
def test_bad_events_are_rejected_without_partial_writes(seeded, event, words):
    good = pb.MatchEvent(event_id="good", query="q", matched=["sd", "kosmos2"])
    with pytest.raises(grpc.RpcError) as err:
        seeded.stub.RecordMatches(iter([pb.RecordMatchesRequest(events=[good, event])]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in err.value.details()
    assert seeded.engine.store.event_count() == 0


def test_store_reopens_with_same_rows(graph_dbs):
    from graph.seed_data import KOSMOS2

    url = graph_dbs.url("s.db")
    s = open_store(url)
    s.upsert_model(KOSMOS2)
    s.close()
    s2 = open_store(url)
    assert s2.get_model(KOSMOS2.id) == KOSMOS2
    assert s2.model_nodes() == [(1, KOSMOS2.id)]
    s2.close()


@pytest.mark.parametrize("setting, pragma", [(None, 2), ("FULL", 2), ("NORMAL", 1)])
def test_sqlite_is_wal_and_fsyncs_every_commit_by_default(tmp_path, setting, pragma):
    from graph.store import StoreConfig

    s = SqliteStore(tmp_path / "s.db", StoreConfig(sqlite_synchronous=setting) if setting else None)
    assert s.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert s.conn.execute("PRAGMA synchronous").fetchone()[0] == pragma  # 2 = FULL, 1 = NORMAL
    s.close()


def test_snapshot_version_changes_exactly_when_numbers_can(make_server, upsert_seed):
    s = make_server("snap.db")
    upsert_seed(s.stub)

    def versions():
        return (s.stub.Compare(pb.CompareRequest(a="kosmos2", b="sd")).snapshot_version,
                s.stub.Rank(pb.RankRequest()).snapshot_version,
                s.stub.GetModel(pb.GetModelRequest(model="sd")).snapshot_version,
                s.stub.Search(pb.SearchRequest(query="inpainting")).snapshot_version)

    v1 = versions()
    assert len(set(v1)) == 1 and 0 < v1[0] < 2 ** 53
    assert versions() == v1  # nothing changed
    ev = [pb.MatchEvent(event_id="a", query="q", matched=["kosmos2", "sd"])]
    s.stub.RecordMatches(iter([pb.RecordMatchesRequest(events=ev)]))
    v2 = versions()
    assert v2[0] != v1[0]
    s.stub.RecordMatches(iter([pb.RecordMatchesRequest(events=ev)]))  # a replay changes nothing
    assert versions() == v2
    s.stub.UpsertModel(pb.UpsertModelRequest(model=pb.ModelRecord(id="x", name="X", type=pb.MODEL_TYPE_TOOL)))
    v3 = versions()
    assert v3[0] not in (v1[0], v2[0])
    s.restart()
    assert versions() == v3  # derived from stored data: stable across restarts


@pytest.mark.parametrize("db_backend", ["sqlite"])  # metrics plumbing, not storage
def test_metrics_endpoint_shows_graph_metrics(make_server, upsert_seed):
    import urllib.request

    s = make_server("metrics.db", metrics_port=0)
    upsert_seed(s.stub)
    s.stub.RecordMatches(iter([pb.RecordMatchesRequest(events=[
        pb.MatchEvent(event_id="m1", query="q", matched=["kosmos2", "sd"])])]))
    s.stub.Compare(pb.CompareRequest(a="kosmos2", b="sd"))  # a read: PageRank refresh -> edge gauge
    text = urllib.request.urlopen(f"http://127.0.0.1:{s.running.metrics_port}/metrics", timeout=5).read().decode()
    assert 'unfragile_graph_events_total{result="inserted"}' in text
    assert "unfragile_graph_comatch_edges 1.0" in text
    assert 'unfragile_grpc_requests_total{code="OK",method="Compare",service="matchgraph"}' in text


def test_vectorised_pairs_equal_the_reference_definition():  # pure maths: no backend
    from graph.matchgraph import pair_arrays, pairs_of

    rng = random.Random(3)
    events = [tuple(rng.sample(range(50), rng.randint(1, 6))) for _ in range(500)]
    a, b, c = pair_arrays(events, 50)
    assert {(x, y): k for x, y, k in zip(a.tolist(), b.tolist(), c.tolist())} == dict(pairs_of(events))


def test_graph_grows_with_pending_deltas_then_merges():
    """A model added while ingested deltas are still queued keeps every count (regression)."""
    import numpy as np

    from graph.matchgraph import MatchGraph

    g = MatchGraph()
    g.load([1, 2, 3], np.array([1]), np.array([2]), np.array([4]), version=1)
    g.apply(np.array([1]), np.array([2]), np.array([3]), version=2)  # queued, not merged
    g.add_nodes([7])
    w = g.w.toarray()
    assert w.shape == (4, 4)
    assert w[0, 1] == w[1, 0] == 4  # loaded edge
    assert w[1, 2] == w[2, 1] == 3  # the queued delta survived the growth
    assert w[3].sum() == 0
