"""The record fields passports need (slug, url, tags, pipeline tag, failure modes, links; a capability's
intents, best_for, limitations, input/output types, requires; the pricing model) and the match records'
outcomes, stored on both backends, copied by migrate, and read back from rows written before they existed."""

from __future__ import annotations

import json
from dataclasses import replace

import grpc
import orjson
import pytest

from graph import catalogue_file
from graph.records import MatchEvent
from graph.seed_data import SEED_MODELS
from graph.store import FeedbackRow, open_store, record_from_json, record_to_json
from graph.store.migrate import migrate
from unfragile.matchgraph.v1 import matchgraph_pb2 as pb

FLORENCE = pb.ModelRecord(
    id="florence-2-large", name="Florence-2", type=pb.MODEL_TYPE_MODEL, slug="microsoft--Florence-2-large",
    url="https://huggingface.co/microsoft/Florence-2-large", pipeline_tag="image-text-to-text",
    tags=["transformers", "license:mit"],
    pricing=pb.Pricing(tier=pb.PRICING_TIER_FREE, model="open_source", starting_price=0.0),
    failure_modes=[pb.FailureMode(mode="long prompts truncated", frequency="occasional", mitigation="keep it short")],
    links=[pb.Link(rel="paper", url="https://arxiv.org/abs/2311.06242")],
    capabilities=[pb.Capability(
        title="Optical character recognition", description="Reads the text in an image with its regions.",
        intents=["read text in a receipt", "transcribe a scanned page"], best_for=["documents"],
        limitations=["no handwriting"], input_types=["image"], output_types=["text", "boxes"],
        requires=["a GPU for large images"])])


def test_new_fields_round_trip_and_the_slug_resolves_like_an_alias(make_server, upsert_seed):
    server = make_server()
    upsert_seed(server.stub)
    stored = server.stub.UpsertModel(pb.UpsertModelRequest(model=FLORENCE)).model
    assert stored == FLORENCE
    for name in ("microsoft--florence-2-large", "MICROSOFT--Florence-2-LARGE", "florence-2-large"):
        assert server.stub.GetModel(pb.GetModelRequest(model=name)).model == FLORENCE
    # words found only in the new fields are searchable: a declared intent, a tag
    hits = server.stub.Search(pb.SearchRequest(query="receipt transcribe")).hits
    assert [h.model_id for h in hits][:1] == ["florence-2-large"]
    assert hits[0].capability == "Optical character recognition"
    server.restart()  # read back from the store, not a cache
    assert server.stub.GetModel(pb.GetModelRequest(model="microsoft--florence-2-large")).model == FLORENCE
    # an unset starting price stays unset (not 0)
    plain = server.stub.GetModel(pb.GetModelRequest(model="kosmos-2-patch14-224")).model
    assert not plain.pricing.HasField("starting_price") and plain.pricing.model == ""
    assert plain.slug == "microsoft--kosmos-2-patch14-224" and not plain.failure_modes and not plain.links


@pytest.mark.parametrize("db_backend", ["sqlite"])
@pytest.mark.parametrize(("change", "says"), [
    (lambda m: setattr(m, "slug", "microsoft kosmos"), "slug 'microsoft kosmos' must be owner--name"),
    (lambda m: setattr(m, "url", "ftp://example.com/x"), "url 'ftp://example.com/x' must be an absolute http(s) URL"),
    (lambda m: setattr(m, "pipeline_tag", "Image To Text"), "pipeline_tag 'Image To Text' must be a lowercase word"),
    (lambda m: m.capabilities[0].input_types.append("Image"), "capabilities[0].input_types[1] 'Image' must be"),
    (lambda m: m.capabilities[0].intents.append(""), "capabilities[0].intents[2] is empty"),
    (lambda m: m.capabilities[0].limitations.append("no handwriting"), "capabilities[0].limitations lists an item"),
    (lambda m: setattr(m.pricing, "model", "gratis"), "pricing.model 'gratis' must be one of open_source"),
    (lambda m: setattr(m.pricing, "starting_price", -1.0), "pricing.starting_price must be a finite number >= 0"),
    (lambda m: m.failure_modes.add(mode=""), "failure_modes[1].mode is empty"),
    (lambda m: m.links.add(rel="Paper", url="https://x.org"), "links[1].rel 'Paper' must be a lowercase word"),
])
def test_bad_new_fields_are_invalid_argument_naming_the_field(make_server, change, says):
    server = make_server()
    bad = pb.ModelRecord()
    bad.CopyFrom(FLORENCE)
    change(bad)
    with pytest.raises(grpc.RpcError) as err:
        server.stub.UpsertModel(pb.UpsertModelRequest(model=bad))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert says in err.value.details()


@pytest.mark.parametrize("db_backend", ["sqlite"])
def test_a_slug_owned_by_another_model_is_refused(make_server, upsert_seed):
    server = make_server()
    upsert_seed(server.stub)
    taken = pb.ModelRecord()
    taken.CopyFrom(FLORENCE)
    taken.slug = "Kosmos-2"  # an alias of kosmos-2-patch14-224
    with pytest.raises(grpc.RpcError) as err:
        server.stub.UpsertModel(pb.UpsertModelRequest(model=taken))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'kosmos-2' already belongs to model 'kosmos-2-patch14-224'" in err.value.details()


