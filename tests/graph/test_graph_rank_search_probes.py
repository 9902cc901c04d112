"""Over gRPC with replaceable backends: Rank, Search (intents, full text, embeddings, degradation), probes + BT,
fragility."""

from __future__ import annotations

import hashlib

import grpc
import numpy as np
import pytest

from graph import bradley_terry
from graph.probes import PROBE_PROMPTS, pairwise
from graph.rates import match_graph_point
from graph.store import ProbeResultRow
from tests.graph.conftest import FakeProbes
from unfragile.matchgraph.v1 import matchgraph_pb2 as pb


# ---------------------------------------------------------------- Rank
def test_rank_orders_by_lower_bound_and_filters_by_capability(seeded):
    for k in range(4):
        seeded.stub.UpsertModel(pb.UpsertModelRequest(model=pb.ModelRecord(
            id=f"tool-{k}", name=f"Tool {k}", type=pb.MODEL_TYPE_TOOL,
            adoption=[pb.Signal(kind="downloads", value=10 ** (k + 2), source=f"https://example.org/{s}",
                                observed_at="2026-01-01") for s in range(k + 1)],
            capabilities=[pb.Capability(title="Upscaling", description="makes images larger")])))
    r = seeded.stub.Rank(pb.RankRequest(limit=10))
    assert r.total == 6 and [m.position for m in r.models] == list(range(1, 7))
    # the four tools have adoption readings; the two seed models none: no rank, listed after the ranked ones
    assert [m.scores.rank.measured for m in r.models] == [True] * 4 + [False] * 2
    assert {m.id for m in r.models[4:]} == {"kosmos-2-patch14-224", "stable-diffusion"}
    assert all(m.scores.rank.not_measured_reason == "no dimension is measured for it" for m in r.models[4:])
    lows = [m.scores.rank.low for m in r.models[:4]]
    assert lows == sorted(lows, reverse=True)
    for m in r.models[:4]:
        s = m.scores.rank
        assert 0 <= s.low <= s.value <= s.high <= 100
    page2 = seeded.stub.Rank(pb.RankRequest(limit=2, offset=2))
    assert [m.id for m in page2.models] == [m.id for m in r.models[2:4]] and page2.models[0].position == 3
    only = seeded.stub.Rank(pb.RankRequest(capability="inpainting"))
    assert [m.id for m in only.models] == ["stable-diffusion"]
    up = seeded.stub.Rank(pb.RankRequest(capability="upscaling images"))
    assert {m.id for m in up.models} == {f"tool-{k}" for k in range(4)}
    with pytest.raises(grpc.RpcError) as err:
        seeded.stub.Rank(pb.RankRequest(limit=5000))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# ---------------------------------------------------------------- Search
