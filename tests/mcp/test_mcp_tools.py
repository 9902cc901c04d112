"""The MCP server through the official client (``ClientSession``), the same tests over stdio (a child process
of ``unfragile serve mcp --stdio``) and streamable HTTP (the gateway's ``/mcp``), both calling a real
MatchGraph: list the tools and resource templates, call each tool, read each resource, and the error paths.

Answers must be the gateway's JSON for the same MatchGraph answer (the shaping functions are shared), so
where a number could move between two reads (a rank refresh) the tests compare at equal snapshot versions."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from mcp import MCPError

from services.gateway.matching import resolved_models
from services.gateway.passport import passport_from_pb
from services.gateway.schemas import Comparison, SearchResults
from tests.catalogue_records import CAPTIONER, ENCODER, PAINTER
from tests.mcp.sessions import Session, serve
from unfragile.matchgraph.v1 import matchgraph_pb2 as pb

TOOLS = {"search", "compare", "trust_passport", "resolve_capability", "feedback"}
KOSMOS, SD = "kosmos-2-patch14-224", "stable-diffusion"


@dataclass
class Client:
    session: Session
    base_url: str  # where the server's answers link

    def call(self, tool: str, arguments: dict[str, Any]) -> Any:
        return self.session.run(lambda s: s.call_tool(tool, arguments))

    def ok(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """A successful call's structured content (checked equal to its JSON text)."""
        result = self.call(tool, arguments)
        assert not result.is_error, result.content[0].text
        assert json.loads(result.content[0].text) == result.structured_content
        return dict(result.structured_content)


@pytest.fixture(scope="module", params=["stdio", "http"])
def client(request: pytest.FixtureRequest, matchgraph: Any, tmp_path_factory: pytest.TempPathFactory,
           ) -> Iterator[Client]:
    session, base_url, stop = serve(request.param, matchgraph.address, tmp_path_factory.mktemp(request.param))
    yield Client(session, base_url)
    stop()


def test_lists_tools_with_input_and_output_schemas(client: Client) -> None:
    assert client.session.init.server_info.name == "unfragile"
    assert "feedback" in client.session.init.instructions
    tools = {t.name: t for t in client.session.run(lambda s: s.list_tools()).tools}
    assert set(tools) == TOOLS
    for t in tools.values():
        assert len(t.description or "") > 100 and t.title
        assert t.input_schema["type"] == "object" and t.output_schema and t.output_schema["type"] == "object"
    search = tools["search"].input_schema
    assert search["required"] == ["query"]
    assert (search["properties"]["limit"]["minimum"], search["properties"]["limit"]["maximum"]) == (1, 20)
    assert "matchRecordId" in tools["search"].output_schema["properties"]
    feedback = tools["feedback"].input_schema
    assert set(feedback["required"]) == {"matchRecordId", "outcome"}
    assert feedback["properties"]["outcome"]["enum"] == ["success", "failure"]
    assert "@version" in json.dumps(tools["trust_passport"].output_schema)
    assert tools["trust_passport"].annotations.read_only_hint is True
    assert tools["feedback"].annotations.read_only_hint is False


def test_search_answers_ranked_hits_with_intent_sources_and_a_match_record(client: Client, stub: Any) -> None:
    out = client.ok("search", {"query": "caption an image", "limit": 3})
    assert out["intent"]["id"] == "caption"
    hits = out["hits"]
    assert 1 <= len(hits) <= 3 and hits[0]["model_id"] == CAPTIONER
    assert all(0 <= h["match_score"] <= 1 for h in hits)
    assert [h["match_score"] for h in hits] == sorted((h["match_score"] for h in hits), reverse=True)
    assert hits[0]["passport_url"] == f"{client.base_url}/api/v1/passport/test-org--captioner-a"
    assert hits[0]["url"] == f"{client.base_url}/models/{CAPTIONER}"
    direct = SearchResults.from_pb("caption an image", stub.Search(pb.SearchRequest(query="caption an image",
                                                                                   limit=3)))
    assert [h["model_id"] for h in hits] == [h.model_id for h in direct.hits]
    record = stub.GetMatch(pb.GetMatchRequest(match_id=out["matchRecordId"])).match
    assert (record.query, list(record.matched)) == ("caption an image", [h["model_id"] for h in hits])
    assert out["match_record_error"] is None


def test_type_filter_narrows_the_hits(client: Client) -> None:
    hits = client.ok("search", {"query": "embed images and text", "type": "tool"})["hits"]
    assert hits and {h["type"] for h in hits} == {"tool"}


