"""Serving details: Prometheus metrics, reflection, inpaint without an inpaint UNet."""

from __future__ import annotations

import shutil
import urllib.request

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
