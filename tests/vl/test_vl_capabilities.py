"""Embeddings, similarity, tokenization, attention maps, languages, beams, phrases, metrics."""

from __future__ import annotations

import io
import urllib.request

import grpc
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from services.visionlanguage import grounding as g
from tests.vl.vlhelpers import caption_request, image_pb, png, rpc_code
from unfragile.common.v1 import common_pb2
from unfragile.visionlanguage.v1 import visionlanguage_pb2 as pb

SNOWMAN = ("<grounding> An image of<phrase> a snowman</phrase><object><patch_index_0044><patch_index_0863></object> "
           "warming himself by<phrase> a fire</phrase><object><patch_index_0005><patch_index_0911></object>.")


def vec(e: pb.Embedding) -> np.ndarray:
    return np.array(e.values, dtype=np.float64)


def test_embed_images_and_texts_share_one_normalised_space(stub) -> None:
    a, b = png(noise=20), png((90, 60), color=(0, 200, 0), noise=60)
    resp = stub.Embed(pb.EmbedRequest(images=[image_pb(a), image_pb(b)], texts=["a red square", "кошка 图片"]),
                      timeout=30)
    assert resp.dim == 64 and "mean over the 64 image slots" in resp.pooling
    vecs = [vec(e) for e in list(resp.image_embeddings) + list(resp.text_embeddings)]
    assert all(len(v) == resp.dim and abs(np.linalg.norm(v) - 1) < 1e-5 for v in vecs)
    assert not np.allclose(vecs[0], vecs[1]) and not np.allclose(vecs[2], vecs[3])
    alone = stub.Embed(pb.EmbedRequest(images=[image_pb(b)], texts=["кошка 图片"]), timeout=30)
    np.testing.assert_allclose(vec(alone.image_embeddings[0]), vecs[1], atol=1e-5)
    np.testing.assert_allclose(vec(alone.text_embeddings[0]), vecs[3], atol=1e-5)


def test_similarity_matches_embeddings_and_clip_score(stub) -> None:
    imgs = [image_pb(png(noise=20)), image_pb(png((90, 60), color=(0, 200, 0), noise=60))]
    texts = ["a red square", "a green field", "snowman"]
    sim = stub.Similarity(pb.SimilarityRequest(images=imgs, texts=texts), timeout=30)
    emb = stub.Embed(pb.EmbedRequest(images=imgs, texts=texts), timeout=30)
    assert (sim.rows, sim.cols) == (2, 3) and len(sim.cosine) == 6
    for i in range(2):
        for j in range(3):
            cos = float(vec(emb.image_embeddings[i]) @ vec(emb.text_embeddings[j]))
            assert sim.cosine[i * 3 + j] == pytest.approx(cos, abs=1e-5)
            assert sim.clip_score[i * 3 + j] == pytest.approx(2.5 * max(sim.cosine[i * 3 + j], 0.0), abs=1e-6)


@pytest.mark.parametrize("req,text", [
    (pb.EmbedRequest(), "nothing to embed"),
    (pb.EmbedRequest(texts=[""]), "texts[0] is empty"),
    (pb.EmbedRequest(images=[common_pb2.Image(data=b"xx")]), "images[0]"),
    (pb.EmbedRequest(texts=["x"] * 33), "at most 32"),
])
def test_bad_embed_input(stub, req, text) -> None:
    code, details = rpc_code(stub.Embed, req, timeout=10)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and text in details


def test_bad_similarity_input(stub) -> None:
    code, details = rpc_code(stub.Similarity, pb.SimilarityRequest(texts=["a"]), timeout=10)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "images is empty" in details
    code, _ = rpc_code(stub.Similarity, pb.SimilarityRequest(images=[image_pb(png())], texts=["a"], model="nope"),
                       timeout=10)
    assert code == grpc.StatusCode.NOT_FOUND


