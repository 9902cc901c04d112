"""TextToImage streams queued/running/per-step progress/result; ModelInfo; health."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.diffusion.conftest import decode, params, result_of
from unfragile.common.v1 import common_pb2 as cpb
from unfragile.diffusion.v1 import diffusion_pb2 as pb


def test_health_serving(channel_: grpc.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel_)
    for name in ("", "unfragile.diffusion.v1.Diffusion"):
        resp = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_text_to_image_stream_shape(stub) -> None:
    events = list(stub.TextToImage(pb.TextToImageRequest(params=params(steps=3, num_images=2)), timeout=60))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "status" and events[0].status.state == cpb.JOB_STATE_QUEUED
    assert events[0].status.queue_position >= 1
    running = [e for e in events if e.WhichOneof("event") == "status" and e.status.state == cpb.JOB_STATE_RUNNING]
    assert len(running) == 1
    progress = [e.progress for e in events if e.WhichOneof("event") == "progress"]
    assert [p.step for p in progress] == [1, 2, 3]
    assert all(p.total_steps == 3 for p in progress)
    assert progress[-1].eta_ms == 0
    assert len({e.job_id for e in events}) == 1 and events[0].job_id
    res = result_of(events)
    assert [i.seed for i in res.images] == [1234, 1235]
    for img in res.images:
        pil = decode(img.image.data)
        assert pil.format == "PNG" and pil.size == (64, 64) and (img.width, img.height) == (64, 64)
    assert res.steps == 3 and res.scheduler == "ddim"
    assert res.timings.total_ms >= res.timings.inference_ms > 0


def test_default_size_is_native(stub) -> None:
    p = params(steps=1)
    p.ClearField("width")
    p.ClearField("height")
    res = result_of(list(stub.TextToImage(pb.TextToImageRequest(params=p), timeout=60)))
    assert decode(res.images[0].image.data).size == (64, 64)


def test_model_info(stub, tiny_sd) -> None:
    info = stub.ModelInfo(cpb.ModelInfoRequest(), timeout=10)
    assert info.model_id == str(tiny_sd)
    assert info.architecture == "StableDiffusionPipeline"
    assert info.device == "cpu" and info.dtype == "float32"
    assert info.parameters > 100_000
    assert info.details["vae_scale_factor"] == "8"
    assert info.details["native_size"] == "64"
    assert info.details["inpaint"] == "9-channel inpaint UNet"
    assert info.details["family"] == "sd" and info.details["format"] == "diffusers folder"


def test_tiny_builder_is_deterministic(tiny_sd, tmp_path) -> None:
    import hashlib

    from services.diffusion.tiny import build_tiny_sd

    again = build_tiny_sd(tmp_path / "again")

    def digests(root):
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    first = digests(tiny_sd)
    assert first == digests(again)
    assert "unet_inpaint/diffusion_pytorch_model.safetensors" in first
