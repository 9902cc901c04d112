"""``unfragile graph migrate``: an SQLite match graph copied into a real PostgreSQL serves identical bytes."""

from __future__ import annotations

import random

import pytest
import typer
from typer.testing import CliRunner

from services.matchgraph.cli import register
from tests.graph.test_graph_rank_search_probes import FakeProbes
from unfragile.matchgraph.v1 import matchgraph_pb2 as pb

EXTRA = ["clip", "blip", "sdxl", "owl-vit"]
pytestmark = pytest.mark.parametrize("db_backend", ["sqlite"])  # the source; the target is PostgreSQL


def _migrate(src: str, dst: str) -> tuple[int, str]:
    root = typer.Typer()
    register(root)
    r = CliRunner().invoke(root, ["graph", "migrate", "--from", src, "--to", dst])
    return r.exit_code, r.output


def _answers(stub) -> list[bytes]:
    """Every read that depends on stored data, serialised deterministically."""
    out = [stub.Rank(pb.RankRequest(limit=50)), stub.Rank(pb.RankRequest(capability="image captioning")),
           stub.GetModel(pb.GetModelRequest(model="sd", explain=True)),
           stub.GetModel(pb.GetModelRequest(model="kosmos2", explain=True))]
    pairs = (("kosmos2", "sd"), ("clip", "blip"), ("sd", "sdxl"))
    out += [stub.Compare(pb.CompareRequest(a=a, b=b)) for a, b in pairs]
    return [m.SerializeToString(deterministic=True) for m in out]


def _events(n: int, prefix: str) -> list[pb.MatchEvent]:
    rng = random.Random(n)
    ids = ["kosmos-2-patch14-224", "stable-diffusion", *EXTRA]
    out = []
    for i in range(n):
        m = rng.sample(ids, rng.randint(1, 3))
        out.append(pb.MatchEvent(event_id=f"{prefix}{i}", query=rng.choice(["caption", "draw", "embed"]),
                                 matched=m, compared=m[:2] if len(m) > 1 else [], clicked=m[:1],
                                 timestamp_ms=1_700_000_000_000 + i))
    return out


def test_migrate_sqlite_to_postgresql_gives_identical_answers(make_server, upsert_seed, pg_server, tmp_path):
    src = make_server("source.db", probe_backend=FakeProbes(0.7, 0.4), checkpoint_every_events=250)
    upsert_seed(src.stub)
    for k, mid in enumerate(EXTRA):
        src.stub.UpsertModel(pb.UpsertModelRequest(model=pb.ModelRecord(
            id=mid, name=mid.upper(), type=pb.MODEL_TYPE_MODEL, aliases=[f"{mid}-alias"],
            capabilities=[pb.Capability(title="Image captioning", description=f"captions, variant {k}")],
            adoption=[pb.Signal(kind="downloads", value=500 * (k + 1), source="t", observed_at="2026-01-01")])))
    src.stub.RecordMatches(iter([pb.RecordMatchesRequest(events=_events(400, "a"))]))
    src.stub.RunProbes(pb.RunProbesRequest(max_prompts=3, seed=1))
    src.stub.RecordMatches(iter([pb.RecordMatchesRequest(events=_events(90, "b"))]))  # after the last checkpoint
    src_url = src.settings.db_url
    src.stop()  # a clean stop checkpoints the derived state, which is copied too
    dst_url = pg_server.create_database("migrated")

    code, out = _migrate(src_url, dst_url)
    assert code == 0, out
    assert "490 events copied (0 already there), 6 models, 1 probe runs" in out

    src.start()  # the same SQLite file, served again
    pg = make_server(db_url=dst_url, probe_backend=FakeProbes(0.7, 0.4), checkpoint_every_events=250)
    before = _answers(src.stub)
    assert _answers(pg.stub) == before  # byte for byte, snapshot versions included
    assert pg.engine.store.graph_version() == 490 and pg.engine.store.probe_results() == \
        src.engine.store.probe_results()

    # Idempotent and incremental: more events on the source, migrate again, only those are appended.
    src.stub.RecordMatches(iter([pb.RecordMatchesRequest(events=_events(30, "c"))]))
    src.stop()
    pg.stop()
    code, out = _migrate(src_url, dst_url)
    assert code == 0 and "30 events copied (490 already there)" in out, out
    code, out = _migrate(src_url, dst_url)
    assert code == 0 and "0 events copied (520 already there)" in out, out
    src.start()
    pg.start()
    assert _answers(pg.stub) == _answers(src.stub)
    pg.stop()

    # A target holding other events is refused, untouched.
    other = make_server("other.db")
    upsert_seed(other.stub)
    other.stub.RecordMatches(iter([pb.RecordMatchesRequest(events=[
        pb.MatchEvent(event_id=f"z{i}", query="q", matched=["kosmos2", "sd"]) for i in range(5)])]))
    other.stop()
    code, out = _migrate(other.settings.db_url, dst_url)
    assert code == 1 and "not a copy of the source" in out
    code, out = _migrate(src_url, src_url)
    assert code == 2 and "same database" in out