def test_tokenize_grid_text_and_known_box(stub) -> None:
    resp = stub.Tokenize(pb.TokenizeRequest(
        image=image_pb(png((300, 200))), text="<grounding> a snowman кошка",
        boxes=[common_pb2.Box(x_min=0.390625, y_min=0.046875, x_max=0.984375, y_max=0.828125)],
        location_tokens=["<patch_index_0044><patch_index_0863>"]), timeout=10)
    grid = resp.patch_grid
    assert (grid.rows, grid.cols, grid.patch_size, grid.count, grid.image_size) == (16, 16, 14, 256, 224)
    assert resp.location_grid == 32 and (resp.image_width, resp.image_height) == (300, 200)
    assert resp.tokens[0] == "<s>" and resp.tokens[-1] == "</s>" and "<grounding>" in resp.tokens
    assert 3 not in resp.token_ids  # no <unk>: Cyrillic is in the vocabulary
    bt = resp.box_tokens[0]
    assert bt.text == "<patch_index_0044><patch_index_0863>" and (bt.upper_left, bt.lower_right) == (44, 863)
    box = resp.boxes[0]
    assert (box.x_min, box.y_min, box.x_max, box.y_max) == (0.390625, 0.046875, 0.984375, 0.828125)
    assert box.x_min_px == pytest.approx(0.390625 * 300) and box.y_max_px == pytest.approx(0.828125 * 200)


@pytest.mark.parametrize("req,text", [
    (pb.TokenizeRequest(), "nothing to tokenize"),
    (pb.TokenizeRequest(boxes=[common_pb2.Box(x_min=0.5, y_min=0, x_max=0.4, y_max=1)]), "x_max > x_min"),
    (pb.TokenizeRequest(boxes=[common_pb2.Box(x_min=0, y_min=0, x_max=2, y_max=1)]), "normalised"),
    (pb.TokenizeRequest(location_tokens=["<patch_index_0044>"]), "must look like"),
    (pb.TokenizeRequest(location_tokens=["<patch_index_0863><patch_index_0044>"]), "left of or above"),
    (pb.TokenizeRequest(location_tokens=["<patch_index_0044><patch_index_2000>"]), "0..1023"),
])
def test_bad_tokenize_input(stub, req, text) -> None:
    code, details = rpc_code(stub.Tokenize, req, timeout=10)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and text in details


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 31), st.integers(0, 31), st.integers(0, 31), st.integers(0, 31))
def test_location_tokens_round_trip(x1: int, y1: int, dx: int, dy: int) -> None:
    ul = y1 * 32 + x1
    lr = min(31, y1 + dy) * 32 + min(31, x1 + dx)
    text = g.location_token(ul) + g.location_token(lr)
    box = g.tokens_to_box(text)
    assert g.box_to_tokens(box)[0] == text


def test_entities_from_known_token_string() -> None:
    clean, ents = g.extract_entities(SNOWMAN)
    assert clean == "An image of a snowman warming himself by a fire."
    assert [(e.phrase, e.start, e.end) for e in ents] == [("a snowman", 12, 21), ("a fire", 41, 47)]
    assert ents[0].boxes == (g.NormBox(0.390625, 0.046875, 0.984375, 0.828125),)
    assert ents[1].boxes == (g.NormBox(0.171875, 0.015625, 0.484375, 0.890625),)


def test_attention_map_shapes_and_caption_agree(stub) -> None:
    cap = caption_request(png((120, 90), noise=40),
                          sampling=pb.SamplingParams(max_new_tokens=5, temperature=1.0, seed=4))
    resp = stub.AttentionMap(pb.AttentionMapRequest(caption=cap, per_token_overlays=True), timeout=60)
    unary = stub.Caption(cap, timeout=30)
    assert list(resp.caption.token_ids) == list(unary.token_ids)
    assert (resp.grid_rows, resp.grid_cols) == (16, 16)
    assert [t.token_id for t in resp.tokens] == list(unary.token_ids)
    for t in resp.tokens:
        w = np.array(t.weights)
        assert w.shape == (256,) and (w >= 0).all() and abs(w.sum() - 1) < 1e-4
        assert Image.open(io.BytesIO(t.overlay.data)).size == (120, 90)
    overlay = Image.open(io.BytesIO(resp.overlay.data))
    assert overlay.format == "PNG" and overlay.size == (120, 90)


