"""The storage primitives on both backends: seq = commit order under concurrent writers, change
notices, snapshot versions, stop words in search, and (PostgreSQL) outages, standbys, NOTIFY."""

from __future__ import annotations

import threading
import time
from typing import Any

import grpc
import psycopg
import pytest

from common.errors import FailedPrecondition, Unavailable
from graph.records import MatchEvent
from graph.seed_data import SEED_MODELS
from graph.store import Heads, StoreConfig, open_store
from unfragile.matchgraph.v1 import matchgraph_pb2 as pb

IDS = [m.id for m in SEED_MODELS]


def _batch(writer: int, b: int, n: int) -> list[MatchEvent]:
    return [MatchEvent(f"w{writer}-{b}-{k}", "q", tuple(IDS[: 1 + k % 2])) for k in range(n)]


def _seeded(url: str, **config: Any):
    store = open_store(url, StoreConfig(**config))
    for m in SEED_MODELS:
        store.upsert_model(m)
    return store


def test_concurrent_writers_and_a_tailing_reader_see_every_event_once(graph_dbs):
    """Writers on their own connections commit batches concurrently; a reader tailing ``seq > last``
    with wait_for_change sees every event exactly once, with no seq skipped, while they write."""
    url = graph_dbs.url()
    _seeded(url).close()
    n_writers, n_batches, size = 4, 25, 20
    stores = [open_store(url) for _ in range(n_writers + 1)]
    done = threading.Event()
    seen: list[tuple[int, str]] = []
    errors: list[BaseException] = []

    def write(w: int) -> None:
        try:
            for b in range(n_batches):
                stores[w].record_events(_batch(w, b, size))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    def tail() -> None:
        reader, last = stores[-1], 0
        while True:
            finished = done.is_set()
            reader.wait_for_change(last, 0.5)
            for rows in reader.read_event_rows(last):
                seen.extend((r[0], r[1]) for r in rows)
                last = rows[-1][0]
            if finished:
                return

    reader = threading.Thread(target=tail)
    reader.start()
    writers = [threading.Thread(target=write, args=(w,)) for w in range(n_writers)]
    for t in writers:
        t.start()
    for t in writers:
        t.join(120)
    done.set()
    reader.join(120)
    for s in stores:
        s.close()
    assert not errors
    total = n_writers * n_batches * size
    assert [seq for seq, _ in seen] == list(range(1, total + 1))  # no seq skipped, none seen twice
    assert sorted(e for _, e in seen) == sorted(e.event_id for w in range(n_writers) for b in range(n_batches)
                                                for e in _batch(w, b, size))
    # each batch is contiguous in seq order: one transaction, committed whole
    pos = {e: seq for seq, e in seen}
    for w in range(n_writers):
        for b in range(n_batches):
            seqs = [pos[e.event_id] for e in _batch(w, b, size)]
            assert seqs == list(range(seqs[0], seqs[0] + size))


def test_wait_for_change_returns_the_new_seq_or_times_out(graph_dbs):
    url = graph_dbs.url()
    store, writer = _seeded(url, change_poll_interval_s=0.05), open_store(url)
    assert store.wait_for_change(0, 0.2) == 0  # nothing committed: returns after the timeout
    got: list[int] = []
    waiter = threading.Thread(target=lambda: got.append(store.wait_for_change(0, 30)))
    waiter.start()
    writer.record_events(_batch(0, 0, 3))
    waiter.join(30)
    assert got == [3]
    assert store.wait_for_change(1, 5) == 3  # already past: immediate
    store.close()
    writer.close()


def test_snapshot_rows_carry_their_seq_and_a_growing_version(graph_dbs):
    store = _seeded(graph_dbs.url())
    assert store.state_version() == 0 and store.load_snapshot("comatch") is None
    v1 = store.save_state({"comatch": (7, b"one"), "pagerank": (7, b"pr")})
    v2 = store.save_state({"comatch": (9, b"two")})
    assert (v1, v2) == (1, 2) and store.state_version() == 2
    row = store.load_snapshot("comatch")
    assert (row.seq, row.snapshot, row.data) == (9, 2, b"two") and row.saved_ms > 0
    assert store.load_state("pagerank") == (7, b"pr") and store.load_snapshot("pagerank").snapshot == 1
    store.delete_state(["pagerank"])
    assert store.load_state("pagerank") is None and store.load_state("comatch") == (9, b"two")
    assert store.ping() >= 0
    store.close()


