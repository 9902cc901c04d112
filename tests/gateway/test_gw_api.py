"""JSON endpoints over a real gateway in front of a real MatchGraph: same numbers as gRPC,
status mapping, problem documents, ETag/304, CORS, metrics, canonical page addresses."""

from __future__ import annotations

import httpx
import pytest
from google.protobuf.json_format import MessageToDict

from unfragile.matchgraph.v1 import matchgraph_pb2 as pb

from .conftest import FRONTEND_ORIGIN, KOSMOS, SD


@pytest.fixture(scope="module")
def http(base_url: str):
    with httpx.Client(base_url=base_url, timeout=30, follow_redirects=False) as client:
        yield client


def _score(d: dict) -> tuple:
    return (d["value"], d["low"], d["high"], d["evidence_count"], d["measured"], d["not_measured_reason"])


def _pb_score(s: pb.Score) -> tuple:
    """As the JSON gives it: a score that is not measured has null numbers, never 0."""
    if not s.measured:
        return (None, None, None, s.evidence_count, False, s.not_measured_reason)
    return (s.value, s.low, s.high, s.evidence_count, True, "")


def test_compare_json_equals_grpc_compare(http, stub):
    want = stub.Compare(pb.CompareRequest(a=KOSMOS, b=SD))
    r = http.get("/api/v1/compare", params={"a": KOSMOS, "b": SD})
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["headline"] == want.headline
    assert got["verdict"] == list(want.verdict)
    assert got["markdown"] == want.markdown
    assert [(x["feature"], x["a"], x["b"]) for x in got["rows"]] == [(x.feature, x.a, x.b) for x in want.rows]
    assert len(got["dimensions"]) == len(want.dimensions) > 0
    for g, w in zip(got["dimensions"], want.dimensions):
        assert g["dimension"] == w.dimension
        assert _score(g["a"]) == _pb_score(w.a) and _score(g["b"]) == _pb_score(w.b)
        if w.outcome in (pb.OUTCOME_NOT_MEASURED, pb.OUTCOME_NOT_COMPARABLE):
            assert (g["diff"], g["diff_low"], g["diff_high"]) == (None, None, None) and g["note"] == w.note
        else:
            assert (g["diff"], g["diff_low"], g["diff_high"]) == (w.diff, w.diff_low, w.diff_high)
        assert g["records_to_flip"] == w.records_to_flip and g["fragile"] == w.fragile
        assert g["outcome"] == pb.Outcome.Name(w.outcome).removeprefix("OUTCOME_").lower()
    assert got["a"]["id"] == KOSMOS and got["b"]["id"] == SD
    assert len(got["a"]["capabilities"]) == len(want.a.capabilities)
    assert _score(got["a_scores"]["rank"]) == _pb_score(want.a_scores.rank)
    assert got["links"]["page"] == f"/compare/{KOSMOS}-vs-{SD}"


def test_compare_resolves_aliases_like_grpc(http, stub):
    r = http.get("/api/v1/compare", params={"a": "Kosmos-2", "b": "Stable Diffusion"})
    assert r.status_code == 200, r.text
    assert (r.json()["a"]["id"], r.json()["b"]["id"]) == (KOSMOS, SD)


def test_model_detail_with_evidence_equals_grpc(http, stub):
    want = stub.GetModel(pb.GetModelRequest(model=KOSMOS, explain=True))
    r = http.get(f"/api/v1/models/{KOSMOS}", params={"explain": "true"})
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["model"]["name"] == want.model.name
    assert got["model"]["pricing"]["tier"] == "free" and got["model"]["pricing"]["label"] == "Free"
    assert _score(got["scores"]["rank"]) == _pb_score(want.scores.rank)
    for dim in ("adoption", "ecosystem", "match_graph", "quality", "freshness"):
        assert _score(got["scores"][dim]) == _pb_score(getattr(want.scores, dim))
    assert got["scores"]["rests_on"] == list(want.scores.rests_on)
    assert got["scores"]["times_matched"] == want.scores.times_matched > 0
    assert len(got["evidence"]) == len(want.evidence) > 0
    assert [e["detail"] for e in got["evidence"]] == [e.detail for e in want.evidence]
    plain = http.get(f"/api/v1/models/{KOSMOS}").json()
    assert plain["evidence"] == []


def test_rank_equals_grpc_rank_and_pages(http, stub):
    want = stub.Rank(pb.RankRequest(limit=20))
    got = http.get("/api/v1/rank").json()
    assert [m["id"] for m in got["models"]] == [m.id for m in want.models]
    assert [m["position"] for m in got["models"]] == [m.position for m in want.models]
    assert got["total"] == want.total == 2
    second = http.get("/api/v1/rank", params={"limit": 1, "offset": 1}).json()
    assert [m["id"] for m in second["models"]] == [want.models[1].id]
    filtered = http.get("/api/v1/rank", params={"capability": "inpainting"}).json()
    want_f = stub.Rank(pb.RankRequest(capability="inpainting", limit=20))
    assert [m["id"] for m in filtered["models"]] == [m.id for m in want_f.models]