def test_compare_answers_verdict_dimensions_intervals_and_fragility(client: Client, stub: Any) -> None:
    out = client.ok("compare", {"a": KOSMOS, "b": SD})
    direct = Comparison.from_pb(stub.Compare(pb.CompareRequest(a=KOSMOS, b=SD))).model_dump(mode="json")
    assert out["verdict"] and all(isinstance(s, str) and s for s in out["verdict"])
    assert {d["dimension"] for d in out["dimensions"]} >= {"rank", "adoption", "quality"}
    for d in out["dimensions"]:
        assert isinstance(d["fragile"], bool) and isinstance(d["records_to_flip"], int)
        if d["diff"] is not None:
            assert d["diff_low"] <= d["diff"] <= d["diff_high"]
    dims = {d["dimension"]: d for d in out["dimensions"]}
    assert set(dims) == {"rank", "adoption", "quality", "ecosystem", "match_graph", "freshness"}
    assert dims["adoption"]["outcome"] == "b_leads" and dims["adoption"]["diff"] < 0  # measured for both
    # a captioner and a generator share no task: quality not comparable, with why, and no numbers
    quality = dims["quality"]
    assert quality["outcome"] == "not_comparable" and not quality["comparable"] and "image-to-text" in quality["note"]
    assert quality["diff"] is None and quality["a"]["value"] is None and quality["b"]["value"] is None
    ecosystem = dims["ecosystem"]
    assert ecosystem["outcome"] == "not_measured" and ecosystem["a"]["measured"] is False
    assert ecosystem["a"]["value"] is None and ecosystem["a"]["not_measured_reason"]
    assert "adoption" in out["b_scores"]["rests_on"] and "quality" not in out["b_scores"]["rests_on"]
    assert any("Quality is not comparable" in s for s in out["verdict"])
    assert not any("leads on quality" in s or "leads on ecosystem" in s for s in out["verdict"])
    sources = {r["label"]: r for r in out["sources"]}
    assert any(c["source"] == f"https://example.org/test-readings/{SD}" and c["observed_at"] == "2026-11-30"
               for r in sources.values() for c in r["b"])
    assert out["links"]["page"] == f"{client.base_url}/compare/{KOSMOS}-vs-{SD}"
    if out["snapshot_version"] == direct["snapshot_version"]:
        assert {k: v for k, v in out.items() if k != "links"} == {k: v for k, v in direct.items() if k != "links"}


def test_trust_passport_is_the_gateway_passport(client: Client, stub: Any) -> None:
    out = client.ok("trust_passport", {"model": "test-org--painter-c"})
    body = out["passport"]["unfragile"]
    assert body["@version"] == "1.0" and body["artifact"]["id"] == PAINTER
    assert body["artifact"]["pricing"] == {"model": "usage", "free": False, "starting_price": 9.0}
    observed = body["trust"]["observed_outcomes"]
    assert observed["success_rate"] is None and observed["success_rate_reason"]  # not measured, never 0
    direct = passport_from_pb(stub.GetPassport(pb.GetPassportRequest(model="test-org--painter-c")),
                              client.base_url).model_dump(mode="json", by_alias=True)
    if direct["passport"]["unfragile"]["version"] == body["version"]:
        assert out == direct
    # no reading on any dimension: no score (null with why), every dimension block says why
    trust = client.ok("trust_passport", {"model": "test-org--listener-e"})["passport"]["unfragile"]["trust"]
    assert trust["score"] is None and trust["score_interval"] is None and trust["rests_on"] == []
    assert trust["score_reason"] == "no dimension is measured for it"
    assert set(trust["dimensions"]) == {"adoption", "quality", "ecosystem", "match_graph", "freshness"}
    assert all(trust["dimensions"][d]["score"] is None and trust["dimensions"][d]["score_reason"]
               for d in ("adoption", "quality", "ecosystem", "freshness"))
    assert trust["dimensions"]["match_graph"]["note"].startswith("prior only")  # shown, not in the score


def test_trust_passport_of_a_measured_model_names_what_its_score_rests_on(client: Client) -> None:
    trust = client.ok("trust_passport", {"model": SD})["passport"]["unfragile"]["trust"]
    low, high = trust["score_interval"]
    assert low <= trust["score"] <= high and {"adoption", "freshness"} <= set(trust["rests_on"])
    dims = trust["dimensions"]
    assert dims["adoption"]["score"] == 1.0 and dims["adoption"]["weight"] > 0  # the most downloads of its type
    assert dims["quality"]["score"] is None and dims["quality"]["weight"] is None and dims["quality"]["score_reason"]
    # the weights used are those of rests_on, renormalised
    assert sum(dims[d]["weight"] for d in trust["rests_on"]) == pytest.approx(1.0)


def test_resolve_capability_answers_capabilities_and_their_models(client: Client, stub: Any) -> None:
    out = client.ok("resolve_capability", {"intent": "I want to make pictures from words", "limit": 2})
    first = out["capabilities"][0]
    assert first["intent"] == "generate" and first["uri"].startswith("capability://image.generation")
    assert 1 <= len(first["artifacts"]) <= 2
    assert {a["id"] for a in first["artifacts"]} <= {PAINTER, SD}
    for a in first["artifacts"]:  # a rank with its interval, or null with why (Painter C has no reading)
        if a["rank"] is None:
            assert a["id"] == PAINTER and a["rank_interval"] is None and a["rank_reason"]
        else:
            assert a["rank_interval"][0] <= a["rank"] <= a["rank_interval"][1] and a["rank_reason"] is None
    record = stub.GetMatch(pb.GetMatchRequest(match_id=out["matchRecordId"])).match
    direct = stub.Resolve(pb.ResolveRequest(intent="I want to make pictures from words", limit=2))
    assert list(record.matched) == resolved_models(direct)


