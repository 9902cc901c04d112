"""Pages and JSON cite their sources: each pricing plan with the page it was read from, and what
the quality probes ran on (a random-weight test model is named as one, so a quality lead on the
page is never taken for a claim about the real model)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import httpx
import pytest

from graph.seed_data import STABLE_DIFFUSION
from services.core.server import RunningServer, start_server
from services.gateway.server import RunningGateway, start
from services.gateway.settings import Settings as GatewaySettings
from services.matchgraph.app import Settings as GraphSettings
from services.matchgraph.app import build_engine, build_service
from tests.graph.conftest import FakeProbes
from unfragile.matchgraph.v1 import matchgraph_pb2 as pb
from unfragile.matchgraph.v1 import matchgraph_pb2_grpc as pb_grpc

from .conftest import KOSMOS, SD, seed_matchgraph


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, RunningGateway]]:
    """A MatchGraph whose probes ran on (fake) random-weight test models, and a gateway in front of it."""
    settings = GraphSettings(port=0, metrics_port=-1, db_path=tmp_path_factory.mktemp("gw-src") / "g.db",
                             bootstrap_rounds=50, graph_bootstrap_rounds=10)
    engine = build_engine(settings, probe_backend=FakeProbes(0.8, 0.3, test_models=True))
    server = start_server(settings, build_service(settings, engine))
    with grpc.insecure_channel(server.address) as ch:
        stub = pb_grpc.MatchGraphStub(ch)
        seed_matchgraph(stub)
        stub.RunProbes(pb.RunProbesRequest(max_prompts=2, seed=0))
    gw = start(GatewaySettings(port=0, metrics_port=-1, matchgraph_target=server.address, log_level="WARNING"))
    yield server, gw
    gw.stop()
    server.stop(0)


def test_compare_page_shows_pricing_sources_and_what_probes_ran_on(probed):
    _server, gw = probed
    page = httpx.get(f"{gw.url}/compare/{KOSMOS}-vs-{SD}", timeout=30)
    assert page.status_code == 200
    html = page.text
    assert "Pricing and its sources" in html
    for plan in STABLE_DIFFUSION.pricing.plans:
        assert f'<a href="{plan.source}" rel="nofollow noopener">{plan.source}</a>' in html
        assert f"which says: {plan.source_says}" in html
    assert 'id="probe-basis"' in html and "What the quality probes ran on" in html
    assert "<code>/models/diffusion</code>" in html and "a tiny random-weight test model" in html
    assert "its quality score says nothing about the real model" in html
    assert "random-weight test models" in html  # the verdict sentence, next to any quality claim


def test_compare_json_carries_sources_and_probe_basis(probed):
    _server, gw = probed
    got = httpx.get(f"{gw.url}/api/v1/compare", params={"a": KOSMOS, "b": SD}, timeout=30).json()
    plans = got["b"]["pricing"]["plans"]
    assert got["b"]["pricing"]["tier"] == "free"
    assert [p["source"] for p in plans] == [p.source for p in STABLE_DIFFUSION.pricing.plans]
    assert all(p["source_says"] for p in plans)
    basis = {b["model"]: b for b in got["probe_basis"]}
    assert set(basis) == {KOSMOS, SD}
    assert basis[SD]["served"] == {"endpoint": "diffusion", "model_id": "/models/diffusion",
                                   "architecture": "DiffusionArch", "parameters": 1000, "test_model": True,
                                   "test_preset": "tiny"}
    assert basis[KOSMOS]["runs"] == 1


def test_model_page_shows_pricing_sources_and_probe_basis_evidence(probed):
    _server, gw = probed
    html = httpx.get(f"{gw.url}/models/{SD}", timeout=30).text
    assert "Pricing and its sources" in html and "CreativeML Open RAIL-M" in html
    assert "probe_basis" in html and "random-weight test model: its quality says nothing about the real model" in html
    detail = httpx.get(f"{gw.url}/api/v1/models/{SD}", params={"explain": "true"}, timeout=30).json()
    assert any(e["kind"] == "probe_basis" for e in detail["evidence"])


def test_a_source_that_is_not_a_web_address_is_not_a_link(fresh_graph):
    server, stub = fresh_graph
    rec = pb.ModelRecord(id="odd", name="Odd", type=pb.MODEL_TYPE_TOOL, pricing=pb.Pricing(
        tier=pb.PRICING_TIER_PAID, plans=[pb.PricingPlan(name="Pro", usd_per_month=5, source="javascript:alert(1)",
                                                         source_says="five dollars")]))
    stub.UpsertModel(pb.UpsertModelRequest(model=rec))
    gw = start(GatewaySettings(port=0, metrics_port=-1, matchgraph_target=server.address, log_level="WARNING"))
    try:
        html = httpx.get(f"{gw.url}/models/odd", timeout=30).text
        assert "Source: javascript:alert(1)" in html and 'href="javascript' not in html
        assert "Pro</strong> ($5.00/month)" in html
    finally:
        gw.stop()
