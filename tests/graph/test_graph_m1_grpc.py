"""M1 over real gRPC: UpsertModel, GetModel, Compare on the two seed models; errors; health."""

from __future__ import annotations

import re

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from graph.seed_data import KOSMOS2, STABLE_DIFFUSION
from services.matchgraph.types import record_to_pb
from unfragile.matchgraph.v1 import matchgraph_pb2 as pb

SEED_FEATURES = ["Type", "UnfragileRank", "Adoption", "Quality", "Ecosystem", "Match Graph", "Pricing",
                 "Capabilities", "Times Matched"]


@pytest.mark.parametrize("db_backend", ["sqlite"])  # validation only: no storage involved
def test_health_is_serving(seeded):
    stub = health_pb2_grpc.HealthStub(seeded.channel)
    for name in ("", "unfragile.matchgraph.v1.MatchGraph"):
        assert stub.Check(health_pb2.HealthCheckRequest(service=name)).status == health_pb2.HealthCheckResponse.SERVING


def test_upsert_reports_created_then_replaced(make_server):
    s = make_server()
    first = s.stub.UpsertModel(pb.UpsertModelRequest(model=record_to_pb(KOSMOS2)))
    again = s.stub.UpsertModel(pb.UpsertModelRequest(model=record_to_pb(KOSMOS2)))
    assert first.created and not again.created
    assert first.model == again.model == record_to_pb(KOSMOS2)


def test_get_model_by_id_name_and_alias(seeded):
    for name in ("stable-diffusion", "Stable Diffusion", "sd", "RUNWAYML/stable-diffusion-v1-5"):
        r = seeded.stub.GetModel(pb.GetModelRequest(model=name))
        assert r.model.id == "stable-diffusion"
        assert len(r.model.capabilities) == 4
    k = seeded.stub.GetModel(pb.GetModelRequest(model="kosmos-2-patch14-224"))
    assert len(k.model.capabilities) == 8
    assert not k.evidence  # explain off


def test_get_model_explain_traces_every_subscore(seeded):
    r = seeded.stub.GetModel(pb.GetModelRequest(model="kosmos-2-patch14-224", explain=True))
    dims = {e.dimension for e in r.evidence}
    assert {"adoption", "ecosystem", "match_graph", "rank"} <= dims
    # each signal row of the record appears with its source and date
    sources = {(e.kind, e.source, e.observed_at) for e in r.evidence if e.dimension == "adoption"}
    assert {(s.kind, s.source, s.observed_at) for s in KOSMOS2.adoption} <= sources
    # contributions of the signal rows add up to the sub-score; the weight rows add up to the rank
    for dim in ("adoption", "ecosystem"):
        total = sum(e.contribution for e in r.evidence if e.dimension == dim)
        assert total == pytest.approx(getattr(r.scores, dim).value)
    assert sum(e.contribution for e in r.evidence if e.dimension == "rank") == pytest.approx(r.scores.rank.value)


def test_compare_seed_page_has_seed_sections_and_consistent_verdict(seeded):
    r = seeded.stub.Compare(pb.CompareRequest(a="kosmos-2-patch14-224", b="Stable Diffusion"))
    assert [row.feature for row in r.rows] == SEED_FEATURES
    rows = {row.feature: (row.a, row.b) for row in r.rows}
    assert rows["Type"] == ("Model", "Model")
    assert rows["Pricing"] == ("Free", "Paid")
    assert rows["Capabilities"] == ("8 decomposed", "4 decomposed")
    assert rows["Times Matched"] == ("0", "0")
    md = r.markdown
    assert md.startswith("# kosmos-2-patch14-224 vs Stable Diffusion\n")
    for section in ("## kosmos-2-patch14-224 Capabilities", "## Stable Diffusion Capabilities", "## Verdict",
                    "## Need something different?"):
        assert section in md
    for cap in KOSMOS2.capabilities + STABLE_DIFFUSION.capabilities:
        assert f"### {cap.title}" in md and f"**Unique:** {cap.unique}" in md
        assert f"**vs alternatives:** {cap.vs_alternatives}" in md
    assert "<h2>Verdict</h2>" in r.html and "<table" in r.html
    # the verdict follows the numbers on the page
    rank = next(d for d in r.dimensions if d.dimension == "rank")
    ra, rb = round(r.a_scores.rank.value), round(r.b_scores.rank.value)
    text = " ".join(r.verdict)
    if ra == rb:
        assert "ranks higher" not in r.headline and "scores higher" not in text
    if rank.outcome == pb.OUTCOME_A_LEADS:
        assert rank.diff_low > 0 and ra > rb
        assert r.headline.startswith(f"kosmos-2-patch14-224 ranks higher at {ra}/100 vs Stable Diffusion at {rb}/100")
    for d in r.dimensions[1:]:
        label = {"match_graph": "match graph"}.get(d.dimension, d.dimension)
        if d.outcome == pb.OUTCOME_TIED:
            assert re.search(rf"leads on [^.]*\b{label}\b", text) is None
        else:
            assert (d.diff_low > 0) if d.outcome == pb.OUTCOME_A_LEADS else (d.diff_high < 0)
    # no evidence on quality for either: tied, never "stronger on quality"
    q = next(d for d in r.dimensions if d.dimension == "quality")
    assert q.outcome == pb.OUTCOME_TIED and "tied on quality (no evidence for either)" in text.replace(
        "They are tied on ", "tied on ").replace("The two are tied on ", "tied on ")
    assert "is free to use" in text and "Stable Diffusion is paid only" in text