def test_records_stored_before_the_new_fields_read_with_their_defaults():
    new_fields = ("tasks", "facts", "hub_id", "organization", "slug", "url", "pipeline_tag", "tags", "failure_modes",
                  "links")
    plain = replace(SEED_MODELS[0], **{k: type(getattr(SEED_MODELS[0], k))() for k in new_fields},
                    capabilities=tuple(replace(c, intents=(), best_for=(), limitations=(), input_types=(),
                                               output_types=(), requires=()) for c in SEED_MODELS[0].capabilities))
    old = json.loads(orjson.dumps(plain))  # rows of that time held the whole record, readings and results too
    for key in new_fields:
        del old[key]
    del old["pricing"]["model"], old["pricing"]["starting_price"]
    for c in old["capabilities"]:
        for key in ("intents", "best_for", "limitations", "input_types", "output_types", "requires"):
            del c[key]
    for s in old["adoption"] + old["ecosystem"]:
        del s["says"], s["window"]
    assert record_from_json(json.dumps(old)) == plain


def test_readings_and_published_results_are_stored_once_and_read_back(graph_dbs):
    """A record's readings live in observations and its published results in external_quality, not also in its
    row's JSON; the store reads them back (the newest reading of each kind and source)."""
    blip = next(r for r in catalogue_file.load() if r.id.startswith("blip") and r.external_quality)
    assert blip.adoption and blip.facts
    stored = json.loads(record_to_json(blip))
    assert not {"adoption", "ecosystem", "facts", "external_quality"} & set(stored)
    store = open_store(graph_dbs.url())
    try:
        store.upsert_models([blip])
        assert store.get_model(blip.id) == blip
        assert [r for r in store.capability_records() if r.id == blip.id] == [blip]
        newer = replace(blip, adoption=(replace(blip.adoption[0], value=1.0, observed_at="2099-01-01"),),
                        external_quality=blip.external_quality[:1])
        store.upsert_models([newer])
        again = store.get_model(blip.id)
        assert again is not None and again.external_quality == blip.external_quality[:1]
        assert newer.adoption[0] in again.adoption and len(again.adoption) == len(blip.adoption)  # one per source
    finally:
        store.close()


def _events() -> list[MatchEvent]:
    k, sd = (m.id for m in SEED_MODELS)
    return [MatchEvent("m1", "caption an image", (k, sd)), MatchEvent("m2", "draw a cat", (sd, k), clicked=(sd,)),
            MatchEvent("m3", "caption a photo", (k,))]


def _fb(event_id: str, outcome: str, credited: tuple[str, ...], comment: str = "") -> FeedbackRow:
    return FeedbackRow(event_id, outcome, True, "web", comment, credited, 1_700_000_000_000)


def test_feedback_rows_one_per_match_record_in_one_transaction(graph_dbs):
    store = open_store(graph_dbs.url())
    try:
        for m in SEED_MODELS:
            store.upsert_model(m)
        store.record_events(_events())
        k, sd = (m.id for m in SEED_MODELS)
        assert store.record_feedback(_fb("m1", "success", (k,))) == (_fb("m1", "success", (k,)), True)
        assert store.record_feedback(_fb("m2", "failure", (sd,))) == (_fb("m2", "failure", (sd,)), True)
        # a second outcome on a record changes nothing and returns the first
        assert store.record_feedback(_fb("m1", "failure", (sd,), "again")) == (_fb("m1", "success", (k,)), False)
        assert store.record_feedback(_fb("nope", "success", (k,))) is None  # no such record: nothing written
        assert store.match_record("nope") is None
        event, fb = store.match_record("m2")  # type: ignore[misc]
        assert event == MatchEvent("m2", "draw a cat", (sd, k), (), (sd,), event.timestamp_ms)
        assert fb == _fb("m2", "failure", (sd,))
        assert store.match_record("m3") == (MatchEvent("m3", "caption a photo", (k,), (), (),
                                                       store.match_record("m3")[0].timestamp_ms), None)  # type: ignore[index]
        assert store.feedback_counts() == {k: (1, 1), sd: (0, 1)}
        assert store.outcomes_with(k) == [("m3", "caption a photo", "", ""), ("m2", "draw a cat", "failure", sd),
                                          ("m1", "caption an image", "success", k)]
        assert [r.id for r in store.capability_records()] == [m.id for m in SEED_MODELS]
    finally:
        store.close()


@pytest.mark.parametrize("db_backend", ["sqlite"])
def test_migrate_copies_outcomes_and_the_new_fields(graph_dbs, pg_server):
    src = open_store(graph_dbs.url("src.db"))
    dst = open_store(pg_server.create_database("fields_copy"))
    try:
        for m in SEED_MODELS:
            src.upsert_model(m)
        from services.matchgraph.types import record_from_pb

        florence = record_from_pb(FLORENCE)
        src.upsert_model(florence)
        src.record_events(_events())
        src.record_feedback(_fb("m1", "success", (SEED_MODELS[0].id,), "worked"))
        report = migrate(src, dst)
        assert report.rows["feedback"] == 1
        assert dst.get_model("florence-2-large") == florence
        assert dst.aliases()["microsoft--florence-2-large"] == "florence-2-large"
        assert dst.match_record("m1") == src.match_record("m1")
        assert dst.feedback_counts() == src.feedback_counts()
    finally:
        src.close()
        dst.close()