def test_stop_words_do_not_match(make_server, upsert_seed):
    """"draw a picture" used to rank Kosmos-2 first because "a" matched; now only the words count."""
    s = make_server()
    upsert_seed(s.stub)
    assert s.engine.store.search_fts("draw a picture", 10) == []  # the seed pages never say draw/picture
    s.stub.UpsertModel(pb.UpsertModelRequest(model=pb.ModelRecord(
        id="sketch-tool", name="Sketch Tool", type=pb.MODEL_TYPE_TOOL,
        capabilities=[pb.Capability(title="Sketching", description="Draws pictures from a short description.")])))
    r = s.stub.Search(pb.SearchRequest(query="draw a picture"))
    assert r.hits[0].model_id == "sketch-tool" and r.hits[0].fts_rank == 1
    assert "stable-diffusion" in [h.model_id for h in r.hits]  # it generates images: the query's intent
    assert [h.model_id for h in s.stub.Search(pb.SearchRequest(query="draw picture")).hits] == \
        [h.model_id for h in r.hits]  # "a" decides nothing
    assert s.stub.Search(pb.SearchRequest(query="the of a")).hits == []  # only stop words: nothing matches
    only = s.stub.Rank(pb.RankRequest(capability="a picture"))
    assert [m.id for m in only.models] == ["sketch-tool"]


# ----------------------------------------------------------------------------- PostgreSQL only
def test_pg_notifies_once_per_committed_batch(pg_server):
    url = pg_server.create_database("notify_once", template="matchgraph_template")
    store = _seeded(url)
    with psycopg.connect(url, autocommit=True) as listener:
        listener.execute("LISTEN matchgraph")
        store.record_events(_batch(0, 0, 50))
        store.record_events(_batch(0, 0, 50))  # a replay: nothing committed, no notice
        store.record_events(_batch(0, 1, 10))
        payloads = [n.payload for n in listener.notifies(timeout=1.0)]
    store.close()
    pg_server.drop_database("notify_once")
    assert payloads == ["50", "60"]


def test_pg_every_write_of_a_deposed_leader_is_fenced_and_changes_nothing(pg_server):
    """Each kind of write (catalogue, events, feedback, probe runs, probe failures, state) checks the writer's
    term inside its own transaction: after the term moves on, each fails and stores nothing."""
    from graph.store import FeedbackRow, ProbeResultRow
    from graph.store.pg_support import Fenced

    url = pg_server.create_database("fenced_writes", template="matchgraph_template")
    store = _seeded(url)
    store.term = store.leader().term  # a leader of the current term: its writes pass the check
    store.record_events(_batch(0, 0, 4))
    fb = FeedbackRow("w0-0-0", "success", True, "test", "", (IDS[0],), 1)
    assert store.record_feedback(fb) == (fb, True)
    pg_server.sql("UPDATE leader SET term = term + 1, address = 'elsewhere:1' WHERE id = 1", "fenced_writes")
    before = (store.event_count(), store.feedback_counts(), len(store.probe_runs()), store.probe_freshness(),
              store.state_version(), store.get_model(IDS[0]))
    writes = {
        "upsert_model": lambda: store.upsert_model(SEED_MODELS[0]),
        "bulk_insert_models": lambda: store.bulk_insert_models(SEED_MODELS),
        "record_events": lambda: store.record_events(_batch(0, 1, 3)),
        "record_feedback": lambda: store.record_feedback(FeedbackRow("w0-0-1", "failure", False, "test", "",
                                                                     (IDS[0],), 2)),
        "add_probe_run": lambda: store.add_probe_run("run-1", 0, ["p"], [ProbeResultRow(
            "run-1", IDS[0], "v", "p", 0.5, "")], []),
        "record_probe_failure": lambda: store.record_probe_failure("no judge"),
        "save_state": lambda: store.save_state({"rank": (1, b"x")}),
    }
    for name, write in writes.items():
        with pytest.raises(Fenced, match=r"no longer the leader \(term \d+ is over: the leader is elsewhere:1"):
            write()
        assert store.fenced, name
    after = (store.event_count(), store.feedback_counts(), len(store.probe_runs()), store.probe_freshness(),
             store.state_version(), store.get_model(IDS[0]))
    store.close()
    pg_server.drop_database("fenced_writes")
    assert after == before