def test_compare_is_deterministic(seeded):
    one = seeded.stub.Compare(pb.CompareRequest(a="kosmos2", b="sd"))
    two = seeded.stub.Compare(pb.CompareRequest(a="kosmos-2-patch14-224", b="stable-diffusion"))
    assert one.markdown == two.markdown and one.html == two.html


@pytest.mark.parametrize("db_backend", ["sqlite"])  # validation only: no storage involved
@pytest.mark.parametrize("req, code, words", [
    (pb.CompareRequest(a="kosmos2", b="nope-model"), grpc.StatusCode.NOT_FOUND, "not in the match graph"),
    (pb.CompareRequest(a="kosmos2", b=""), grpc.StatusCode.INVALID_ARGUMENT, "both a and b"),
    (pb.CompareRequest(a="kosmos2", b="kosmos-2-patch14-224"), grpc.StatusCode.INVALID_ARGUMENT, "same model"),
])
def test_compare_bad_input(seeded, req, code, words):
    with pytest.raises(grpc.RpcError) as err:
        seeded.stub.Compare(req)
    assert err.value.code() == code and words in err.value.details()


@pytest.mark.parametrize("db_backend", ["sqlite"])  # validation only: no storage involved
def test_not_found_suggests_close_names(seeded):
    with pytest.raises(grpc.RpcError) as err:
        seeded.stub.GetModel(pb.GetModelRequest(model="kosmos-2-patch14"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "did you mean" in err.value.details()


def _bad_records():
    ok = record_to_pb(KOSMOS2)
    cases = []
    r = pb.ModelRecord(); r.CopyFrom(ok); r.id = "Bad Id!"; cases.append((r, "lowercase slug"))
    r = pb.ModelRecord(); r.CopyFrom(ok); r.type = pb.MODEL_TYPE_UNSPECIFIED; cases.append((r, "type"))
    r = pb.ModelRecord(); r.CopyFrom(ok); r.adoption[0].value = -1; cases.append((r, ">= 0"))
    r = pb.ModelRecord(); r.CopyFrom(ok); r.adoption[0].observed_at = "yesterday"; cases.append((r, "ISO date"))
    r = pb.ModelRecord(); r.CopyFrom(ok); r.name = ""; cases.append((r, "model.name"))
    r = pb.ModelRecord(); r.CopyFrom(ok); r.serving_endpoint = "gpu"; cases.append((r, "serving_endpoint"))
    r = pb.ModelRecord(); r.CopyFrom(ok); r.external_quality.add(benchmark="x", score=3, source="s",
                                                                  observed_at="2026-01-01"); cases.append((r, "0..1"))
    return cases


@pytest.mark.parametrize("db_backend", ["sqlite"])  # validation only: no storage involved
@pytest.mark.parametrize("record, words", _bad_records())
def test_upsert_bad_input_is_invalid_argument_and_server_keeps_serving(seeded, record, words):
    with pytest.raises(grpc.RpcError) as err:
        seeded.stub.UpsertModel(pb.UpsertModelRequest(model=record))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in err.value.details()
    assert seeded.stub.GetModel(pb.GetModelRequest(model="kosmos2")).model.id == "kosmos-2-patch14-224"


@pytest.mark.parametrize("db_backend", ["sqlite"])  # validation only: no storage involved
def test_upsert_missing_model_and_alias_collision(seeded):
    with pytest.raises(grpc.RpcError) as err:
        seeded.stub.UpsertModel(pb.UpsertModelRequest())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    clash = pb.ModelRecord(id="other", name="Other", type=pb.MODEL_TYPE_TOOL, aliases=["sd"])
    with pytest.raises(grpc.RpcError) as err:
        seeded.stub.UpsertModel(pb.UpsertModelRequest(model=clash))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "already belongs" in err.value.details()