def test_search_equals_grpc_search(http, stub):
    want = stub.Search(pb.SearchRequest(query="image captioning", limit=5))
    r = http.get("/api/v1/search", params={"q": "image captioning", "limit": 5})
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["query"] == "image captioning"
    assert [(h["model_id"], h["capability"], h["score"], h["snippet"]) for h in got["hits"]] == \
        [(h.model_id, h.capability, h.score, h.snippet) for h in want.hits]
    assert got["hits"] and got["hits"][0]["url"] == f"/models/{got['hits'][0]['model_id']}"
    assert got["embeddings_used"] is want.embeddings_used
    assert got["degraded_reason"] == want.degraded_reason


@pytest.mark.parametrize("path,params,status,words", [
    ("/api/v1/models/no-such-model", {}, 404, "no-such-model"),
    ("/api/v1/compare", {"a": KOSMOS, "b": KOSMOS}, 400, ""),
    ("/api/v1/compare", {"a": KOSMOS, "b": "nothing-like-it"}, 404, "nothing-like-it"),
    ("/api/v1/compare", {"a": KOSMOS}, 422, "query.b"),
    ("/api/v1/search", {"q": ""}, 422, "query.q"),
    ("/api/v1/search", {"q": "x" * 513}, 422, "query.q"),
    ("/api/v1/search", {"q": "cat", "limit": 0}, 422, "query.limit"),
    ("/api/v1/search", {"q": "cat", "limit": "ten"}, 422, "query.limit"),
    ("/api/v1/search", {"q": "nul\x00byte"}, 422, "query.q"),
    ("/api/v1/rank", {"limit": 5000}, 422, "query.limit"),
    ("/api/v1/rank", {"offset": -1}, 422, "query.offset"),
    ("/api/v1/models/" + KOSMOS, {"explain": "maybe"}, 422, "query.explain"),
    ("/api/v1/nothing-here", {}, 404, "/api/v1/nothing-here"),
])
def test_errors_are_problem_documents_with_mapped_status(http, path, params, status, words):
    r = http.get(path, params=params)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == status and body["title"] and body["detail"]
    assert words in body["detail"]
    if status == 422:
        assert body["errors"] and body["errors"][0]["location"] == words
    if status in (400, 404) and path != "/api/v1/nothing-here":
        assert body["grpc_code"] == {400: "INVALID_ARGUMENT", 404: "NOT_FOUND"}[status]


def test_whitespace_query_is_a_400_from_the_service_not_a_500(http):
    r = http.get("/api/v1/search", params={"q": "   "})
    assert r.status_code == 400, r.text
    assert r.json()["grpc_code"] == "INVALID_ARGUMENT"