def test_feedback_records_one_outcome_per_match_record(client: Client, stub: Any) -> None:
    search = client.ok("search", {"query": "describe a photo", "limit": 2})
    record_id = search["matchRecordId"]
    stranger = client.call("feedback", {"matchRecordId": record_id, "outcome": "success", "artifact": ENCODER})
    assert stranger.is_error and "INVALID_ARGUMENT: artifact 'encoder-d'" in stranger.content[0].text
    out = client.ok("feedback", {"matchRecordId": record_id, "outcome": "success", "clickedThrough": True,
                                 "comment": "the caption was right"})
    assert out["recorded"] and not out["duplicate"]
    assert (out["outcome"], out["source"], out["clickedThrough"]) == ("success", "mcp", True)
    assert out["credited"] == [search["hits"][0]["model_id"]]
    stored = stub.GetMatch(pb.GetMatchRequest(match_id=record_id)).match
    assert stored.outcome == pb.MATCH_OUTCOME_SUCCESS
    assert client.ok("feedback", {"matchRecordId": record_id, "outcome": "success",
                                  "clickedThrough": True})["duplicate"]
    refused = client.call("feedback", {"matchRecordId": record_id, "outcome": "failure"})
    assert refused.is_error
    assert f"ALREADY_EXISTS: match record '{record_id}' already has the outcome 'success'" in refused.content[0].text


@pytest.mark.parametrize("tool,arguments,message", [
    ("trust_passport", {"model": "no-such-model"}, "NOT_FOUND: model 'no-such-model' is not in the match graph"),
    ("compare", {"a": KOSMOS, "b": "no-such-model"}, "'no-such-model' is not in the match graph"),
    ("feedback", {"matchRecordId": "match-unknown", "outcome": "success"},
     "NOT_FOUND: match record 'match-unknown' does not exist"),
    ("feedback", {"matchRecordId": "match-unknown", "outcome": "maybe"}, "Input should be 'success' or 'failure'"),
    ("search", {"query": "captions", "limit": 50}, "less than or equal to 20"),
    ("search", {"query": ""}, "at least 1 character"),
    ("no_such_tool", {}, "Unknown tool"),
])
def test_errors_are_tool_errors_with_the_services_message(client: Client, tool: str, arguments: dict[str, Any],
                                                          message: str) -> None:
    result = client.call(tool, arguments)
    assert result.is_error and message in result.content[0].text
    assert client.ok("trust_passport", {"model": CAPTIONER})  # the session goes on


def test_resources_are_model_pages(client: Client) -> None:
    templates = {t.uri_template: t for t in client.session.run(lambda s: s.list_resource_templates())
                 .resource_templates}
    assert {u: t.mime_type for u, t in templates.items()} == {
        "unfragile://model/{slug}": "application/json", "unfragile://model/{slug}/page": "text/markdown",
        "unfragile://compare/{a}/{b}": "text/markdown"}

    def read(uri: str) -> Any:
        return client.session.run(lambda s: s.read_resource(uri)).contents[0]

    passport = read("unfragile://model/test-org--painter-c")
    assert passport.mime_type == "application/json"
    body = json.loads(passport.text)["passport"]["unfragile"]
    assert body["artifact"]["slug"] == "test-org--painter-c"
    page = read("unfragile://model/test-org--painter-c/page").text
    assert page.startswith("# Painter C\n") and "success rate: not measured (" in page
    assert f"({client.base_url}/models/{PAINTER})" in page and "## Capabilities" in page and "Upscaling" in page
    unread = read("unfragile://model/test-org--listener-e/page").text
    assert "- Trust score (UnfragileRank / 100): not measured (no dimension is measured for it)" in unread
    assert "- Adoption: not measured (no adoption reading recorded)" in unread
    assert "- Match graph: 0.50 (95% " in unread and "not in the score); prior only" in unread
    sd_page = read(f"unfragile://model/{SD}/page").text
    assert "resting on adoption" in sd_page and "- Quality: not measured (" in sd_page
    assert "- Adoption: 1.00 (95% " in sd_page and "in the score)" in sd_page
    comparison = read(f"unfragile://compare/{KOSMOS}/{SD}").text
    assert comparison.startswith(f"# {KOSMOS} vs Stable Diffusion") and "## Evidence" in comparison
    assert f"https://example.org/test-readings/{SD}" in comparison  # readings link their source
    with pytest.raises(MCPError) as err:
        read("unfragile://model/no-such-model")
    assert err.value.error.code == -32602 and "'no-such-model' is not in the match graph" in err.value.error.message
