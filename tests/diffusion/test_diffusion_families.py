"""Every generation RPC on every family (SD 1.x, SDXL, SD 3, FLUX.1), from a diffusers folder and a single file.

Random weights draw noise: these tests check plumbing exactly (stream shape, sizes, seeds
giving the same bytes, unmasked pixels kept, previews every step, per-family schedulers,
cancellation, cross-request batching), never image quality.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from PIL import Image

from tests.diffusion.conftest import (
    FAMILIES,
    FAMILY_FORMATS,
    SINGLE_FILE_FAMILIES,
    TITLES,
    decode,
    events_of,
    kinds,
    params,
    png,
    result_of,
)
from tests.diffusion.test_diffusion_batching import _concurrent
from unfragile.common.v1 import common_pb2 as cpb
from unfragile.diffusion.v1 import diffusion_pb2 as pb

ARCHITECTURES = {"sd": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline",
                 "sd3": "StableDiffusion3Pipeline", "flux": "FluxPipeline"}
LATENT_CHANNELS = {"sd": "4", "sdxl": "4", "sd3": "16", "flux": "16"}
TEXT_ENCODERS = {"sd": "CLIPTextModel", "sdxl": "CLIPTextModel,CLIPTextModelWithProjection",
                 "sd3": "CLIPTextModelWithProjection,CLIPTextModelWithProjection,T5EncoderModel",
                 "flux": "CLIPTextModel,T5EncoderModel"}
DEFAULT_SCHEDULER = {"sd": "ddim", "sdxl": "euler", "sd3": "euler", "flux": "euler"}
# the UNets and SD 3's transformer carry their sample size; FLUX.1 pipelines default to 1024 whatever the checkpoint
NATIVE_SIZE = {"sd": "64", "sdxl": "64", "sd3": "64", "flux": "1024"}


def _gradient(size: int = 64) -> Image.Image:
    x = np.linspace(0, 255, size, dtype=np.uint8)
    arr = np.stack([np.tile(x, (size, 1)), np.tile(x[:, None], (1, size)), np.full((size, size), 90, np.uint8)], -1)
    return Image.fromarray(arr, "RGB")


@pytest.mark.parametrize("family, fmt", FAMILY_FORMATS)
def test_model_info_reports_the_family(family_servers, family, fmt) -> None:
    info = family_servers.stub(family, fmt).ModelInfo(cpb.ModelInfoRequest(), timeout=10)
    d = info.details
    assert info.architecture == ARCHITECTURES[family] and d["family"] == family and d["family_name"] == TITLES[family]
    assert d["format"] == ("diffusers folder" if fmt == "folder" else "single file")
    assert d["native_size"] == NATIVE_SIZE[family] and d["vae_scale_factor"] == "8"
    assert d["latent_channels"] == LATENT_CHANNELS[family] and d["text_encoders"] == TEXT_ENCODERS[family]
    assert d["default_scheduler"] == DEFAULT_SCHEDULER[family] == d["schedulers"].split(",")[0]
    assert info.parameters > 100_000
    assert d["test_model"] == "true", "a tiny test model says so in either format (probe pages rely on it)"


@pytest.mark.parametrize("family, fmt", FAMILY_FORMATS)
def test_text_to_image_previews_every_step_and_seeds_give_the_same_bytes(family_servers, family, fmt) -> None:
    stub = family_servers.stub(family, fmt)
    req = pb.TextToImageRequest(params=params(steps=3, num_images=2, seed=77, preview_every=1))
    events = events_of(stub.TextToImage, req)
    assert [p.step for p in kinds(events, "progress")] == [1, 2, 3]
    previews = kinds(events, "preview")
    assert [(p.step, p.index) for p in previews] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert all(decode(p.image.data).size == (8, 8) for p in previews)  # approx: latent resolution
    res = result_of(events)
    assert [i.seed for i in res.images] == [77, 78] and res.scheduler == DEFAULT_SCHEDULER[family]
    assert all(decode(i.image.data).size == (64, 64) for i in res.images)
    again = result_of(events_of(stub.TextToImage, req))
    assert [i.image.data for i in again.images] == [i.image.data for i in res.images]
    other = result_of(events_of(stub.TextToImage, pb.TextToImageRequest(params=params(steps=3, seed=79))))
    assert other.images[0].image.data != res.images[0].image.data
    vae = events_of(stub.TextToImage, pb.TextToImageRequest(params=params(
        steps=2, preview_every=1, preview_mode=pb.PREVIEW_MODE_VAE)))
    assert [decode(p.image.data).size for p in kinds(vae, "preview")] == [(64, 64)]


@pytest.mark.parametrize("family, fmt", FAMILY_FORMATS)
def test_image_to_image_style_transfer_and_inpaint(family_servers, family, fmt) -> None:
    stub = family_servers.stub(family, fmt)
    image = png(_gradient())
    img2img = events_of(stub.ImageToImage, pb.ImageToImageRequest(
        params=params(steps=4), image=cpb.Image(data=image), strength=0.5))
    assert [p.step for p in kinds(img2img, "progress")] == [1, 2] and result_of(img2img).steps == 2

    def style(weight: float) -> bytes:
        req = pb.StyleTransferRequest(params=params(prompt="", steps=4), content_image=cpb.Image(data=image),
                                      style_image=cpb.Image(data=png(Image.new("RGB", (40, 40), (10, 200, 60)))),
                                      style_weight=weight, strength=0.5)
        return result_of(events_of(stub.StyleTransfer, req)).images[0].image.data

    assert style(0.0) != style(1.0)
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 8:40] = 255
    inpaint = events_of(stub.Inpaint, pb.InpaintRequest(params=params(steps=3), image=cpb.Image(data=image),
                                                        mask=cpb.Image(data=png(Image.fromarray(mask, "L")))))
    assert len(kinds(inpaint, "progress")) == 3
    out = np.asarray(decode(result_of(inpaint).images[0].image.data).convert("RGB"))
    keep = mask < 128
    assert np.array_equal(out[keep], np.asarray(_gradient())[keep])  # byte-exact outside the mask
    assert not np.array_equal(out[~keep], np.asarray(_gradient())[~keep])


@pytest.mark.parametrize("family", SINGLE_FILE_FAMILIES)
def test_single_file_gives_the_same_bytes_as_the_folder(family_servers, family) -> None:
    req = pb.TextToImageRequest(params=params(steps=2, seed=5, num_images=2))
    folder = result_of(events_of(family_servers.stub(family, "folder").TextToImage, req))
    single = result_of(events_of(family_servers.stub(family, "single-file").TextToImage, req))
    assert [i.image.data for i in single.images] == [i.image.data for i in folder.images]


@pytest.mark.parametrize("family", FAMILIES)
def test_schedulers_are_validated_per_family(family_servers, family) -> None:
    stub = family_servers.stub(family)
    names = stub.ModelInfo(cpb.ModelInfoRequest(), timeout=10).details["schedulers"].split(",")
    for name in names:
        assert result_of(events_of(stub.TextToImage, pb.TextToImageRequest(
            params=params(steps=2, scheduler=name)))).scheduler == name
    for name in {"ddim", "euler", "euler-a", "dpm++"} - set(names):
        with pytest.raises(grpc.RpcError) as info:
            events_of(stub.TextToImage, pb.TextToImageRequest(params=params(steps=2, scheduler=name)))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert TITLES[family] in info.value.details() and " or ".join(names) in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        events_of(stub.TextToImage, pb.TextToImageRequest(params=params(scheduler="k_lms_magic")))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("family", FAMILIES)
def test_cancel_stops_within_a_step(family_servers, family) -> None:
    stub = family_servers.stub(family)
    stream = stub.TextToImage(pb.TextToImageRequest(params=params(steps=150, seed=3)), timeout=120)
    job_id = next(e.job_id for e in stream if e.WhichOneof("event") == "progress")
    assert stub.CancelJob(pb.CancelJobRequest(job_id=job_id), timeout=30).status.state == cpb.JOB_STATE_CANCELLED
    with pytest.raises(grpc.RpcError) as info:
        list(stream)
    assert info.value.code() == grpc.StatusCode.CANCELLED
    last = list(stub.WatchJob(pb.WatchJobRequest(job_id=job_id), timeout=10))[-1]
    assert last.status.state == cpb.JOB_STATE_CANCELLED and last.step < 150


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_cross_request_batching_matches_unbatched(family_servers, family) -> None:
    stub = family_servers.stub(family)
    reqs = [pb.TextToImageRequest(params=params(prompt=p, steps=2, seed=20 + i)) for i, p in
            enumerate(["a red cat", "a blue dog"])]
    batched = [result_of(evs) for evs in _concurrent(stub, reqs)]
    assert [r.batch_images for r in batched] == [2, 2]
    for req, res in zip(reqs, batched):
        alone = result_of(events_of(stub.TextToImage, req))
        diff = np.abs(np.asarray(decode(alone.images[0].image.data), np.int16)
                      - np.asarray(decode(res.images[0].image.data), np.int16))
        assert alone.batch_images == 1 and diff.max() <= 2 and diff.mean() < 0.05


@pytest.mark.parametrize("family", FAMILIES)
def test_each_distinct_text_is_encoded_once_with_the_pipelines_own_result(tiny_models, tmp_path, family) -> None:
    import torch

    from services.diffusion.calls import encode_texts
    from services.diffusion.runner import DiffusersRunner

    runner = DiffusersRunner(str(tiny_models[family]), torch.device("cpu"), torch.float32, tmp_path / "adapters")
    runner.load()
    pipe = runner.pipe
    prompts, negatives = ["a red cat", "a blue dog", "a red cat", ""], ["", "blurry", "", ""]
    calls = []
    encode = pipe.encode_prompt

    def counted(texts, **kw):
        calls.append(list(texts))
        return encode(texts, **kw)

    pipe.encode_prompt = counted
    ours = encode_texts(runner, pipe, prompts, negatives)
    if family == "flux":  # guidance-distilled: prompts only, the pipeline's (T5 sequence, CLIP pooled)
        assert calls == [["a red cat", "a blue dog", ""]]
        with torch.no_grad():
            embeds, pooled, _ = encode(prompts, prompt_2=None, device=runner.device, num_images_per_prompt=1,
                                       max_sequence_length=runner.load_config.t5_max_tokens)
        assert sorted(ours) == ["pooled_prompt_embeds", "prompt_embeds"]
        torch.testing.assert_close(ours["prompt_embeds"], embeds, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours["pooled_prompt_embeds"], pooled, atol=1e-5, rtol=1e-5)
        return
    assert calls == [["a red cat", "a blue dog", "", "blurry"]]  # one encoder batch of the distinct texts
    extra = {"prompt_2": None, "prompt_3": None} if family == "sd3" else {}
    with torch.no_grad():  # what the pipeline computes from the strings, both guidance halves
        theirs = encode(prompts, device=runner.device, num_images_per_prompt=1, do_classifier_free_guidance=True,
                        negative_prompt=negatives, **extra)
    names = ["prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"]
    assert sorted(ours) == sorted(names[:len(theirs)])
    for name, tensor in zip(names, theirs):
        torch.testing.assert_close(ours[name], tensor, atol=1e-5, rtol=1e-5)
