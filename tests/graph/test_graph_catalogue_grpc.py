"""Over real gRPC: UpsertModel, GetModel, Compare on the two seed models; errors; health."""

from __future__ import annotations

import re

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from graph.seed_data import KOSMOS2, STABLE_DIFFUSION
from services.matchgraph.types import record_to_pb
from tests.graph.conftest import with_readings
from unfragile.matchgraph.v1 import matchgraph_pb2 as pb

SEED_FEATURES = ["Type", "UnfragileRank", "Adoption", "Quality", "Ecosystem", "Match Graph", "Freshness", "Pricing",
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
    for name in ("stable-diffusion", "Stable Diffusion", "sd", "RUNWAYML/stable-diffusion-v1-5",
                 "stable-diffusion-v1-5/stable-diffusion-v1-5"):
        r = seeded.stub.GetModel(pb.GetModelRequest(model=name))
        assert r.model.id == "stable-diffusion"
        assert len(r.model.capabilities) == 4
    k = seeded.stub.GetModel(pb.GetModelRequest(model="kosmos-2-patch14-224"))
    assert len(k.model.capabilities) == 8
    assert not k.evidence  # explain off


def test_get_model_explain_traces_every_subscore(evidenced):
    r = evidenced.stub.GetModel(pb.GetModelRequest(model="kosmos-2-patch14-224", explain=True))
    dims = {e.dimension for e in r.evidence}
    assert {"adoption", "ecosystem", "match_graph", "quality", "freshness", "rank"} <= dims
    # each reading appears with its source and date
    sources = {(e.kind, e.source, e.observed_at) for e in r.evidence if e.dimension == "adoption"}
    assert {(s.kind, s.source, s.observed_at) for s in with_readings(KOSMOS2).adoption} == sources
    # contributions of the reading rows add up to the sub-score; the weight rows add up to the rank
    for dim in ("adoption", "ecosystem", "quality", "freshness"):
        total = sum(e.contribution for e in r.evidence if e.dimension == dim)
        assert getattr(r.scores, dim).measured and total == pytest.approx(getattr(r.scores, dim).value)
    assert sum(e.contribution for e in r.evidence if e.dimension == "rank") == pytest.approx(r.scores.rank.value)
    assert list(r.scores.rests_on) == ["adoption", "quality", "ecosystem", "match_graph", "freshness"]
    assert sum(r.scores.rank_weights.values()) == pytest.approx(1.0)


def test_compare_seed_page_has_seed_sections_and_consistent_verdict(evidenced):
    r = evidenced.stub.Compare(pb.CompareRequest(a="kosmos-2-patch14-224", b="Stable Diffusion"))
    assert [row.feature for row in r.rows] == SEED_FEATURES
    rows = {row.feature: (row.a, row.b) for row in r.rows}
    assert rows["Type"] == ("Model", "Model")
    assert rows["Pricing"] == ("Free", "Free")  # the seed's "Paid" for Stable Diffusion is wrong: open weights
    assert rows["Capabilities"] == ("8 decomposed", "4 decomposed")
    assert rows["Quality"] == ("not comparable (image-to-text)", "not comparable (text-to-image)")
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
        if d.outcome in (pb.OUTCOME_A_LEADS, pb.OUTCOME_B_LEADS):
            assert (d.diff_low > 0) if d.outcome == pb.OUTCOME_A_LEADS else (d.diff_high < 0)
        else:
            assert re.search(rf"leads on [^.]*\b{label}\b", text) is None
    # a captioner and a generator share no task: quality is not comparable, said with the reason, never "tied"
    q = next(d for d in r.dimensions if d.dimension == "quality")
    assert q.outcome == pb.OUTCOME_NOT_COMPARABLE and not q.comparable
    assert ("Quality is not comparable: kosmos-2-patch14-224 is image-to-text, Stable Diffusion is text-to-image."
            in text) and "tied on quality" not in text
    # ten times the downloads: Stable Diffusion leads on adoption
    a = next(d for d in r.dimensions if d.dimension == "adoption")
    assert a.outcome == pb.OUTCOME_B_LEADS and "Stable Diffusion leads on adoption" in text
    # no search matched either: the match graph is at its prior for both, so it is not compared
    mg = next(d for d in r.dimensions if d.dimension == "match_graph")
    assert mg.outcome == pb.OUTCOME_NOT_MEASURED and "match graph (no recorded search has matched either yet)" in text
    assert r.verdict[-1] == "Both are free to use." and "paid" not in text


def test_page_cites_the_source_of_every_pricing_plan(seeded):
    r = seeded.stub.Compare(pb.CompareRequest(a="kosmos2", b="sd"))
    assert "## Pricing" in r.markdown and '<section class="pricing">' in r.html
    for m in (KOSMOS2, STABLE_DIFFUSION):
        assert f"**{m.name}: Free.**" in r.markdown
        for plan in m.pricing.plans:
            assert plan.source.startswith("https://") and plan.source_says
            assert f"Source: <{plan.source}>, which says: {plan.source_says}." in r.markdown
            assert f'<a href="{plan.source}" rel="nofollow noopener">' in r.html
    licences = " ".join(p.source_says for p in STABLE_DIFFUSION.pricing.plans)
    for licence in ("CreativeML Open RAIL-M", "CreativeML Open RAIL++-M", "Community License"):
        assert licence in licences and licence in r.markdown
    assert "MIT" in KOSMOS2.pricing.plans[0].source_says
    # the plans travel with their sources through UpsertModel and GetModel
    got = seeded.stub.GetModel(pb.GetModelRequest(model="sd")).model.pricing.plans
    assert [(p.source, p.source_says, p.observed_at) for p in got] == \
        [(p.source, p.source_says, p.observed_at) for p in STABLE_DIFFUSION.pricing.plans]


def test_verdict_pricing_sentence_follows_the_pricing_data(seeded):
    paid = record_to_pb(STABLE_DIFFUSION)
    paid.pricing.tier = pb.PRICING_TIER_PAID
    del paid.pricing.plans[:]
    paid.pricing.plans.add(name="Hosted API", usd_per_month=10, source="javascript:alert(1)",
                           source_says="a price list", observed_at="2026-10-30")
    seeded.stub.UpsertModel(pb.UpsertModelRequest(model=paid))
    r = seeded.stub.Compare(pb.CompareRequest(a="kosmos2", b="sd"))
    rows = {row.feature: (row.a, row.b) for row in r.rows}
    assert rows["Pricing"] == ("Free", "Paid")
    assert r.verdict[-1] == ("kosmos-2-patch14-224 is free to use, making it more accessible; "
                             "Stable Diffusion is paid only.")
    assert "Hosted API ($10.00/month)" in r.markdown
    assert 'href="javascript' not in r.html
    assert "Source: javascript:alert(1) (read 2026-10-30), which says: a price list." in r.html
    seeded.stub.UpsertModel(pb.UpsertModelRequest(model=record_to_pb(STABLE_DIFFUSION)))
    again = seeded.stub.Compare(pb.CompareRequest(a="kosmos2", b="sd"))
    assert again.verdict[-1] == "Both are free to use."


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
    def changed(edit, words):
        r = record_to_pb(with_readings(KOSMOS2))
        edit(r)
        return r, words

    def bad_quality(r):
        r.external_quality.add(benchmark="x", score=3, source="s", observed_at="2026-01-01")

    return [
        changed(lambda r: setattr(r, "id", "Bad Id!"), "lowercase slug"),
        changed(lambda r: setattr(r, "type", pb.MODEL_TYPE_UNSPECIFIED), "type"),
        changed(lambda r: setattr(r.adoption[0], "value", -1), ">= 0"),
        changed(lambda r: setattr(r.adoption[0], "observed_at", "yesterday"), "ISO date"),
        changed(lambda r: setattr(r, "name", ""), "model.name"),
        changed(lambda r: setattr(r, "serving_endpoint", "gpu"), "serving_endpoint"),
        changed(bad_quality, "0..1"),
        changed(lambda r: setattr(r.pricing.plans[0], "observed_at", "soon"), "ISO date"),
        changed(lambda r: setattr(r.pricing.plans[0], "source", ""), "pricing.plans[0].source_says needs the source"),
        changed(lambda r: r.tasks.append("Image To Text"), "task name"),
        changed(lambda r: setattr(r.facts[1], "value", "June 2023"), "ISO date like"),
        changed(lambda r: r.adoption.append(r.adoption[0]), "two readings of 'downloads'"),
    ]


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
