"""The basics over real gRPC: health, reflection, Caption, ModelInfo, bad input."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.core.client import channel as make_channel
from tests.vl.vlhelpers import caption_request, image_pb, png, rpc_code, start
from unfragile.common.v1 import common_pb2
from unfragile.visionlanguage.v1 import visionlanguage_pb2 as pb

FULL = "unfragile.visionlanguage.v1.VisionLanguage"


def test_health_serving_and_reflection(server) -> None:
    with make_channel(server.address) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for name in ("", FULL):
            status = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        resp = next(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        assert FULL in {s.name for s in resp.list_services_response.service}


def test_model_info(stub, tiny_model) -> None:
    info = stub.ModelInfo(common_pb2.ModelInfoRequest(), timeout=10)
    assert info.model_id == str(tiny_model)
    assert info.architecture == "Kosmos2ForConditionalGeneration"
    assert info.device == "cpu" and info.dtype == "float32" and info.quantization == ""
    assert 100_000 < info.parameters < 1_000_000
    assert info.details["patch_grid"] == "16x16" and info.details["location_grid"] == "32x32"
    assert info.details["image_slots"] == "64"


def test_caption_greedy_is_deterministic(stub) -> None:
    req = caption_request(png(noise=40), sampling=pb.SamplingParams(max_new_tokens=6))
    a = stub.Caption(req, timeout=30)
    b = stub.Caption(req, timeout=30)
    assert a.token_ids == b.token_ids and a.text == b.text
    assert len(a.token_ids) == 6 and a.finish_reason == pb.FINISH_REASON_LENGTH
    assert a.prompt == "<grounding>An image of"
    assert a.raw_text.startswith("<grounding> An image of")
    assert a.text.startswith("An image of")
    assert a.usage.completion_tokens == 6 and a.usage.images == 1 and a.usage.prompt_tokens > 64
    assert a.language == "en"
    assert a.timings.total_ms >= a.timings.inference_ms > 0


def test_caption_same_seed_same_tokens_different_seed_differs(stub) -> None:
    def run(seed: int) -> list[int]:
        s = pb.SamplingParams(max_new_tokens=12, temperature=1.0, seed=seed)
        return list(stub.Caption(caption_request(png(noise=30), sampling=s), timeout=30).token_ids)

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_unset_seed_is_returned_and_reproduces(stub) -> None:
    s = pb.SamplingParams(max_new_tokens=10, temperature=1.0)
    first = stub.Caption(caption_request(sampling=s), timeout=30)
    s.seed = first.seed
    again = stub.Caption(caption_request(sampling=s), timeout=30)
    assert again.token_ids == first.token_ids


def _tiff() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="TIFF")
    return buf.getvalue()


BAD = [
    (dict(image=common_pb2.Image()), "image"),
    (dict(image=image_pb(_tiff())), "supported formats"),
    (dict(mode=99), "unknown mode"),
    (dict(image=image_pb(b"definitely not an image")), "not a decodable image"),
    (dict(image=image_pb(png()[:40])), "image"),
    (dict(mode=pb.CAPTION_MODE_PROMPT), "prompt is empty"),
    (dict(mode=pb.CAPTION_MODE_PROMPT, prompt="   "), "prompt is empty"),
    (dict(mode=pb.CAPTION_MODE_QUESTION), "question"),
    (dict(prompt="hello"), "CAPTION_MODE_PROMPT"),
    (dict(mode=pb.CAPTION_MODE_PHRASES), "phrases"),
    (dict(language="xx"), "not supported"),
    (dict(sampling=pb.SamplingParams(max_new_tokens=100000)), "limit"),
    (dict(sampling=pb.SamplingParams(temperature=-1)), "temperature"),
    (dict(sampling=pb.SamplingParams(temperature=99)), "temperature"),
    (dict(sampling=pb.SamplingParams(top_p=1.5, temperature=1)), "top_p"),
    (dict(sampling=pb.SamplingParams(top_k=5)), "temperature > 0"),
    (dict(sampling=pb.SamplingParams(num_beams=3, temperature=0.7)), "beam search"),
    (dict(sampling=pb.SamplingParams(stop=["a"] * 5)), "stop"),
    (dict(sampling=pb.SamplingParams(stop=[""])), "stop"),
    (dict(mode=pb.CAPTION_MODE_PROMPT, prompt="word " * 600, sampling=pb.SamplingParams(max_new_tokens=8)), "context"),
]


@pytest.mark.parametrize("fields,text", BAD, ids=[t for _, t in BAD])
def test_bad_caption_input_is_invalid_argument(stub, fields, text) -> None:
    fields = dict(fields)
    image = fields.pop("image", image_pb(png()))
    sampling = fields.pop("sampling", None)
    req = pb.CaptionRequest(image=image, **fields)
    if sampling is not None:
        req.sampling.CopyFrom(sampling)
    code, details = rpc_code(stub.Caption, req, timeout=30)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert text.lower() in details.lower()
    # the server keeps serving
    assert stub.ModelInfo(common_pb2.ModelInfoRequest(), timeout=5).architecture


def test_unknown_model_is_not_found(stub) -> None:
    code, details = rpc_code(stub.Caption, caption_request(model="microsoft/kosmos-2-patch14-224"), timeout=10)
    assert code == grpc.StatusCode.NOT_FOUND and "not served here" in details


def test_huge_image_is_rejected(tiny_model) -> None:
    from unfragile.visionlanguage.v1 import visionlanguage_pb2_grpc as pb_grpc

    srv = start(tiny_model, max_image_pixels=32 * 32)
    try:
        with make_channel(srv.address) as ch:
            code, details = rpc_code(pb_grpc.VisionLanguageStub(ch).Caption, caption_request(png((64, 64))), timeout=10)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "over the limit" in details
    finally:
        srv.stop(0)
