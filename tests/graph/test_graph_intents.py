"""Intents: the classifier, stop words, and the RPCs built on it (Search, Resolve, GetPassport) with the match
records' outcomes (RecordFeedback, GetMatch) and manifests (ValidateManifest, ImportManifest), over gRPC."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graph.intents import CUES, capability_intents, capability_uri, clarity, classify
from graph.store import STOP_WORDS
from tests.catalogue_records import CAPTIONER, ENCODER, PAINTER, seed_test_catalogue
from unfragile.matchgraph.v1 import matchgraph_pb2 as pb


@pytest.mark.parametrize(("text", "intent"), [
    ("caption an image", "caption"), ("image to text", "caption"), ("describe this photo", "caption"),
    ("generate an image from text", "generate"), ("text-to-image", "generate"), ("draw a cat", "generate"),
    ("make pictures from words", "generate"), ("ground a phrase", "ground"), ("bounding boxes for objects", "ground"),
    ("answer questions about an image", "vqa"), ("read text in a receipt", "ocr"), ("OCR for scans", "ocr"),
    ("image embeddings for retrieval", "embed"), ("remove an object from a photo", "inpaint"),
    ("inpainting", "inpaint"), ("upscale my photo to 4k", "upscale"), ("super-resolution", "upscale"),
    ("style transfer", "img2img"), ("edit a photo by instruction", "edit"), ("segment the image", "segment"),
    ("ControlNet pose guidance", "control"),
])
def test_the_classifier_names_the_intent(text: str, intent: str):
    found = classify(text)
    assert found and found[0].id == intent, found
    assert 0 < found[0].confidence <= 1 and abs(sum(i.share for i in found) - 1) < 1e-9


def test_texts_without_an_intent_and_stop_words_alone_classify_as_nothing():
    assert classify("the a of to in is") == [] and classify("kosmos") == [] and clarity([]) == 0.0
    assert classify("where is it") == []  # cues made only of stop words never count


def test_every_cue_needs_a_word_that_is_not_a_stop_word():
    assert all(w > 0 for cues in CUES.values() for _p, w in cues)
    everything = " ".join(sorted(STOP_WORDS))
    assert classify(everything) == [] and classify(everything.upper()) == []
    # the phrase cues that contain stop words still need their content words
    assert classify("to an") == [] and [i.id for i in classify("text to an image")] == ["generate"]


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.sampled_from(["caption an image", "generate a picture from text", "read text in a receipt",
                        "upscale my photo", "answer questions about an image", "image embeddings"]),
       st.lists(st.sampled_from(sorted(STOP_WORDS)), max_size=4), st.lists(st.sampled_from(sorted(STOP_WORDS)),
                                                                           max_size=4))
def test_stop_words_around_a_query_never_change_its_intents(query: str, before: list[str], after: list[str]):
    padded = " ".join([*before, query, *after])
    assert [(i.id, round(i.share, 9)) for i in classify(padded)] == [(i.id, round(i.share, 9)) for i in classify(query)]


def test_capabilities_are_classified_by_their_declared_intents_else_their_title():
    c = capability_intents("Streaming caption generation", ("caption an image",))
    assert c.main == "caption" and list(c.strength) == ["caption"]
    assert capability_intents("Streaming caption generation", ()).strength.keys() == {"caption", "generate"}
    assert capability_uri("caption", "Grounded image captioning") == \
        "capability://image.understanding.caption.grounded.image.captioning"
    assert capability_uri("", "Odd thing") == "capability://uncategorised.odd.thing"


def test_search_matches_intents_without_shared_words_and_ignores_stop_words(make_server):
    server = make_server()
    seed_test_catalogue(server.stub)

    def ids(q: str, **kw: object) -> list[str]:
        return [h.model_id for h in server.stub.Search(pb.SearchRequest(query=q, **kw)).hits]  # type: ignore[arg-type]

    assert ids("make pictures from words")[0] in (PAINTER, "stable-diffusion")  # no word of the query in their text
    assert ids("caption an image")[0] == CAPTIONER
    assert ids("the a of") == []
    for q in ("caption an image", "upscale my photo", "embeddings for retrieval"):
        assert ids(f"the {q} of the") == ids(q)
    assert ids("embeddings for retrieval", type="tool") == [ENCODER]
    r = server.stub.Search(pb.SearchRequest(query="upscale my photo"))
    assert r.intent.id == "upscale" and r.intent.uri == "capability://image.generation.upscale"
    assert r.hits[0].model_id == PAINTER and r.hits[0].capability == "Upscaling"
    assert r.hits[0].slug == "test-org--painter-c" and r.hits[0].model_type == "model"


@pytest.mark.parametrize("db_backend", ["sqlite"])
def test_new_rpcs_refuse_bad_input_with_actionable_messages(make_server):
    server = make_server()
    seed_test_catalogue(server.stub)
    s = server.stub
    cases = [
        (lambda: s.GetPassport(pb.GetPassportRequest(model="")), grpc.StatusCode.INVALID_ARGUMENT, "model is empty"),
        (lambda: s.GetPassport(pb.GetPassportRequest(model="nope--nothing")), grpc.StatusCode.NOT_FOUND,
         "'nope--nothing' is not in the match graph"),
        (lambda: s.Resolve(pb.ResolveRequest(intent=" ")), grpc.StatusCode.INVALID_ARGUMENT, "intent is empty"),
        (lambda: s.Resolve(pb.ResolveRequest(intent="x", limit=21)), grpc.StatusCode.INVALID_ARGUMENT, "over 20"),
        (lambda: s.GetMatch(pb.GetMatchRequest(match_id="nope")), grpc.StatusCode.NOT_FOUND,
         "match record 'nope' does not exist"),
        (lambda: s.RecordFeedback(pb.RecordFeedbackRequest(match_id="nope")), grpc.StatusCode.INVALID_ARGUMENT,
         "outcome is unspecified"),
        (lambda: s.RecordFeedback(pb.RecordFeedbackRequest(match_id="nope", outcome=pb.MATCH_OUTCOME_FAILURE)),
         grpc.StatusCode.NOT_FOUND, "match record 'nope' does not exist"),
        (lambda: s.RecordMatches(iter([pb.RecordMatchesRequest(events=[pb.MatchEvent(
            event_id="e", query="q", matched=[CAPTIONER], outcome=pb.MATCH_OUTCOME_SUCCESS)])])),
         grpc.StatusCode.INVALID_ARGUMENT, "send the outcome with RecordFeedback"),
        (lambda: s.ImportManifest(pb.ValidateManifestRequest(text="unfragile_version: '1.0'")),
         grpc.StatusCode.INVALID_ARGUMENT, "/artifact: artifact is required"),
        (lambda: s.ValidateManifest(pb.ValidateManifestRequest(text="a" * (256 * 1024 + 1))),
         grpc.StatusCode.INVALID_ARGUMENT, "over 256 KiB"),
    ]
    for call, code, words in cases:
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == code and words in err.value.details(), err.value.details()
    with pytest.raises(grpc.RpcError) as err:  # the refused event was not stored
        s.GetMatch(pb.GetMatchRequest(match_id="e"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_resolve_and_passport_over_grpc(make_server):
    server = make_server()
    seed_test_catalogue(server.stub)
    s = server.stub
    r = s.Resolve(pb.ResolveRequest(intent="describe a photo for me", limit=3))
    assert r.intent.id == "caption"
    assert r.capabilities[0].artifacts[0].model_id == CAPTIONER
    assert not r.capabilities[0].artifacts[0].success_rate.trials  # not measured
    by_name = s.Resolve(pb.ResolveRequest(intent="Encoder D"))  # no intent: the capabilities of what it finds
    assert by_name.intent.id == "embed" and ENCODER in [a.model_id for a in by_name.capabilities[0].artifacts]
    s.RecordMatches(iter([pb.RecordMatchesRequest(events=[
        pb.MatchEvent(event_id="q1", query="caption an image", matched=[CAPTIONER, "kosmos-2-patch14-224"]),
        pb.MatchEvent(event_id="q2", query="answer questions about an image", matched=[CAPTIONER])])]))
    fb = s.RecordFeedback(pb.RecordFeedbackRequest(match_id="q1", outcome=pb.MATCH_OUTCOME_SUCCESS))
    assert list(fb.feedback.credited) == [CAPTIONER] and not fb.duplicate
    assert fb.match.outcome == pb.MATCH_OUTCOME_SUCCESS
    p = s.GetPassport(pb.GetPassportRequest(model="test-org--captioner-a"))
    assert [c.matches for c in p.capabilities] == [1, 1]
    assert [c.success_rate.trials for c in p.capabilities] == [1, 0]
    assert p.outcomes.matches == 2 and p.outcomes.success_rate.successes == 1
    assert p.capabilities[0].uri == "capability://image.understanding.caption.image.captioning"
    assert not p.served and p.snapshot_version > 0
