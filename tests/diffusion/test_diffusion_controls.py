"""Controlled generation on every family: ControlNets, T2I-Adapters, IP-Adapters, preprocessors.

The control models are tiny random ones of the real architectures (``services.diffusion.tinycontrol``),
loaded through the real loaders: ``from_pretrained`` folders, ``ControlNetModel.from_single_file``
for single files in both layouts, ``load_ip_adapter`` for IP-Adapters. Random weights give noise:
these tests check plumbing exactly (what equals what, byte for byte), never image quality.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.diffusion.conftest import FAMILIES, TITLES, decode, events_of, kinds, params, png, result_of
from tests.diffusion.test_diffusion_batching import _concurrent
from unfragile.common.v1 import common_pb2 as cpb
from unfragile.diffusion.v1 import diffusion_pb2 as pb

CONTROLNET = {"sd": "sd-canny", "sdxl": "sdxl-canny", "sd3": "sd3-canny", "flux": "flux-canny"}
T2I = {"sd": "sd-t2i", "sdxl": "sdxl-t2i"}
IP = {"sd": "sd-ip", "sdxl": "sdxl-ip", "flux": "flux-ip"}
# What diffusers runs (docs/diffusion.md has the table); the rest is FAILED_PRECONDITION.
CONTROLNET_MODES = {"sd": ("txt2img", "img2img", "inpaint"), "sdxl": ("txt2img", "img2img", "inpaint"),
                    "sd3": ("txt2img",), "flux": ("txt2img", "img2img", "inpaint")}


def _picture(seed: int = 0, size: int = 64) -> Image.Image:
    """Shapes with edges (so canny finds some) on a gradient."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, size, dtype=np.uint8)
    arr = np.stack([np.tile(x, (size, 1)), np.tile(x[:, None], (1, size)), np.full((size, size), 90, np.uint8)], -1)
    for _ in range(3):
        x0, y0 = rng.integers(0, size // 2, 2)
        arr[y0:y0 + size // 3, x0:x0 + size // 3] = rng.integers(0, 255, 3)
    return Image.fromarray(arr, "RGB")


PICTURE = png(_picture())
MASK = np.zeros((64, 64), np.uint8)
MASK[16:48, 8:40] = 255


def control(name: str, image: bytes = PICTURE, **kw: object) -> pb.Control:
    return pb.Control(controlnet=name, image=cpb.Image(data=image), **kw)


def _request(mode: str, p: pb.GenerationParams) -> tuple[str, object]:
    image = cpb.Image(data=png(_picture(5)))
    if mode == "txt2img":
        return "TextToImage", pb.TextToImageRequest(params=p)
    if mode == "img2img":
        return "ImageToImage", pb.ImageToImageRequest(params=p, image=image, strength=0.75)
    return "Inpaint", pb.InpaintRequest(params=p, image=image, mask=cpb.Image(data=png(Image.fromarray(MASK, "L"))))


def generate(stub, mode: str = "txt2img", **kw: object) -> pb.GeneratedImages:
    rpc, req = _request(mode, params(steps=3, seed=21, **kw))
    return result_of(events_of(getattr(stub, rpc), req))


def image_of(stub, mode: str = "txt2img", **kw: object) -> bytes:
    return generate(stub, mode, **kw).images[0].image.data


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(decode(data).convert("RGB"), dtype=np.int16)


@pytest.mark.parametrize("family", FAMILIES)
def test_list_control_nets_tells_family_kind_format_and_modes(family_servers, family) -> None:
    listed = family_servers.stub(family).ListControlNets(pb.ListControlNetsRequest(), timeout=10)
    assert listed.preprocessors == ["none", "canny", "depth"]
    models = {m.name: m for m in listed.models}
    for fam, name in CONTROLNET.items():
        m = models[name]
        assert (m.kind, m.family, m.format) == ("controlnet", fam, "diffusers folder")
        assert tuple(m.modes) == (CONTROLNET_MODES[fam] if fam == family else ())
    for name in ("sd-file", "sd-ldm", "sdxl-file"):
        assert (models[name].format, models[name].class_name) == ("single file", "ControlNetModel")
    assert models["flux-canny"].class_name == "FluxControlNetModel" and models["sd-ip"].kind == "ip_adapter"
    if family in T2I:
        assert tuple(models[T2I[family]].modes) == ("txt2img",)
    if family in IP:
        assert tuple(models[IP[family]].modes) == ("txt2img", "img2img", "inpaint")


@pytest.mark.parametrize("family", FAMILIES)
def test_controlnet_scale_zero_is_no_control_and_seeds_give_the_same_bytes(family_servers, family) -> None:
    """conditioning_scale 0 multiplies every ControlNet residual by 0 before it is added, and x + 0 == x
    exactly, so the image is the uncontrolled one byte for byte (SD 1.x, SDXL, SD 3). FLUX.1's ControlNet
    pipelines draw the control image's VAE sample from the request's generator before the starting
    noise, so the noise (hence the image) differs from the plain pipeline's; there scale 0 is checked as
    "the control image has no effect": any control image gives the same bytes."""
    stub, name = family_servers.stub(family), CONTROLNET[family]
    plain = image_of(stub)
    zero = image_of(stub, controls=[control(name, conditioning_scale=0.0)])
    if family == "flux":
        assert zero == image_of(stub, controls=[control(name, png(_picture(9)), conditioning_scale=0.0)])
        assert zero != plain
    else:
        assert zero == plain
    on = image_of(stub, controls=[control(name, preprocess="canny")])
    assert on not in (plain, zero)
    assert image_of(stub, controls=[control(name, preprocess="canny")]) == on  # same seed -> same bytes
    half = image_of(stub, controls=[control(name, preprocess="canny", conditioning_scale=0.5)])
    other = image_of(stub, controls=[control(name, png(_picture(9)), preprocess="canny")])
    late = image_of(stub, controls=[control(name, preprocess="canny", guidance_start=0.5)])
    assert len({on, half, other, late}) == 4


@pytest.mark.parametrize("family", FAMILIES)
def test_controlnets_in_every_mode_diffusers_runs(family_servers, family) -> None:
    stub, name = family_servers.stub(family), CONTROLNET[family]
    for mode in ("img2img", "inpaint"):
        if mode not in CONTROLNET_MODES[family]:
            with pytest.raises(Exception) as info:
                generate(stub, mode, controls=[control(name)])
            assert info.value.code().name == "FAILED_PRECONDITION" and "txt2img only" in info.value.details()
            continue
        plain = image_of(stub, mode)
        on = generate(stub, mode, controls=[control(name, preprocess="canny")], preview_every=1)
        assert on.images[0].image.data != plain and decode(on.images[0].image.data).size == (64, 64)
        if mode == "inpaint":  # unmasked pixels stay byte-exact with controls too
            out = _pixels(on.images[0].image.data)
            assert np.array_equal(out[MASK < 128], np.asarray(_picture(5), np.int16)[MASK < 128])


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_single_file_controlnets_equal_the_folder(family_servers, family) -> None:
    """The same weights as a diffusers folder, a diffusers-layout file and (SD 1.x) an original-layout
    file (control_model.input_hint_block…) give the same bytes: from_single_file reads both layouts."""
    stub = family_servers.stub(family)
    folder = image_of(stub, controls=[control(CONTROLNET[family], preprocess="canny")])
    for name in (f"{family}-file", f"{family}-ldm")[:2 if family == "sd" else 1]:
        assert image_of(stub, controls=[control(name, preprocess="canny")]) == folder, name


@pytest.mark.parametrize("family, mode", [("sd", "txt2img"), ("sdxl", "img2img"), ("flux", "txt2img")])
def test_multi_controlnet(family_servers, family, mode) -> None:
    stub, name = family_servers.stub(family), CONTROLNET[family]
    one = image_of(stub, mode, controls=[control(name, preprocess="canny")])
    second = control(name, png(_picture(3)), conditioning_scale=0.7, guidance_end=0.6)
    two = image_of(stub, mode, controls=[control(name, preprocess="canny"), second])
    assert two != one
    off = image_of(stub, mode, controls=[control(name, preprocess="canny"),
                                         control(name, png(_picture(3)), conditioning_scale=0.0)])
    assert off == image_of(stub, mode, controls=[control(name, preprocess="canny"),
                                                 control(name, png(_picture(9)), conditioning_scale=0.0)])
    assert (off == one) == (family != "flux")  # FLUX.1: each control's VAE sample comes from the generator


@pytest.mark.parametrize("family", sorted(T2I))
def test_t2i_adapters(family_servers, family) -> None:
    stub, name = family_servers.stub(family), T2I[family]
    plain = image_of(stub)
    assert image_of(stub, controls=[control(name, conditioning_scale=0.0)]) == plain  # adapter state x 0
    on = image_of(stub, controls=[control(name, preprocess="canny", kind=pb.CONTROL_KIND_T2I_ADAPTER)])
    assert on != plain and image_of(stub, controls=[control(name, preprocess="canny")]) == on
    events = events_of(stub.TextToImage, pb.TextToImageRequest(params=params(
        steps=3, controls=[control(name)], preview_every=1)))
    assert [p.step for p in kinds(events, "progress")] == [1, 2, 3] and len(kinds(events, "preview")) == 2
    with pytest.raises(Exception) as info:
        generate(stub, "img2img", controls=[control(name)])
    assert info.value.code().name == "FAILED_PRECONDITION"
    with pytest.raises(Exception) as info:
        generate(stub, controls=[control(name, guidance_start=0.5)])
    assert info.value.code().name == "INVALID_ARGUMENT" and "guidance_start" in info.value.details()


def _reference(stub, name: str, mode: str, scale: float, *refs: bytes) -> bytes:
    rpc, req = _request(mode, params(steps=3, seed=21, ip_adapter=name, ip_adapter_scale=scale,
                                     reference_images=[cpb.Image(data=r) for r in refs]))
    return result_of(events_of(getattr(stub, rpc), req)).images[0].image.data


@pytest.mark.parametrize("family", sorted(IP))
def test_ip_adapters_in_every_mode(family_servers, family) -> None:
    """IP-Adapter scale 0 multiplies the image-prompt attention by 0: the plain image, byte for byte;
    after an IP-Adapter request the next plain one is plain again (the adapter is unloaded)."""
    stub, name = family_servers.stub(family), IP[family]
    refs = (png(_picture(7)), png(_picture(8, size=48)))
    for mode in ("txt2img", "img2img", "inpaint"):
        plain = image_of(stub, mode)
        assert _reference(stub, name, mode, 0.0, *refs) == plain
        on = _reference(stub, name, mode, 1.0, *refs)
        assert on != plain and _reference(stub, name, mode, 1.0, *refs) == on
        assert _reference(stub, name, mode, 1.0, refs[0]) != on
        assert image_of(stub, mode) == plain


def test_ip_adapter_with_a_controlnet(family_servers) -> None:
    stub = family_servers.stub("sd")
    rpc, req = _request("txt2img", params(steps=3, seed=21, ip_adapter="sd-ip",
                                          reference_images=[cpb.Image(data=png(_picture(7)))],
                                          controls=[control("sd-canny", preprocess="canny")]))
    both = result_of(events_of(getattr(stub, rpc), req)).images[0].image.data
    assert both not in (image_of(stub, controls=[control("sd-canny", preprocess="canny")]),
                        _reference(stub, "sd-ip", "txt2img", 1.0, png(_picture(7))))


def test_control_maps_are_returned_as_the_model_saw_them(family_servers) -> None:
    import cv2

    stub = family_servers.stub("sd")
    big = _picture(4, size=96)  # resized to the 64x64 output first, then preprocessed
    res = generate(stub, controls=[control("sd-canny", png(big), preprocess="canny", canny_low_threshold=50,
                                           canny_high_threshold=120),
                                   control("sd-file", png(big), preprocess="depth"),
                                   control("sd-ldm", png(big))], return_control_maps=True)
    canny, depth, plain = (np.asarray(decode(m.data).convert("RGB")) for m in res.control_maps)
    resized = big.resize((64, 64), Image.Resampling.LANCZOS)
    edges = cv2.Canny(np.asarray(resized.convert("L")), 50, 120)
    assert np.array_equal(canny, np.stack([edges] * 3, -1)) and edges.any()
    assert depth.shape == (64, 64, 3) and depth.min() == 0 and depth.max() == 255
    assert np.array_equal(plain, np.asarray(resized))
    assert not generate(stub, controls=[control("sd-canny")]).control_maps


@pytest.mark.parametrize("family", ["sd", "flux"])
def test_a_batch_of_controlled_requests_equals_them_one_by_one(family_servers, family) -> None:
    stub, name = family_servers.stub(family), CONTROLNET[family]
    reqs = [pb.TextToImageRequest(params=params(prompt=p, steps=2, seed=40 + i, controls=[
        control(name, png(_picture(i)), preprocess="canny")])) for i, p in
        enumerate(["a red cat", "a blue dog", "snow on the sea", "a green tree"])]
    batched = [result_of(evs) for evs in _concurrent(stub, reqs)]
    assert [r.batch_images for r in batched] == [4, 4, 4, 4]
    for req, res in zip(reqs, batched):
        alone = result_of(events_of(stub.TextToImage, req))
        diff = np.abs(_pixels(alone.images[0].image.data) - _pixels(res.images[0].image.data))
        assert alone.batch_images == 1 and diff.max() <= 2 and diff.mean() < 0.05  # float tolerance of batch size


def test_different_control_sets_do_not_batch(family_servers) -> None:
    stub = family_servers.stub("sd")
    reqs = [pb.TextToImageRequest(params=params(steps=2, controls=c)) for c in (
        [control("sd-canny")], [control("sd-file")], [control("sd-canny", conditioning_scale=0.5)], [])]
    assert [result_of(evs).batch_images for evs in _concurrent(stub, reqs)] == [1, 1, 1, 1]


@pytest.mark.parametrize("family", ["sdxl", "sd3"])
def test_cancel_stops_a_controlled_job_within_a_step(family_servers, family) -> None:
    stub = family_servers.stub(family)
    stream = stub.TextToImage(pb.TextToImageRequest(params=params(
        steps=150, seed=3, controls=[control(CONTROLNET[family], preprocess="canny")])), timeout=120)
    job_id = next(e.job_id for e in stream if e.WhichOneof("event") == "progress")
    assert stub.CancelJob(pb.CancelJobRequest(job_id=job_id), timeout=30).status.state == cpb.JOB_STATE_CANCELLED
    with pytest.raises(Exception) as info:
        list(stream)
    assert info.value.code().name == "CANCELLED"
    last = list(stub.WatchJob(pb.WatchJobRequest(job_id=job_id), timeout=10))[-1]
    assert last.status.state == cpb.JOB_STATE_CANCELLED and last.step < 150


def _bomb() -> bytes:
    """A PNG whose header says 5000x5000 (25 M pixels, over the 16.7 M default limit): tiny on the wire."""
    return png(Image.new("L", (5000, 5000)))


@pytest.mark.parametrize("family", FAMILIES)
def test_bad_controls_get_precise_statuses_and_the_server_keeps_serving(family_servers, family) -> None:
    stub, name = family_servers.stub(family), CONTROLNET[family]
    other = "sd" if family != "sd" else "sdxl"
    cases = [
        ([control(name, b"not an image")], "INVALID_ARGUMENT", "controls[0].image is not a decodable image"),
        ([control(name, _bomb())], "INVALID_ARGUMENT", "5000x5000 = 25000000 pixels, over the limit"),
        ([control("no-such-net")], "NOT_FOUND", "'no-such-net' does not exist; available: flux-canny, sd-canny, "),
        ([control(CONTROLNET[other])], "FAILED_PRECONDITION", f"made for {TITLES[other]} but this server runs "
                                                              f"{TITLES[family]}"),
        ([control(name, conditioning_scale=2.5)], "INVALID_ARGUMENT", "conditioning_scale 2.5 is out of range"),
        ([control(name, conditioning_scale=-0.1)], "INVALID_ARGUMENT", "[0, 2]"),
        ([control(name, guidance_start=0.6, guidance_end=0.6)], "INVALID_ARGUMENT", "must be below guidance_end"),
        ([control(name, preprocess="pose")], "INVALID_ARGUMENT", "none, canny, depth"),
        ([control(name, kind=pb.CONTROL_KIND_T2I_ADAPTER)], "INVALID_ARGUMENT", "is a ControlNet"),
    ]
    for controls, code, words in cases:
        with pytest.raises(Exception) as info:
            generate(stub, controls=controls)
        assert info.value.code().name == code, (words, info.value.details())
        assert words in info.value.details(), info.value.details()
    if family in T2I:
        with pytest.raises(Exception) as info:
            generate(stub, controls=[control(name), control(T2I[family])])
        assert info.value.code().name == "INVALID_ARGUMENT" and "must all be ControlNets or all T2I-Adapters" in \
            info.value.details()
    with pytest.raises(Exception) as info:
        generate(stub, reference_images=[cpb.Image(data=PICTURE)])
    assert info.value.code().name == "INVALID_ARGUMENT" and "ip_adapter is empty" in info.value.details()
    health = stub.ModelInfo(cpb.ModelInfoRequest(), timeout=10)
    assert health.details["family"] == family and generate(stub, controls=[control(name)]).images


def test_style_transfer_takes_no_controls(family_servers) -> None:
    stub = family_servers.stub("sd")
    with pytest.raises(Exception) as info:
        list(stub.StyleTransfer(pb.StyleTransferRequest(
            params=params(controls=[control("sd-canny")]), content_image=cpb.Image(data=PICTURE),
            style_image=cpb.Image(data=PICTURE)), timeout=30))
    assert info.value.code().name == "INVALID_ARGUMENT" and "StyleTransfer takes no controls" in info.value.details()


def test_a_finetune_step_after_an_image_prompt_trains_the_plain_unet(family_servers) -> None:
    """An IP-Adapter left in the UNet by the last batch is taken out before a LoRA training step."""
    stub = family_servers.stub("sd")
    assert _reference(stub, "sd-ip", "txt2img", 1.0, png(_picture(7)))
    examples = [pb.TrainingExample(image=cpb.Image(data=PICTURE), caption="a red cat")]
    resp = stub.StartFineTune(pb.StartFineTuneRequest(adapter_name="after-ip", examples=examples, steps=2, seed=1),
                              timeout=60)
    events = list(stub.WatchJob(pb.WatchJobRequest(job_id=resp.job_id), timeout=120))
    assert events[-1].status.state == cpb.JOB_STATE_SUCCEEDED, events[-1].status.message
    assert _reference(stub, "sd-ip", "txt2img", 1.0, png(_picture(7)))  # and loads again afterwards


def test_without_control_folders_requests_name_the_settings(stub) -> None:
    with pytest.raises(Exception) as info:
        generate(stub, controls=[control("sd-canny")])
    assert info.value.code().name == "NOT_FOUND" and "none (set controlnet_dir)" in info.value.details()
    with pytest.raises(Exception) as info:
        generate(stub, ip_adapter="sd-ip", reference_images=[cpb.Image(data=PICTURE)])
    assert info.value.code().name == "NOT_FOUND" and "none (set ip_adapter_dir)" in info.value.details()
    listed = stub.ListControlNets(pb.ListControlNetsRequest(), timeout=10)
    assert not listed.models and list(listed.preprocessors) == ["none", "canny"]


def test_loaded_control_models_stay_under_the_memory_budget(tiny_sd, tiny_controls, tmp_path) -> None:
    """control_cache_mb 5 holds one tiny SD ControlNet (3.4 MiB): using another drops the least recently
    used; a depth request without depth_model is FAILED_PRECONDITION naming the setting."""
    from services.core.client import channel
    from tests.diffusion.conftest import make_settings, start
    from unfragile.diffusion.v1 import diffusion_pb2_grpc as pb_grpc

    running = start(make_settings(tiny_sd, tmp_path / "adapters", metrics_port=-1, control_cache_mb=5,
                                  controlnet_dir=tiny_controls["controlnet_dir"]))
    try:
        with channel(running.address) as ch:
            stub = pb_grpc.DiffusionStub(ch)

            def loaded() -> list[str]:
                return [m.name for m in stub.ListControlNets(pb.ListControlNetsRequest(), timeout=10).models
                        if m.loaded]

            first = image_of(stub, controls=[control("sd-canny", preprocess="canny")])
            assert loaded() == ["sd-canny"]
            assert image_of(stub, controls=[control("sd-file", preprocess="canny")]) == first  # same weights
            assert loaded() == ["sd-file"]
            assert image_of(stub, controls=[control("sd-canny", preprocess="canny")]) == first
            assert loaded() == ["sd-canny"]
            with pytest.raises(Exception) as info:
                generate(stub, controls=[control("sd-canny", preprocess="depth")])
            assert info.value.code().name == "FAILED_PRECONDITION" and "depth_model" in info.value.details()
    finally:
        running.stop(0)
