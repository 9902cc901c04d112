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


def test_resolve_capability_answers_capabilities_and_their_models(client: Client, stub: Any) -> None:
    out = client.ok("resolve_capability", {"intent": "I want to make pictures from words", "limit": 2})
    first = out["capabilities"][0]
    assert first["intent"] == "generate" and first["uri"].startswith("capability://image.generation")
    assert 1 <= len(first["artifacts"]) <= 2
    assert {a["id"] for a in first["artifacts"]} <= {PAINTER, SD}
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
    comparison = read(f"unfragile://compare/{KOSMOS}/{SD}").text
    assert comparison.startswith(f"# {KOSMOS} vs Stable Diffusion") and "## Evidence" in comparison
    with pytest.raises(MCPError) as err:
        read("unfragile://model/no-such-model")
    assert err.value.error.code == -32602 and "'no-such-model' is not in the match graph" in err.value.error.message
