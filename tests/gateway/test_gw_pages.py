"""Pages with hostile catalogue text: everything a model record says is escaped, in HTML and
inside the SVG charts (names, capabilities, snippets, evidence sources)."""

from __future__ import annotations

import httpx

from services.gateway.server import start
from services.gateway.settings import Settings
from unfragile.matchgraph.v1 import matchgraph_pb2 as pb

from .conftest import KOSMOS

EVIL = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def test_hostile_model_text_is_escaped_everywhere(fresh_graph):
    server, stub = fresh_graph
    stub.UpsertModel(pb.UpsertModelRequest(model=pb.ModelRecord(
        id="evil-model", name=f"Evil {EVIL}", type=pb.MODEL_TYPE_TOOL, aliases=["evil"],
        pricing=pb.Pricing(tier=pb.PRICING_TIER_FREEMIUM),
        adoption=[pb.Signal(kind="stars", value=5, source=f"https://x.example/{EVIL}", observed_at="2026-11-01")],
        capabilities=[pb.Capability(title=f"Captioning {EVIL}", description=f"image captioning {EVIL}",
                                    unique=EVIL, vs_alternatives=EVIL)])))
    gw = start(Settings(port=0, metrics_port=-1, matchgraph_target=server.address, log_level="WARNING"))
    try:
        with httpx.Client(base_url=gw.url, timeout=30, follow_redirects=True) as http:
            pages = [http.get("/models/evil-model"), http.get(f"/compare/evil-model-vs-{KOSMOS}"),
                     http.get("/search", params={"q": "captioning"}), http.get("/rank"), http.get("/")]
            for r in pages:
                assert r.status_code == 200, r.url
                assert "<script" not in r.text and "<img" not in r.text, r.url
                assert "&lt;script&gt;" in r.text or "&lt;script" in r.text, r.url
            assert "Freemium" in pages[0].text and "Tool" in pages[0].text
    finally:
        gw.stop()


class ManyEvidence:
    """An upstream whose model has more evidence rows than a page shows (the real service
    caps its rows today; the page must not depend on that)."""

    async def get_model(self, model: str, explain: bool) -> pb.GetModelResponse:
        rows = [pb.Evidence(dimension="match_graph", kind="co_match", detail=f"row {i}", value=i, source="events")
                for i in range(120)]
        return pb.GetModelResponse(model=pb.ModelRecord(id="big", name="Big", type=pb.MODEL_TYPE_MODEL),
                                   evidence=rows, snapshot_version=7)

    async def rank(self, capability: str, limit: int, offset: int) -> pb.RankResponse:
        return pb.RankResponse(models=[pb.RankedModel(position=1, id="big", name="Big")], total=1)

    async def close(self) -> None:
        return None


def test_model_page_shows_at_most_50_evidence_rows_per_dimension():
    from fastapi.testclient import TestClient

    from services.gateway.app import create_app

    with TestClient(create_app(Settings(port=0, metrics_port=-1), lambda _s: ManyEvidence())) as c:
        page = c.get("/models/big")
    assert page.status_code == 200
    assert "Showing 50 of 120 rows" in page.text
    assert "<td>row 49</td>" in page.text and "<td>row 50</td>" not in page.text
    assert page.headers["etag"].startswith('"7-')