class FakeEmbedder:
    """Deterministic bag-of-words hashing vectors: texts sharing words are similar."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.calls = 0

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        if self.fail:
            raise ConnectionError("visionlanguage is down")
        out = np.zeros((len(texts), 64))
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, int(hashlib.md5(w.strip(".,").encode()).hexdigest(), 16) % 64] += 1
        return out


def test_search_full_text_only_when_no_embedder(seeded):
    r = seeded.stub.Search(pb.SearchRequest(query="inpainting masked region"))
    assert not r.embeddings_used and "full text only" in r.degraded_reason
    assert r.intent.id == "inpaint"
    assert r.hits[0].model_id == "stable-diffusion" and r.hits[0].capability == "Inpainting"
    assert r.hits[0].fts_rank == 1 and r.hits[0].embedding_rank == 0 and r.hits[0].intent == "inpaint"
    assert "[" in r.hits[0].snippet
    grounded = seeded.stub.Search(pb.SearchRequest(query="grounding boxes for phrases", limit=1))
    assert [h.model_id for h in grounded.hits] == ["kosmos-2-patch14-224"]


def test_search_fuses_embeddings_into_the_text_score(make_server, upsert_seed):
    emb = FakeEmbedder()
    s = make_server(embedder=emb)
    upsert_seed(s.stub)
    r = s.stub.Search(pb.SearchRequest(query="text prompt image generation"))
    assert r.embeddings_used and r.degraded_reason == ""
    assert {h.model_id for h in r.hits} == {"stable-diffusion", "kosmos-2-patch14-224"}
    top = r.hits[0]
    assert top.model_id == "stable-diffusion" and top.intent == "generate" and top.embedding_rank > 0
    for h in r.hits:
        assert h.score == h.match_score and 0 <= h.text_score <= 1 and 0 <= h.intent_score <= 1
        assert h.embedding_rank > 0
    calls = emb.calls
    s.stub.Search(pb.SearchRequest(query="another query"))
    assert emb.calls == calls + 1  # documents embedded once, then only the query


def test_search_degrades_to_full_text_when_embedder_fails(make_server, upsert_seed):
    s = make_server(embedder=FakeEmbedder(fail=True))
    upsert_seed(s.stub)
    r = s.stub.Search(pb.SearchRequest(query="inpainting"))
    assert not r.embeddings_used and "unavailable" in r.degraded_reason
    assert r.hits[0].model_id == "stable-diffusion"


@pytest.mark.parametrize("db_backend", ["sqlite"])  # validation only: no storage involved
def test_search_bad_input(seeded):
    for req in (pb.SearchRequest(query="  "), pb.SearchRequest(query="x" * 600),
                pb.SearchRequest(query="a", limit=101), pb.SearchRequest(query="a", type="dataset")):
        with pytest.raises(grpc.RpcError) as err:
            seeded.stub.Search(req)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# ---------------------------------------------------------------- probes + Bradley-Terry
def test_bradley_terry_recovers_order_and_handles_ties():
    i = np.array([0, 0, 0, 1, 1, 2])
    j = np.array([1, 2, 2, 2, 2, 0])
    s = np.array([1, 1, 1, 1, 0.5, 0])
    theta = bradley_terry.fit(i, j, s, 3, prior=0.1)
    assert theta[0] > theta[1] > theta[2]
    q = bradley_terry.win_probability(theta)
    assert np.all((q > 0) & (q < 1))
    # all ties -> equal strengths, quality 0.5
    t = bradley_terry.fit(np.array([0, 0]), np.array([1, 1]), np.array([0.5, 0.5]), 2)
    np.testing.assert_allclose(bradley_terry.win_probability(t), [0.5, 0.5])


def test_pairwise_outcomes_with_tie_margin():
    rows = [ProbeResultRow("r", "a", "1", "p", 0.50, ""), ProbeResultRow("r", "b", "1", "p", 0.51, ""),
            ProbeResultRow("r", "a", "1", "q", 0.9, ""), ProbeResultRow("r", "b", "1", "q", 0.1, "")]
    out = {o.prompt: o.a_score for o in pairwise(rows, 0.02)}
    assert out == {"p": 0.5, "q": 1.0}


def _serve_sdxl(stub) -> None:
    """A second served generator: quality compares generators with each other."""
    stub.UpsertModel(pb.UpsertModelRequest(model=pb.ModelRecord(id="sdxl", name="SDXL", type=pb.MODEL_TYPE_MODEL,
                                                                serving_endpoint="diffusion", version="1.0")))


def test_run_probes_feeds_quality_and_the_page(make_server, upsert_seed):
    fake = FakeProbes(scores={"stable-diffusion": 0.8, "sdxl": 0.3})  # SD's images beat SDXL's every time
    s = make_server(probe_backend=fake)
    upsert_seed(s.stub)
    _serve_sdxl(s.stub)
    r = s.stub.RunProbes(pb.RunProbesRequest(max_prompts=6, seed=7))
    assert len(r.results) == 18 and len(r.outcomes) == 6  # 3 models x 6 items; outcomes: SD vs SDXL only
    assert fake.seeds == [7 + i for i in range(6) for _model in (0, 1)]
    assert {x.prompt for x in r.results if x.task == "text-to-image"} == set(PROBE_PROMPTS[:6])
    assert {(x.model_id, x.model_version) for x in r.results} == {
        ("stable-diffusion", "v1-5"), ("sdxl", "1.0"), ("kosmos-2-patch14-224", "patch14-224")}
    sd, xl = r.quality["stable-diffusion"], r.quality["sdxl"]
    assert sd.value > 0.5 > xl.value and sd.value + xl.value == pytest.approx(1.0)
    assert sd.evidence_count == 6
    page = s.stub.Compare(pb.CompareRequest(a="sdxl", b="sd"))
    q = next(d for d in page.dimensions if d.dimension == "quality")
    assert q.diff < 0
    if q.outcome == pb.OUTCOME_B_LEADS:
        assert q.diff_high < 0 and "Stable Diffusion leads on quality" in " ".join(page.verdict)
    # removing Stable Diffusion's wins over SDXL one by one erases its lead after a few
    assert 0 < q.records_to_flip <= 6
    stored = s.engine.store.probe_results(r.run_id)
    assert len(stored) == 18 and all(x.model_version for x in stored)
    ex = s.stub.GetModel(pb.GetModelRequest(model="sd", explain=True))
    assert any(e.kind == "probe_outcome" and "6 wins" in e.detail for e in ex.evidence)


@pytest.mark.parametrize("db_backend", ["sqlite"])  # validation only: no storage involved
def test_run_probes_without_backends_is_failed_precondition(seeded):
    with pytest.raises(grpc.RpcError) as err:
        seeded.stub.RunProbes(pb.RunProbesRequest())
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "diffusion_target" in err.value.details()


def test_run_probes_rejects_unserved_models(make_server, upsert_seed):
    s = make_server(probe_backend=FakeProbes(0.5, 0.5))
    upsert_seed(s.stub)
    s.stub.UpsertModel(pb.UpsertModelRequest(model=pb.ModelRecord(id="other", name="Other", type=pb.MODEL_TYPE_API)))
    with pytest.raises(grpc.RpcError) as err:
        s.stub.RunProbes(pb.RunProbesRequest(models=["other"]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not served" in err.value.details()


# ---------------------------------------------------------------- fragility
def test_match_graph_lead_reports_records_to_flip(seeded):
    """kosmos-2 co-matched with many models, SD with one: removing kosmos-2's events erases the lead."""
    for k in range(5):
        seeded.stub.UpsertModel(pb.UpsertModelRequest(model=pb.ModelRecord(id=f"m{k}", name=f"M{k}",
                                                                           type=pb.MODEL_TYPE_MODEL)))
    events = [pb.MatchEvent(event_id=f"k{k}", query="vision", matched=["kosmos2", f"m{k}"]) for k in range(5)]
    events += [pb.MatchEvent(event_id="s0", query="gen", matched=["sd", "m0"])]
    seeded.stub.RecordMatches(iter([pb.RecordMatchesRequest(events=events)]))
    page = seeded.stub.Compare(pb.CompareRequest(a="kosmos2", b="sd"))
    mg = next(d for d in page.dimensions if d.dimension == "match_graph")
    assert mg.diff > 0
    assert mg.records_to_flip >= 1
    # check the claim: remove that many of kosmos-2's events (largest first, as documented) and recompute
    g = seeded.engine.graph
    pos = seeded.engine.catalogue.pos
    removed = [tuple(pos[m] for m in ("kosmos-2-patch14-224", f"m{k}")) for k in range(mg.records_to_flip)]
    pr, _deg = g.without(removed)
    matched = seeded.engine.counts.stats[:, 0].astype(float)
    for grp in removed:
        matched[list(grp)] -= 1
    cfg = seeded.engine.config
    v = match_graph_point(pr, matched, cfg.match_graph_prior, cfg.match_graph_strength)
    ia, ib = pos["kosmos-2-patch14-224"], pos["stable-diffusion"]
    assert round(v[ia], 2) <= round(v[ib], 2)
    rank = page.dimensions[0]
    assert rank.records_to_flip != 0 and rank.fragile == (0 < rank.records_to_flip <= 5)


