"""The real catalogue service's interfaces over HTTP (httpx) against the real gateway and a real MatchGraph on
port 0: search with intents and match records, feedback, resolve, passports and manifest validation, with their
error paths. Storage-backed flows run on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import httpx
import pytest

from services.gateway.server import start
from services.gateway.settings import Settings as GatewaySettings
from tests.catalogue_records import CAPTIONER, ENCODER, PAINTER, seed_test_catalogue
from tests.graphserver import seeded_matchgraph
from unfragile.matchgraph.v1 import matchgraph_pb2 as pb
from unfragile.matchgraph.v1 import matchgraph_pb2_grpc as pb_grpc

from .test_gw_scaleout import writer_and_reader  # noqa: F401 - the fixture: a writer and a reader on one file

Stack = tuple[httpx.Client, pb_grpc.MatchGraphStub, str]  # and the MatchGraph's address


@pytest.fixture()
def stack(graph_dbs: Any) -> Iterator[Stack]:
    """A MatchGraph on the test's backend with the test catalogue, and a gateway that records match records."""
    with seeded_matchgraph(graph_dbs.url(), seed_test_catalogue, bootstrap_rounds=20, graph_bootstrap_rounds=5) \
            as server, grpc.insecure_channel(server.address) as ch:
        gw = start(GatewaySettings(port=0, metrics_port=-1, matchgraph_target=server.address, log_level="WARNING"))
        with httpx.Client(base_url=gw.url, timeout=30) as http:
            yield http, pb_grpc.MatchGraphStub(ch), server.address
        gw.stop()