def test_attention_map_rejects_beams(stub) -> None:
    cap = caption_request(sampling=pb.SamplingParams(num_beams=2))
    code, details = rpc_code(stub.AttentionMap, pb.AttentionMapRequest(caption=cap), timeout=10)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "num_beams" in details


@pytest.mark.parametrize("lang,prompt", [("zh", "<grounding>这张图片中有"), ("ru", "<grounding>Изображение"),
                                         ("fr", "<grounding>Une image de")])
def test_language_templates_and_marking(stub, lang, prompt) -> None:
    resp = stub.Caption(caption_request(language=lang, sampling=pb.SamplingParams(max_new_tokens=3)), timeout=30)
    assert resp.language == lang and resp.prompt == prompt
    assert resp.text.startswith(prompt.removeprefix("<grounding>")[:2])
    toks = stub.Tokenize(pb.TokenizeRequest(text=prompt), timeout=10)
    assert 3 not in toks.token_ids  # the script is in the vocabulary, not <unk>


def test_question_and_detailed_prompts(stub) -> None:
    q = stub.Caption(caption_request(mode=pb.CAPTION_MODE_QUESTION, prompt="what color is it?",
                                     sampling=pb.SamplingParams(max_new_tokens=3)), timeout=30)
    assert q.prompt == "Question: what color is it? Answer:"
    d = stub.Caption(caption_request(mode=pb.CAPTION_MODE_DETAILED, sampling=pb.SamplingParams(max_new_tokens=3)),
                     timeout=30)
    assert d.prompt == "<grounding>Describe this image in detail:"


def test_beam_search_is_deterministic_and_streams_the_same(stub) -> None:
    req = caption_request(png(noise=33), sampling=pb.SamplingParams(max_new_tokens=6, num_beams=3))
    a = stub.Caption(req, timeout=60)
    b = stub.Caption(req, timeout=60)
    assert a.token_ids == b.token_ids and 0 < len(a.token_ids) <= 6
    chunks = list(stub.StreamCaption(req, timeout=60))
    assert "".join(c.delta for c in chunks) == a.completion and chunks[-1].final.token_ids == a.token_ids


def test_phrases_mode_runs_one_sequence_per_phrase(stub) -> None:
    resp = stub.Caption(caption_request(mode=pb.CAPTION_MODE_PHRASES, phrases=["a dog", "the red ball"],
                                        sampling=pb.SamplingParams(max_new_tokens=4)), timeout=30)
    lines = resp.text.split("\n")
    assert len(lines) == 2 and lines[0].startswith("a dog") and lines[1].startswith("the red ball")
    assert resp.usage.completion_tokens == len(resp.token_ids) <= 8


def test_metrics_endpoint_has_vl_and_rpc_metrics(server, stub) -> None:
    stub.Caption(caption_request(sampling=pb.SamplingParams(max_new_tokens=2)), timeout=30)
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    for name in ("unfragile_vl_time_to_first_token_seconds_bucket", "unfragile_vl_request_queue_duration_seconds",
                 "unfragile_vl_inter_token_latency_seconds", "unfragile_vl_e2e_request_latency_seconds",
                 "unfragile_vl_batch_size", "unfragile_vl_generation_tokens_total", "unfragile_vl_num_requests_running",
                 "unfragile_vl_num_requests_waiting", "unfragile_vl_image_feature_cache_total"):
        assert name in text, name
    assert 'unfragile_grpc_requests_total{code="OK",method="Caption",service="visionlanguage"}' in text
