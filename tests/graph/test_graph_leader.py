"""Several writer-capable MatchGraphs on one PostgreSQL: one leads, the others stand by, fencing holds.

Real servers on a real PostgreSQL. Checked: the holder of the leadership lock takes writes and says so
(GetSnapshot, the leader health name); a standby serves the leader's answers and refuses writes naming the
leader; when the leader's lock session is cut (its database connection dropped), the standby takes over
under a new term, and the old leader, which has not noticed yet, cannot write: its write fails inside its
own transaction and names the new leader; then it steps down and follows.
"""

from __future__ import annotations

import grpc
import pytest

from services.core.client import health_status
from services.matchgraph.roles import LEADER_HEALTH
from tests.graph.test_graph_roles import _batch, _records, _snapshot, wait_until
from unfragile.matchgraph.v1 import matchgraph_pb2 as pb

pytestmark = pytest.mark.parametrize("db_backend", ["postgresql"])


def _pair(make_server, retry_a: float = 0.1):  # type: ignore[no-untyped-def]
    a = make_server("shared", role="writer", leader_retry_s=retry_a)
    b = make_server("unused", role="writer", db_url=a.settings.db_url, leader_retry_s=0.1, follow_wait_s=0.2)
    return a, b


def _role(server):  # type: ignore[no-untyped-def]
    """The server's Role (what runs beside its servicer)."""
    return server.running.service.listening.__self__


def test_one_writer_leads_the_other_stands_by_serving_its_answers(make_server):
    a, b = _pair(make_server)
    sa, sb = _snapshot(a), _snapshot(b)
    assert (sa.role, sa.term, sa.leader_address) == ("writer", 1, a.running.address)
    assert (sb.role, sb.term, sb.leader_address, sb.writer_address) == ("standby", 1, a.running.address,
                                                                        a.running.address)
    assert health_status(a.running.address, LEADER_HEALTH) == "SERVING"
    assert health_status(b.running.address, LEADER_HEALTH) == "NOT_SERVING"
    assert health_status(b.running.address, "unfragile.matchgraph.v1.MatchGraph") == "SERVING"
    with pytest.raises(grpc.RpcError) as err:
        b.stub.UpsertModel(pb.UpsertModelRequest(model=_records()[0]), timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"standby writer, not the leader: send RecordMatches, UpsertModel, ImportModels, RunProbes, " \
           f"RecordFeedback, ImportManifest to the leader at {a.running.address} (term 1)" in err.value.details()
    for r in _records():
        a.stub.UpsertModel(pb.UpsertModelRequest(model=r), timeout=30)
    a.stub.RecordMatches(iter([_batch(30, 1)]), timeout=30)
    want = _snapshot(a).snapshot_version
    wait_until(lambda: _snapshot(b).snapshot_version == want)
    assert b.stub.Rank(pb.RankRequest(limit=50), timeout=30) == a.stub.Rank(pb.RankRequest(limit=50), timeout=30)
    assert b.engine.store.event_count() == 30


def test_a_leader_cut_off_is_replaced_and_its_late_write_is_fenced(make_server, pg_server):
    a, b = _pair(make_server, retry_a=60.0)  # a checks its lock rarely: it will not notice the cut by itself
    for r in _records():
        a.stub.UpsertModel(pb.UpsertModelRequest(model=r), timeout=30)
    head = a.stub.RecordMatches(iter([_batch(40, 2)]), timeout=30).graph_version
    db = a.settings.db_url.rsplit("/", 1)[1]
    cut = pg_server.sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}' AND "
                        f"application_name = 'matchgraph leader lock {a.running.address}'")
    assert cut == [(True,)]
    wait_until(lambda: _snapshot(b).role == "writer")
    assert (_snapshot(b).term, _snapshot(b).graph_version) == (2, head)
    assert _snapshot(a).role == "writer"  # has not looked at its lock yet
    with pytest.raises(grpc.RpcError) as err:
        a.stub.RecordMatches(iter([_batch(10, 3)]), timeout=30)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"no longer the leader (term 1 is over: the leader is {b.running.address} (term 2))" \
        in err.value.details()
    assert a.engine.store.event_count() == head  # nothing of the fenced write was stored
    newer = b.stub.RecordMatches(iter([_batch(10, 3)]), timeout=30).graph_version
    assert newer == head + 10
    _role(a).candidate.try_once()  # its next check: it steps down and follows the new leader
    snap = _snapshot(a)
    assert (snap.role, snap.leader_address, snap.term) == ("standby", b.running.address, 2)
    assert health_status(a.running.address, LEADER_HEALTH) == "NOT_SERVING"
    assert health_status(b.running.address, LEADER_HEALTH) == "SERVING"
    want = _snapshot(b).snapshot_version
    wait_until(lambda: _snapshot(a).snapshot_version == want)
    assert _snapshot(a).graph_version == newer
    assert a.stub.Rank(pb.RankRequest(limit=50), timeout=30) == b.stub.Rank(pb.RankRequest(limit=50), timeout=30)
