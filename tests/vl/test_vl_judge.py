"""The quality judge: a tiny random CLIP of the real architecture behind the Judge RPC of a real server.

Random weights make the scores meaningless: the tests check that the RPC returns exactly what the
judge model computes in-process, the CLIPScore mapping, the judge's identity, and the refusals.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch
from PIL import Image

from graph.probe_sets import probe_images
from services.core.client import channel
from services.core.server import RunningServer
from services.visionlanguage.judge import ClipJudge, weights_version
from services.visionlanguage.judge_tiny import build_tiny_clip
from tests.vl.vlhelpers import image_pb, png, rpc_code, start
from unfragile.visionlanguage.v1 import visionlanguage_pb2 as pb
from unfragile.visionlanguage.v1 import visionlanguage_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("judge") / "tiny-clip")


@pytest.fixture(scope="module")
def judged(tiny_model: Path, tiny_clip: Path) -> Iterator[tuple[RunningServer, pb_grpc.VisionLanguageStub]]:
    srv = start(tiny_model, judge_model=str(tiny_clip), max_queue_size=4)
    with channel(srv.address) as ch:
        yield srv, pb_grpc.VisionLanguageStub(ch)
    srv.stop(0)


def test_tiny_clip_is_a_real_clip_built_byte_identically(tiny_clip: Path, tmp_path: Path) -> None:
    again = build_tiny_clip(tmp_path / "again")
    assert sorted(p.name for p in tiny_clip.iterdir()) == sorted(p.name for p in again.iterdir())
    for f in tiny_clip.iterdir():
        assert f.read_bytes() == (again / f.name).read_bytes(), f.name
    judge = ClipJudge(tiny_clip, torch.device("cpu"), torch.float32)
    from transformers import CLIPModel, CLIPTokenizer

    assert isinstance(judge.model, CLIPModel) and isinstance(judge.processor.tokenizer, CLIPTokenizer)
    assert judge.processor.tokenizer("a red apple")["input_ids"][0] == judge.processor.tokenizer.bos_token_id
    ident = judge.identity
    assert (ident.architecture, ident.test_model, ident.test_preset) == ("CLIPModel", True, "tiny")
    assert ident.version == weights_version(tiny_clip) == weights_version(again) and ident.version.startswith("sha256:")


def test_judge_rpc_returns_what_the_judge_model_computes_in_process(judged, tiny_clip: Path) -> None:
    _srv, stub = judged
    images = [img.data for img in probe_images()[:3]] + [png((96, 64), (20, 160, 30))]
    texts = ["a cat on a sofa", "a horse", "a cup of coffee with a spoon", "a green field " * 40]  # last: > 77 tokens
    resp = stub.Judge(pb.JudgeRequest(images=[image_pb(d) for d in images], texts=texts), timeout=60)

    local = ClipJudge(tiny_clip, torch.device("cpu"), torch.float32)
    expected = local.cosine([Image.open(io.BytesIO(d)) for d in images], texts)
    assert list(resp.cosine) == pytest.approx(expected, abs=1e-6)
    assert len(set(round(c, 6) for c in resp.cosine)) == 4  # the pairs really differ
    assert list(resp.clip_score) == pytest.approx([max(100 * c, 0.0) for c in expected], abs=1e-4)
    assert list(resp.score) == pytest.approx([max(c, 0.0) for c in expected], abs=1e-6)
    assert resp.judge.model_id == str(tiny_clip) and resp.judge.architecture == "CLIPModel"
    assert resp.judge.version == local.identity.version and resp.judge.test_model
    assert resp.judge.parameters == local.identity.parameters and resp.judge.device == "cpu"
    # a pair's score does not depend on the other pairs of its request
    one = stub.Judge(pb.JudgeRequest(images=[image_pb(images[1])], texts=[texts[1]]), timeout=60)
    assert one.cosine[0] == pytest.approx(resp.cosine[1], abs=1e-6)
    # no pairs: only who judges
    empty = stub.Judge(pb.JudgeRequest(), timeout=30)
    assert not empty.cosine and empty.judge == resp.judge


def test_judge_rejects_bad_pairs_and_says_when_no_judge_is_configured(judged, tiny_model: Path) -> None:
    _srv, stub = judged
    img = image_pb(png())
    code, details = rpc_code(stub.Judge, pb.JudgeRequest(images=[img, img], texts=["a"]), timeout=30)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "one text per image" in details
    code, details = rpc_code(stub.Judge, pb.JudgeRequest(images=[img], texts=["  "]), timeout=30)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "texts[0] is empty" in details
    code, _ = rpc_code(stub.Judge, pb.JudgeRequest(images=[img] * 33, texts=["a"] * 33), timeout=30)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert stub.Judge(pb.JudgeRequest(images=[img], texts=["a"]), timeout=30).cosine  # still serving
    plain = start(tiny_model)  # judge_model unset
    try:
        with channel(plain.address) as ch:
            code, details = rpc_code(pb_grpc.VisionLanguageStub(ch).Judge, pb.JudgeRequest(), timeout=30)
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "judge_model" in details
    finally:
        plain.stop(0)


def test_a_model_that_is_not_a_dual_encoder_is_refused_as_judge(tiny_model: Path) -> None:
    from common.errors import ModelUnavailable

    with pytest.raises(ModelUnavailable, match="not a CLIP-family dual encoder"):
        ClipJudge(tiny_model, torch.device("cpu"), torch.float32)  # Kosmos-2: a contestant, not a judge
