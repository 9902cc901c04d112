"""Serving details: Prometheus metrics, reflection, inpaint without an inpaint UNet."""

from __future__ import annotations

import shutil
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

from services.core.client import channel
from tests.diffusion.conftest import decode, make_settings, params, png, result_of, start
from unfragile.common.v1 import common_pb2 as cpb
from unfragile.diffusion.v1 import diffusion_pb2 as pb
from unfragile.diffusion.v1 import diffusion_pb2_grpc as pb_grpc


def test_metrics_exposed(server, stub) -> None:
    result_of(list(stub.TextToImage(pb.TextToImageRequest(params=params(steps=2, preview_every=1)), timeout=60)))
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
    for name in ("unfragile_diffusion_queue_duration_seconds_count{mode=\"txt2img\"}",
                 "unfragile_diffusion_time_to_first_preview_seconds_count{mode=\"txt2img\"}",
                 "unfragile_diffusion_step_duration_seconds_count{mode=\"txt2img\"}",
                 "unfragile_diffusion_e2e_request_latency_seconds_count{mode=\"txt2img\"}",
                 "unfragile_diffusion_images_generated_total{mode=\"txt2img\"}",
                 "unfragile_diffusion_batch_size_count",
                 "unfragile_diffusion_num_requests_running", "unfragile_diffusion_num_requests_waiting",
                 'unfragile_grpc_requests_total{code="OK",method="TextToImage",service="diffusion"}'):
        assert name in text, name


def test_inpaint_by_latent_blending_without_inpaint_unet(tiny_sd, tmp_path) -> None:
    folder = tmp_path / "sd-no-inpaint"
    shutil.copytree(tiny_sd, folder, ignore=shutil.ignore_patterns("unet_inpaint"))
    running = start(make_settings(folder, tmp_path / "adapters", metrics_port=-1))
    try:
        with channel(running.address) as ch:
            stub = pb_grpc.DiffusionStub(ch)
            assert stub.ModelInfo(cpb.ModelInfoRequest(), timeout=10).details["inpaint"] == "latent blending"
            original = Image.new("RGB", (64, 64), (30, 140, 220))
            mask = np.zeros((64, 64), np.uint8)
            mask[:, 32:] = 255
            res = result_of(list(stub.Inpaint(pb.InpaintRequest(
                params=params(steps=2), image=cpb.Image(data=png(original)),
                mask=cpb.Image(data=png(Image.fromarray(mask, "L")))), timeout=60)))
            out = np.asarray(decode(res.images[0].image.data).convert("RGB"))
            assert np.array_equal(out[:, :32], np.asarray(original)[:, :32])
    finally:
        running.stop(0)


def test_auth_roles_and_job_ownership(tiny_sd, tmp_path) -> None:
    import grpc
    import pytest

    from services.core.client import bearer

    tokens = tmp_path / "tokens"
    tokens.write_text("alice-token reader alice\nbob-token reader bob\nroot-token admin root\n")
    running = start(make_settings(tiny_sd, tmp_path / "adapters", metrics_port=-1, auth_tokens_file=tokens))
    try:
        with channel(running.address) as ch:
            stub = pb_grpc.DiffusionStub(ch)
            ft = pb.StartFineTuneRequest(adapter_name="x", examples=[pb.TrainingExample(
                image=cpb.Image(data=png(Image.new("RGB", (64, 64)))), caption="c")], steps=1)
            with pytest.raises(grpc.RpcError) as info:
                stub.StartFineTune(ft, metadata=bearer("alice-token"), timeout=30)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            stream = stub.TextToImage(pb.TextToImageRequest(params=params(steps=150, width=256, height=256)),
                                      metadata=bearer("alice-token"), timeout=120)
            job_id = next(stream).job_id
            with pytest.raises(grpc.RpcError) as info:
                stub.CancelJob(pb.CancelJobRequest(job_id=job_id), metadata=bearer("bob-token"), timeout=30)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            done = stub.CancelJob(pb.CancelJobRequest(job_id=job_id), metadata=bearer("alice-token"), timeout=30)
            assert done.status.state == cpb.JOB_STATE_CANCELLED
            with pytest.raises(grpc.RpcError):
                list(stream)
            resp = stub.StartFineTune(ft, metadata=bearer("root-token"), timeout=30)
            assert stub.CancelJob(pb.CancelJobRequest(job_id=resp.job_id), metadata=bearer("root-token"),
                                  timeout=30).status.state in (cpb.JOB_STATE_CANCELLED, cpb.JOB_STATE_SUCCEEDED)
    finally:
        running.stop(0)


def test_out_of_memory_fails_only_that_request_over_grpc(server, stub, monkeypatch) -> None:
    import grpc
    import pytest
    import torch

    runner = server.service.servicer.engine.runner
    real = runner.run

    def run(items, on_step):  # the allocator gives up on this one request only
        if any(it.request.params.prompt == "oom please" for it in items):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(items, on_step)

    monkeypatch.setattr(runner, "run", run)
    with pytest.raises(grpc.RpcError) as info:
        list(stub.TextToImage(pb.TextToImageRequest(params=params(prompt="oom please", steps=2)), timeout=60))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "out of memory" in info.value.details()
    assert int(dict(info.value.trailing_metadata())["retry-after-ms"]) > 0
    assert result_of(list(stub.TextToImage(pb.TextToImageRequest(params=params(steps=1)), timeout=60))).images


def test_uncached_hub_model_fails_fast_with_a_clear_message(tmp_path) -> None:
    import pytest

    from common.errors import ModelUnavailable

    settings = make_settings(Path("unused"), tmp_path / "adapters", metrics_port=-1)
    settings = settings.model_copy(update={"model": "example-org/no-such-stable-diffusion"})
    with pytest.raises(ModelUnavailable) as info:
        start(settings)
    assert "example-org/no-such-stable-diffusion" in info.value.message
    assert "--model" in info.value.message