@pytest.mark.parametrize("collation", ["C", "default"])
def test_pg_event_ids_are_probed_through_their_index_in_any_collation(pg_server, collation):
    """New databases store event ids COLLATE "C"; one made before keeps the database's collation.
    Either way the staging table matches it, so the stored-already probe is an index lookup."""
    from graph.store.pg_support import MOVE, STAGE

    name = f"collation_{collation.lower()}"
    url = pg_server.create_database(name)
    if collation == "default":  # the events table as an older release created it
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE events (seq BIGINT PRIMARY KEY, event_id TEXT NOT NULL UNIQUE, "
                         "query TEXT NOT NULL, matched TEXT NOT NULL, compared TEXT NOT NULL, clicked TEXT NOT NULL, "
                         "ts_ms BIGINT NOT NULL)")
    store = _seeded(url)
    assert len(store.record_events(_batch(0, 0, 40))[0]) == 40
    assert store.record_events(_batch(0, 0, 40))[0] == []  # a replay: all stored already
    assert len(store.record_events(_batch(0, 1, 5) + _batch(0, 0, 3))[0]) == 5
    assert store.event_count() == 45
    store.close()
    with psycopg.connect(url) as conn:
        kept = conn.execute("SELECT collation_name FROM information_schema.columns "
                            "WHERE table_name = 'events' AND column_name = 'event_id'").fetchone()
        assert kept == (("C",) if collation == "C" else (None,))
        conn.execute(STAGE)
        conn.execute("SET enable_seqscan = off")  # only changes a choice; it cannot create an index path
        plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + MOVE.replace("%s", "0")))
    pg_server.drop_database(name)
    assert "Seq Scan on events e" not in plan and "events_event_id_key on events e" in plan, plan


def test_pg_hot_standby_reads_polls_and_refuses_writes(pg_server, pg_standby):
    url = pg_server.create_database("standby_src", template="matchgraph_template")
    primary = _seeded(url)
    pg_server.wait_replayed(pg_standby)
    replica = open_store(pg_standby.url("standby_src"), StoreConfig(change_poll_interval_s=0.05))
    try:
        assert replica.read_only and replica.model_nodes() == primary.model_nodes()
        got: list[int] = []
        waiter = threading.Thread(target=lambda: got.append(replica.wait_for_change(0, 30)))
        waiter.start()
        primary.record_events(_batch(0, 0, 5))
        waiter.join(30)
        assert got == [5]  # no LISTEN on a standby: the change was seen by polling
        with pytest.raises(FailedPrecondition, match="read-only standby"):
            replica.record_events(_batch(1, 0, 1))
        assert replica.replica_delay_s() == 0.0  # caught up
        pg_standby.sql("SELECT pg_wal_replay_pause()")
        try:
            primary.record_events(_batch(2, 0, 1))
            time.sleep(0.3)
            assert replica.heads().seq == 5 and replica.replica_delay_s() >= 0.3  # received, not replayed
        finally:
            pg_standby.sql("SELECT pg_wal_replay_resume()")
        pg_server.wait_replayed(pg_standby)
        assert replica.heads().seq == 6 and replica.replica_delay_s() == 0.0
    finally:
        replica.close()
        primary.close()