def _problem(r: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    for w in words:
        assert w in body["detail"], body
    return body


def test_search_classifies_the_intent_scores_hits_and_creates_a_match_record(stack: Stack):
    http, stub, _address = stack
    r = http.get("/api/v1/search", params={"q": "caption an image", "limit": 3})
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    assert body["intent"]["id"] == "caption" and body["intent"]["cues"] == ["caption"]
    hits = body["hits"]
    assert hits[0]["model_id"] == CAPTIONER and hits[0]["slug"] == "test-org--captioner-a"
    assert hits[0]["capability"] == "Image captioning" and hits[0]["intent"] == "caption"
    assert hits[0]["capability_uri"] == "capability://image.understanding.caption.image.captioning"
    assert hits[0]["passport_url"] == "/api/v1/passport/test-org--captioner-a"
    scores = [h["match_score"] for h in hits]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    # the match record holds the query and exactly the models answered, in order
    record = stub.GetMatch(pb.GetMatchRequest(match_id=body["matchRecordId"]))
    assert record.match.query == "caption an image"
    assert list(record.match.matched) == [h["model_id"] for h in hits]
    assert record.match.outcome == pb.MATCH_OUTCOME_UNSPECIFIED and not record.HasField("feedback")
    # type filter; stop words alone match nothing (and create no record)
    tools = http.get("/api/v1/search", params={"q": "embeddings for retrieval", "type": "tool"}).json()
    assert [h["model_id"] for h in tools["hits"]] == [ENCODER] and tools["hits"][0]["type"] == "tool"
    empty = http.get("/api/v1/search", params={"q": "the of a to"}).json()
    assert empty["hits"] == [] and empty["intent"] is None and empty["matchRecordId"] is None


@pytest.mark.parametrize("db_backend", ["sqlite"])
@pytest.mark.parametrize(("params", "where"), [
    ({"q": "cat", "limit": 21}, "query.limit"), ({"q": "cat", "limit": 0}, "query.limit"),
    ({"q": "cat", "type": "dataset"}, "query.type"), ({"q": ""}, "query.q"), ({}, "query.q"),
])
def test_search_parameters_out_of_range_are_422(stack: Stack, params: dict[str, Any], where: str):
    body = _problem(stack[0].get("/api/v1/search", params=params), 422, where)
    assert body["errors"][0]["location"] == where


def test_feedback_is_one_outcome_per_match_record_and_feeds_success_rates(stack: Stack):
    http, stub, _address = stack
    match_id = http.get("/api/v1/search", params={"q": "upscale an image"}).json()["matchRecordId"]
    before = http.get(f"/api/v1/models/{PAINTER}")
    assert before.json()["scores"]["feedback"]["measured"] is False
    first = {"matchRecordId": match_id, "outcome": "success", "clickedThrough": True, "source": "web",
             "comment": "good picture"}
    r = http.post("/api/feedback", json=first)
    assert r.status_code == 201, r.text
    # the outcome is a new snapshot: the model's old ETag no longer matches, and its success rate is measured
    after = http.get(f"/api/v1/models/{PAINTER}", headers={"If-None-Match": before.headers["etag"]})
    assert after.status_code == 200 and after.headers["etag"] != before.headers["etag"]
    assert after.headers["x-snapshot-version"] != before.headers["x-snapshot-version"]
    assert after.json()["scores"]["feedback"]["measured"] is True
    assert r.json() == {"recorded": True, "duplicate": False, "matchRecordId": match_id, "outcome": "success",
                        "credited": [PAINTER], "clickedThrough": True, "source": "web",
                        "query": "upscale an image"}
    again = http.post("/api/feedback", json=first)
    assert again.status_code == 200 and again.json()["duplicate"] is True
    _problem(http.post("/api/feedback", json={**first, "outcome": "failure"}), 409, "already has the outcome "
             "'success'")
    _problem(http.post("/api/feedback", json={**first, "matchRecordId": "match-nope"}), 404,
             "match record 'match-nope' does not exist")
    assert stub.GetMatch(pb.GetMatchRequest(match_id=match_id)).match.outcome == pb.MATCH_OUTCOME_SUCCESS
    # the credited model's success rate is measured (shrunk toward 0.5), the others' are not
    trust = http.get("/api/v1/passport/test-org--painter-c").json()["passport"]["unfragile"]["trust"]
    rate = trust["observed_outcomes"]
    assert rate["success_rate_detail"] == {"low": pytest.approx(rate["success_rate_detail"]["low"]),
                                           "high": pytest.approx(rate["success_rate_detail"]["high"]),
                                           "successes": 1, "trials": 1}
    assert 0.5 < rate["success_rate"] <= 0.5 + 1 / 21 + 1e-9  # one outcome moves it by at most 1/(1+20)
    other = http.get("/api/v1/passport/test-org--captioner-a").json()["passport"]["unfragile"]["trust"]
    assert other["observed_outcomes"]["success_rate"] is None
    assert other["observed_outcomes"]["success_rate_reason"]
    # naming the result the outcome is about: it must be one the search answered
    second = http.get("/api/v1/search", params={"q": "caption an image", "limit": 1}).json()
    assert [h["model_id"] for h in second["hits"]] == [CAPTIONER]
    _problem(http.post("/api/feedback", json={"matchRecordId": second["matchRecordId"], "outcome": "failure",
                                              "artifact": "Kosmos-2"}), 400, "was not among the results")
    ok = http.post("/api/feedback", json={"matchRecordId": second["matchRecordId"], "outcome": "failure",
                                          "artifact": "test-org--captioner-a"})
    assert ok.status_code == 201 and ok.json()["credited"] == [CAPTIONER]


@pytest.mark.parametrize("db_backend", ["sqlite"])
@pytest.mark.parametrize(("body", "where"), [
    ({"outcome": "success"}, "body.matchRecordId"), ({"matchRecordId": "m", "outcome": "maybe"}, "body.outcome"),
    ({"matchRecordId": "m"}, "body.outcome"), ({"matchRecordId": "", "outcome": "success"}, "body.matchRecordId"),
    ({"matchRecordId": "m", "outcome": "success", "comment": "x" * 2001}, "body.comment"),
    ({"matchRecordId": "m", "outcome": "success", "clickedThrough": "perhaps"}, "body.clickedThrough"),
])
def test_bad_feedback_bodies_are_422_naming_the_field(stack: Stack, body: dict[str, Any], where: str):
    problem = _problem(stack[0].post("/api/feedback", json=body), 422, where)
    assert problem["errors"][0]["location"] == where


@pytest.mark.parametrize("db_backend", ["sqlite"])
def test_feedback_source_must_be_a_short_word_and_the_body_json(stack: Stack):
    http, _stub, _address = stack
    match_id = http.get("/api/v1/search", params={"q": "caption an image"}).json()["matchRecordId"]
    _problem(http.post("/api/feedback", json={"matchRecordId": match_id, "outcome": "success",
                                              "source": "two words"}), 400, "source 'two words' must be a short word")
    _problem(http.post("/api/feedback", content=b"{not json", headers={"content-type": "application/json"}), 422)


@pytest.mark.parametrize("db_backend", ["sqlite"])
def test_passport_has_the_real_services_shape(stack: Stack):
    http, _stub, _address = stack
    r = http.get("/api/v1/passport/TEST-ORG--captioner-a")
    assert r.status_code == 200, r.text
    p = r.json()["passport"]["unfragile"]
    assert p["@version"] == "1.0" and p["version"].isdigit()
    art = p["artifact"]
    assert {k: art[k] for k in ("id", "slug", "name", "type", "url", "status", "verified", "tags")} == {
        "id": CAPTIONER, "slug": "test-org--captioner-a", "name": "Captioner A", "type": "model",
        "url": "https://example.org/captioner-a", "status": "active", "verified": False, "tags": ["license:mit"]}
    assert art["pricing"] == {"model": "open_source", "free": True, "starting_price": None}
    assert art["page_url"].endswith(f"/models/{CAPTIONER}") and art["page_url"].startswith("http")
    assert art["categories"] == ["image.understanding.caption", "image.understanding.question-answering"]
    cap = p["capabilities"][0]
    assert cap["id"] == f"{CAPTIONER}__cap_0" and cap["uri"].startswith("capability://image.understanding.caption")
    assert cap["intents"] == ["caption an image", "describe a photo"] and cap["limitations"] == ["one sentence only"]
    assert cap["input_types"] == ["image"] and cap["output_types"] == ["text"] and cap["best_for"] == ["tests"]
    assert 0 < cap["confidence"] <= 1 and cap["matches"] == 0
    assert cap["success_rate"] is None and cap["success_rate_reason"]  # not measured: null, never 0
    trust = p["trust"]
    assert trust["failure_modes"] == [{"mode": "misses small objects", "frequency": "occasional", "mitigation": None}]
    assert trust["observed_outcomes"]["avg_confidence"] is None and trust["observed_outcomes"]["avg_confidence_reason"]
    # no evidence on any dimension: the score is not measured (null with why), never 0
    assert trust["score"] is None and trust["score_interval"] is None and trust["rests_on"] == []
    assert trust["score_reason"] == "no dimension is measured for it"
    assert set(trust["dimensions"]) == {"adoption", "quality", "ecosystem", "match_graph", "freshness"}
    dims = trust["dimensions"]
    assert all(dims[d]["score"] is None and dims[d]["score_reason"] and dims[d]["weight"] is None
               for d in ("adoption", "quality", "ecosystem", "freshness"))
    # the match graph sits at its prior until a search matches it: shown as such, and not a rank of its own
    assert dims["match_graph"]["score"] == 0.5 and dims["match_graph"]["note"].startswith("prior only")
    assert p["_links"]["self"]["href"].endswith("/api/v1/passport/test-org--captioner-a")
    painter = http.get(f"/api/v1/passport/{PAINTER}").json()["passport"]["unfragile"]["artifact"]
    assert painter["pricing"] == {"model": "usage", "free": False, "starting_price": 9.0}
    # an ETag; the same bytes again are 304
    again = http.get("/api/v1/passport/test-org--captioner-a", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304
    _problem(http.get("/api/v1/passport/nobody--nothing"), 404, "'nobody--nothing' is not in the match graph")


@pytest.mark.parametrize("db_backend", ["sqlite"])
def test_passport_counts_matches_per_capability_by_intent(stack: Stack):
    http, _stub, _address = stack
    for q in ("caption an image", "describe this photo", "answer questions about an image"):
        assert http.get("/api/v1/search", params={"q": q}).json()["matchRecordId"]
    p = http.get("/api/v1/passport/test-org--captioner-a").json()["passport"]["unfragile"]
    assert [c["matches"] for c in p["capabilities"]] == [2, 1]
    out = p["trust"]["observed_outcomes"]
    assert out["matches"] == 3 and out["scanned"] == 3 and 0 < out["avg_confidence"] <= 1
    assert [(t["intent"], t["matches"]) for t in out["top_intents"]] == [("caption", 2), ("vqa", 1)]


@pytest.mark.parametrize("db_backend", ["sqlite"])
def test_resolve_gives_capabilities_and_their_models_best_first(stack: Stack):
    http, stub, _address = stack
    r = http.post("/api/v1/resolve", json={"intent": "I want to make pictures from words", "limit": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["intent"]["id"] == "generate"
    first = body["capabilities"][0]
    assert first["intent"] == "generate" and first["uri"] == "capability://image.generation.text-to-image"
    arts = first["artifacts"]
    assert len(arts) <= 2 and arts[0]["id"] == PAINTER and arts[0]["capability"] == "Text-to-image"
    assert [a["match_score"] for a in arts] == sorted((a["match_score"] for a in arts), reverse=True)
    record = stub.GetMatch(pb.GetMatchRequest(match_id=body["matchRecordId"])).match
    assert record.query == "I want to make pictures from words" and record.matched[0] == PAINTER
    for bad, where in (({"intent": ""}, "body.intent"), ({"intent": "x", "limit": 21}, "body.limit"),
                       ({"limit": 3}, "body.intent")):
        assert _problem(http.post("/api/v1/resolve", json=bad), 422)["errors"][0]["location"] == where


MANIFEST = """\
unfragile_version: "1.0"
artifact:
  name: Reader B
  slug: test-org--reader-b
  type: model
  repository: https://example.org/reader-b
  license: Apache-2.0
capabilities:
  - name: Document OCR
    description: >
      Reads printed text in scanned pages and photos with a line detector and a recogniser; returns the text of
      each line with its box.
    intents_served: ["read text in a receipt", "extract text from a screenshot"]
    conditions:
      bestFor: [printed documents]
      limitations: [no handwriting]
      inputTypes: [image]
      outputTypes: [text, boxes]
pricing:
  model: open-source
failure_modes:
  - mode: rotated pages come out garbled
    frequency: common
    mitigation: deskew first
execution:
  protocol: http
"""


@pytest.mark.parametrize("db_backend", ["sqlite"])
def test_validate_reports_every_problem_with_its_path(stack: Stack):
    http, _stub, _address = stack
    ok = http.post("/api/v1/validate", content=MANIFEST, headers={"content-type": "application/yaml"})
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert body["valid"] is True and body["errors"] == [] and body["updates"] is None
    assert body["artifact"]["id"] == "test-org--reader-b" and body["artifact"]["capabilities"] == ["Document OCR"]
    assert [w["path"] for w in body["warnings"]] == ["/capabilities"]  # fewer than 3 capabilities
    as_json = http.post("/api/v1/validate", json={"manifest": MANIFEST}).json()
    assert as_json["valid"] is True
    bad = MANIFEST.replace("type: model", "type: dataset").replace("inputTypes: [image]", "inputTypes: [Image]")
    bad = bad.replace("model: open-source", "model: cheap")
    found = http.post("/api/v1/validate", content=bad, headers={"content-type": "text/yaml"}).json()
    assert found["valid"] is False and found["artifact"] is None
    assert [(e["path"], e["code"]) for e in found["errors"]] == [
        ("/artifact/type", "enum"), ("/capabilities/0/conditions/inputTypes/0", "format"), ("/pricing/model", "enum")]
    broken = http.post("/api/v1/validate", content="a: [1, 2", headers={"content-type": "application/yaml"}).json()
    assert broken["errors"][0]["code"] == "syntax" and "line 1" in broken["errors"][0]["message"]
    _problem(http.post("/api/v1/validate", content="x", headers={"content-type": "text/html"}), 415)
    _problem(http.post("/api/v1/validate", content="a" * (256 * 1024 + 1), headers={"content-type": "text/yaml"}),
             413)
    _problem(http.post("/api/v1/validate", content="{", headers={"content-type": "application/json"}), 400,
             "not JSON")


def test_import_manifest_adds_then_updates_keeping_the_evidence(stack: Stack, tmp_path: Any):
    from typer.testing import CliRunner

    from services.cli import app

    http, stub, target = stack
    path = tmp_path / "unfragile.yml"
    path.write_text(MANIFEST)
    run: Callable[..., Any] = lambda *a: CliRunner().invoke(app, ["graph", "import", "manifest", *a,  # noqa: E731
                                                                 "--target", target])
    r = run(str(path))
    assert r.exit_code == 0, r.output
    assert "created test-org--reader-b" in r.output
    p = http.get("/api/v1/passport/test-org--reader-b").json()["passport"]["unfragile"]
    assert p["artifact"]["tags"] == ["license:apache-2.0"] and p["capabilities"][0]["name"] == "Document OCR"
    assert p["trust"]["failure_modes"][0]["mode"] == "rotated pages come out garbled"
    # an update keeps the catalogue's evidence (adoption signals) and the id
    rec = stub.GetModel(pb.GetModelRequest(model="test-org--reader-b")).model
    rec.adoption.add(kind="downloads", value=1234, source="https://example.org/stats", observed_at="2026-01-02")
    stub.UpsertModel(pb.UpsertModelRequest(model=rec))
    path.write_text(MANIFEST.replace("no handwriting", "no handwriting or vertical text"))
    r = run(str(path))
    assert r.exit_code == 0 and "updated test-org--reader-b" in r.output, r.output
    after = stub.GetModel(pb.GetModelRequest(model="test-org--reader-b")).model
    assert after.adoption[0].value == 1234 and after.capabilities[0].limitations == ["no handwriting or vertical text"]
    path.write_text(MANIFEST.replace("  name: Reader B\n", ""))
    r = run(str(path))
    assert r.exit_code == 1 and "error: /artifact/name: name is required [missing]" in r.output


def test_match_records_and_outcomes_go_to_the_writer_reads_to_a_reader(writer_and_reader):  # noqa: F811
    writer, reader, writer_stub = writer_and_reader
    gw = start(GatewaySettings(port=0, metrics_port=-1, matchgraph_target=reader.address,
                               matchgraph_writer_target=writer.address, log_level="WARNING"))
    try:
        with httpx.Client(base_url=gw.url, timeout=30) as http, grpc.insecure_channel(reader.address) as ch:
            body = http.get("/api/v1/search", params={"q": "inpainting"}).json()
            assert body["hits"][0]["model_id"] == "stable-diffusion" and body["matchRecordId"]
            assert writer_stub.GetMatch(pb.GetMatchRequest(match_id=body["matchRecordId"])).match.query == "inpainting"
            with pytest.raises(grpc.RpcError) as err:  # a reader refuses the write, naming the writer
                pb_grpc.MatchGraphStub(ch).RecordFeedback(pb.RecordFeedbackRequest(
                    match_id=body["matchRecordId"], outcome=pb.MATCH_OUTCOME_SUCCESS))
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "RecordFeedback" in err.value.details() and writer.address in err.value.details()
            r = http.post("/api/feedback", json={"matchRecordId": body["matchRecordId"], "outcome": "success"})
            assert r.status_code == 201, r.text
            out = http.get("/api/v1/passport/stable-diffusion").json()["passport"]["unfragile"]["trust"]
            assert out["observed_outcomes"]["success_rate_detail"]["trials"] == 1
    finally:
        gw.stop()