def test_etag_and_if_none_match(http, stub):
    url = f"/api/v1/compare?a={KOSMOS}&b={SD}"
    first = http.get(url)
    etag = first.headers["etag"]
    snapshot = stub.Compare(pb.CompareRequest(a=KOSMOS, b=SD)).snapshot_version
    assert snapshot > 0, "the MatchGraph reports its rank snapshot version"
    assert etag.startswith(f'"{snapshot}-') and first.headers["x-snapshot-version"] == str(snapshot)
    assert first.json()["snapshot_version"] == snapshot
    assert etag.startswith('"') and first.headers["cache-control"] == "no-cache"
    again = http.get(url, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    weak = http.get(url, headers={"If-None-Match": f'"nope", W/{etag}'})
    assert weak.status_code == 304
    other = http.get(url, headers={"If-None-Match": '"something-else"'})
    assert other.status_code == 200 and other.content == first.content
    # Same representation -> same tag; a different one -> a different tag.
    assert http.get(url).headers["etag"] == etag
    assert http.get(f"/api/v1/compare?a={SD}&b={KOSMOS}").headers["etag"] != etag


def test_pages_have_etags_too(http):
    r = http.get(f"/compare/{KOSMOS}-vs-{SD}")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert http.get(f"/compare/{KOSMOS}-vs-{SD}", headers={"If-None-Match": r.headers["etag"]}).status_code == 304


def test_cors_allows_the_configured_origin_only(http):
    ok = http.get("/api/v1/rank", headers={"Origin": FRONTEND_ORIGIN})
    assert ok.headers["access-control-allow-origin"] == FRONTEND_ORIGIN
    assert "etag" in ok.headers["access-control-expose-headers"].lower()
    pre = http.options("/api/v1/search", headers={"Origin": FRONTEND_ORIGIN, "Access-Control-Request-Method": "GET",
                                                   "Access-Control-Request-Headers": "If-None-Match"})
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == FRONTEND_ORIGIN
    evil = http.get("/api/v1/rank", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in evil.headers


def test_openapi_documents_every_json_endpoint(http):
    doc = http.get("/openapi.json").json()
    paths = doc["paths"]
    for p in ("/api/v1/rank", "/api/v1/compare", "/api/v1/models/{model}", "/api/v1/passport/{slug}"):
        assert "get" in paths[p]
        responses = paths[p]["get"]["responses"]
        assert {"200", "304", "400", "404", "422", "429", "503"} <= set(responses)
        assert "ETag" in responses["200"]["headers"]
        assert "application/problem+json" in responses["404"]["content"]
        assert any(prm["name"] == "If-None-Match" and prm["in"] == "header" for prm in paths[p]["get"]["parameters"])
        assert paths[p]["get"]["operationId"] in ("rank", "compare", "getModel", "passport")
    # a search creates a match record: answered afresh every time, never 304
    search = paths["/api/v1/search"]["get"]
    assert search["operationId"] == "search" and "304" not in search["responses"]
    assert {"400", "404", "422", "429", "503"} <= set(search["responses"])
    for p, op in (("/api/v1/resolve", "resolve"), ("/api/feedback", "feedback"), ("/api/v1/validate", "validate")):
        assert paths[p]["post"]["operationId"] == op
    assert "Problem" in doc["components"]["schemas"]
    assert not any(p.startswith("/compare") or p == "/" for p in paths), "pages stay out of the API document"


def test_metrics_endpoint_counts_requests_by_route_template(http):
    http.get(f"/api/v1/models/{KOSMOS}")
    text = http.get("/metrics").text
    assert 'unfragile_http_requests_total{method="GET",route="/api/v1/models/{model}",status="200"}' in text
    assert 'unfragile_gateway_upstream_requests_total{code="OK",rpc="GetModel"}' in text
    assert "unfragile_http_request_duration_seconds_bucket" in text


def test_health_and_readiness(http):
    assert http.get("/healthz").json()["status"] == "ok"
    assert http.get("/readyz").json()["status"] == "ready"


def test_compare_page_canonical_address_and_markdown(http, stub):
    r = http.get("/compare/kosmos2-vs-stable-diffusion")
    assert r.status_code == 308 and r.headers["location"] == f"/compare/{KOSMOS}-vs-{SD}"
    md = http.get(f"/compare/{KOSMOS}-vs-{SD}.md")
    assert md.status_code == 200 and md.headers["content-type"].startswith("text/markdown")
    assert md.text == stub.Compare(pb.CompareRequest(a=KOSMOS, b=SD)).markdown
    form = http.get("/compare", params={"a": KOSMOS, "b": SD})
    assert form.status_code == 303 and form.headers["location"] == f"/compare/{KOSMOS}-vs-{SD}"
    assert http.get("/models/kosmos2").headers["location"] == f"/models/{KOSMOS}"


@pytest.mark.parametrize("path,status", [
    ("/compare/no-separator-here", 400),
    ("/compare/a-vs-b", 404),
    ("/models/nope", 404),
    ("/search?q=" + "y" * 600, 422),
])
def test_page_errors_are_html_pages_with_status(http, path, status):
    r = http.get(path)
    assert r.status_code == status
    assert r.headers["content-type"].startswith("text/html")
    assert "<h1>" in r.text and 'role="alert"' in r.text and 'action="/search"' in r.text


def test_security_headers_on_pages(http):
    r = http.get("/")
    assert "script-src 'none'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"


def test_json_matches_proto_json_field_names(http, stub):
    """Field names follow the proto, so the .proto comments document the JSON too."""
    want = MessageToDict(stub.GetModel(pb.GetModelRequest(model=SD)), preserving_proto_field_name=True)
    got = http.get(f"/api/v1/models/{SD}").json()
    assert set(want["scores"]) - {"weights"} <= set(got["scores"])
    assert set(want["model"]) - {"pricing", "type"} <= set(got["model"])


def test_head_is_get_without_body_and_writes_are_405(http):
    head = http.head(f"/api/v1/models/{KOSMOS}")
    get = http.get(f"/api/v1/models/{KOSMOS}")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["etag"] == get.headers["etag"]
    assert head.headers["content-length"] == str(len(get.content))
    post = http.post("/api/v1/rank")
    assert post.status_code == 405 and "use GET" in post.json()["detail"]


def test_rank_page_pages_through_the_ranking(http, stub):
    first = http.get("/rank", params={"limit": 1})
    assert first.status_code == 200 and 'rel="next"' in first.text and 'rel="prev"' not in first.text
    assert "1–1 of 2" in first.text
    nxt = http.get("/rank", params={"limit": 1, "offset": 1})
    assert 'rel="prev"' in nxt.text and 'rel="next"' not in nxt.text
    second = stub.Rank(pb.RankRequest(limit=1, offset=1)).models[0]
    assert f'href="/models/{second.id}"' in nxt.text