def test_heads_news_and_kept_state_rows(graph_dbs):
    """heads() pairs the newest event seq with the snapshot version; wait_for_news wakes on either; the
    probe provenance row is source data that delete_state() keeps."""
    store = _seeded(graph_dbs.url(), change_poll_interval_s=0.05)
    assert store.heads() == (0, 0)
    # the first wait sets up LISTEN (PostgreSQL); a commit racing that set-up is seen at the next poll only
    assert store.wait_for_news(store.heads(), 0.01) == (0, 0)
    got: list[Any] = []
    seen = store.heads()
    waiter = threading.Thread(target=lambda: got.append(store.wait_for_news(seen, 30)))
    waiter.start()
    store.save_state({"comatch": (0, b"x")})
    waiter.join(30)
    assert got == [(0, 1)]
    store.record_events(_batch(0, 0, 3))
    assert store.wait_for_news(got[0], 5) == (3, 1) and store.wait_for_news(Heads(3, 1), 0.1) == (3, 1)
    store.save_state({"probe_basis": (0, b"[]"), "pagerank": (3, b"pr")})
    assert set(store.load_snapshots(["probe_basis", "pagerank", "nothing"])) == {"probe_basis", "pagerank"}
    store.delete_state()
    assert store.load_snapshot("comatch") is None and store.load_snapshot("probe_basis") is not None
    assert store.data_versions() == (3, 2, 0, 0, 0)
    store.record_probe_failure("down")
    assert store.data_versions().probe_failure_ms > 0
    store.close()


@pytest.mark.parametrize("db_backend", ["postgresql"])
def test_pg_outage_is_unavailable_with_retry_hint_then_reconnects(make_server, upsert_seed):
    """PostgreSQL stopped: calls answer UNAVAILABLE with retry-after-ms instead of hanging; once it is back
    the pool reconnects by itself and nothing committed before the outage is lost."""
    from tests.pgserver import start_server

    pg = start_server()
    s = None
    try:
        url = pg.create_database("outage")
        s = make_server(db_url=url, pg_pool_timeout_s=1.0, pg_connect_timeout_s=1)
        upsert_seed(s.stub)
        ev = [pb.MatchEvent(event_id=f"o{i}", query="q", matched=["kosmos2", "sd"]) for i in range(20)]
        assert s.stub.RecordMatches(iter([pb.RecordMatchesRequest(events=ev)])).inserted == 20
        pg.stop("fast")
        with pytest.raises(grpc.RpcError) as err:
            s.stub.RecordMatches(iter([pb.RecordMatchesRequest(events=ev[:1])]), timeout=30)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "retry shortly" in err.value.details()
        assert ("retry-after-ms", "1000") in tuple(err.value.trailing_metadata())
        with pytest.raises(Unavailable):
            s.engine.store.ping()
        pg.restart_on_same_port()
        more = [pb.MatchEvent(event_id=f"p{i}", query="q", matched=["kosmos2", "sd"]) for i in range(5)]
        deadline = time.monotonic() + 30
        while True:  # the pool reconnects in the background: a client honouring the retry hint gets through
            try:
                r = s.stub.RecordMatches(iter([pb.RecordMatchesRequest(events=ev + more)]), timeout=30)
                break
            except grpc.RpcError as again:
                assert again.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline
                time.sleep(int(dict(again.trailing_metadata())["retry-after-ms"]) / 1000)
        assert (r.inserted, r.duplicates, r.graph_version) == (5, 20, 25)
        assert s.engine.store.event_count() == 25
    finally:
        if s is not None:
            s.stop()  # checkpoints into this server before it goes
        pg.destroy()


# ----------------------------------------------------------------------------- db_url
@pytest.mark.parametrize("url, parsed", [
    ("sqlite:///var/matchgraph.db", ("sqlite", "var/matchgraph.db")),
    ("sqlite:////srv/graph.db", ("sqlite", "/srv/graph.db")),
    ("sqlite://", ("sqlite", ":memory:")),
    ("var/old.db", ("sqlite", "var/old.db")),
    ("postgresql://mg@db.internal:5432/matchgraph", ("postgresql", "postgresql://mg@db.internal:5432/matchgraph")),
])
def test_db_url_picks_the_backend(url, parsed):
    from graph.store import parse_db_url

    assert parse_db_url(url) == parsed


def test_db_url_setting_and_its_deprecated_db_path_alias(tmp_path):
    from pydantic import ValidationError

    from services.matchgraph.settings import Settings

    assert Settings().db_url == "sqlite:///var/matchgraph.db"
    assert Settings(db_path=tmp_path / "g.db").db_url == f"sqlite:///{tmp_path}/g.db"
    with pytest.raises(ValidationError, match="db_url only"):
        Settings(db_path=tmp_path / "g.db", db_url="sqlite:///x.db")
    with pytest.raises(ValidationError, match="postgresql://user@host:port/dbname"):
        Settings(db_url="mysql://db/graph")
