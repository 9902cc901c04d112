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