@pytest.mark.parametrize("db_backend", ["sqlite"])  # the scheduler, not storage
def test_probes_also_run_on_a_schedule(make_server, upsert_seed):
    import time

    s = make_server(probe_backend=FakeProbes(0.6, 0.4), probe_interval_s=0.2)
    upsert_seed(s.stub)
    _serve_sdxl(s.stub)
    deadline = time.monotonic() + 20
    while not s.engine.store.probe_results() and time.monotonic() < deadline:
        time.sleep(0.1)
    runs = {r.run_id for r in s.engine.store.probe_results()}
    assert runs, "the schedule never ran a probe"
    assert s.engine.store.probe_outcomes()


# ---------------------------------------------------------------- what the probes ran on
def test_probe_runs_record_what_they_ran_on_and_pages_say_so(make_server, upsert_seed):
    s = make_server("basis.db", probe_backend=FakeProbes(0.8, 0.3, test_models=True))
    upsert_seed(s.stub)
    r = s.stub.RunProbes(pb.RunProbesRequest(max_prompts=2, seed=1))
    served = {b.model: b.served for b in r.served}
    assert served["stable-diffusion"].model_id == "/models/diffusion" and served["stable-diffusion"].test_model
    assert served["kosmos-2-patch14-224"].endpoint == "visionlanguage"
    assert served["kosmos-2-patch14-224"].test_preset == "tiny" and all(b.runs == 1 for b in r.served)
    s.stub.RunProbes(pb.RunProbesRequest(max_prompts=2, seed=2))
    page = s.stub.Compare(pb.CompareRequest(a="kosmos2", b="sd"))
    assert [(b.model, b.served.model_id, b.served.test_model, b.runs) for b in page.probe_basis] == [
        ("kosmos-2-patch14-224", "/models/visionlanguage", True, 2), ("stable-diffusion", "/models/diffusion", True, 2)]
    text = " ".join(page.verdict)
    assert "random-weight test models" in text and "says nothing about the real models" in text
    assert "kosmos-2-patch14-224 on /models/visionlanguage (VisionlanguageArch, 1,000 parameters), a tiny " \
           "random-weight test model" in text
    for doc in (page.markdown, page.html):
        assert "What the quality probes ran on" in doc and "Stable Diffusion: 2 probe runs on /models/diffusion" in doc
        assert "its quality score says nothing about the real model" in doc
    ex = s.stub.GetModel(pb.GetModelRequest(model="sd", explain=True))
    basis = [e for e in ex.evidence if e.kind == "probe_basis"]
    assert len(basis) == 1 and basis[0].dimension == "quality" and basis[0].value == 2
    assert "random-weight test model: its quality says nothing about the real model, so these probes enter no score" \
        in basis[0].detail
    s.restart()  # the basis is stored with the runs: a restart shows the same page
    assert s.stub.Compare(pb.CompareRequest(a="kosmos2", b="sd")) == page


def test_probes_of_real_checkpoints_carry_no_test_model_caveat(make_server, upsert_seed):
    s = make_server(probe_backend=FakeProbes(0.8, 0.3, test_models=False))
    upsert_seed(s.stub)
    before = s.stub.Compare(pb.CompareRequest(a="kosmos2", b="sd"))
    assert not before.probe_basis and "What the quality probes ran on" not in before.markdown
    s.stub.RunProbes(pb.RunProbesRequest(max_prompts=2, seed=1))
    page = s.stub.Compare(pb.CompareRequest(a="kosmos2", b="sd"))
    assert [b.served.test_model for b in page.probe_basis] == [False, False]
    assert "random-weight" not in " ".join(page.verdict) and "random-weight" not in page.markdown
    assert "Stable Diffusion: 1 probe run on /models/diffusion (DiffusionArch, 1,000 parameters), served by " \
           "diffusion" in page.markdown


def test_a_service_that_does_not_say_what_it_serves_is_shown_as_unknown(make_server, upsert_seed):
    class Silent(FakeProbes):
        def served_model(self, endpoint: str) -> None:
            return None  # e.g. a model service without ModelInfo

    s = make_server(probe_backend=Silent(0.8, 0.3))
    upsert_seed(s.stub)
    r = s.stub.RunProbes(pb.RunProbesRequest(max_prompts=1, seed=1))
    assert [b.HasField("served") for b in r.served] == [False, False]
    page = s.stub.Compare(pb.CompareRequest(a="kosmos2", b="sd"))
    assert [(b.model, b.HasField("served"), b.runs) for b in page.probe_basis] == [
        ("kosmos-2-patch14-224", False, 1), ("stable-diffusion", False, 1)]
    assert "Stable Diffusion: 1 probe run on a served model that was not recorded" in page.markdown
