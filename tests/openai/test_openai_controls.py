"""Controlled generation through the OpenAI image endpoints, with the official SDK: a real frontend in front of a
real Diffusion server running the tiny SD model with a tiny ControlNet and IP-Adapter of the real architectures
(``services.diffusion.tinycontrol``, loaded through the real loaders).

Random weights draw noise: these tests check plumbing exactly — the frontend's request equals the gRPC request
with the same control and seed byte for byte — never image quality.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from services.core.client import channel
from services.core.server import RunningServer, start_server
from services.diffusion.app import Settings as DiffusionSettings
from services.diffusion.app import build_service
from services.openai.server import RunningFrontend, start
from services.openai.settings import Settings
from tests.openai.conftest import API_KEY, data_url, decode_b64
from unfragile.common.v1 import common_pb2 as cpb
from unfragile.diffusion.v1 import diffusion_pb2 as pb
from unfragile.diffusion.v1 import diffusion_pb2_grpc as pb_grpc

CONTROLNET, IP_ADAPTER = "sd-canny", "sd-ip"
STEPS, SEED = 2, 11


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _picture(seed: int = 0) -> Image.Image:
    """64x64 shapes on a gradient: edges for canny to find."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, 64, dtype=np.uint8)
    arr = np.stack([np.tile(x, (64, 1)), np.tile(x[:, None], (1, 64)), np.full((64, 64), 90, np.uint8)], -1)
    for _ in range(3):
        x0, y0 = rng.integers(0, 32, 2)
        arr[y0:y0 + 21, x0:x0 + 21] = rng.integers(0, 255, 3)
    return Image.fromarray(arr, "RGB")


PICTURE = _png(_picture())


@dataclass
class ControlStack:
    diffusion: RunningServer
    frontend: RunningFrontend
    stub: pb_grpc.DiffusionStub

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.frontend.url}/v1", api_key=API_KEY, max_retries=0)


@pytest.fixture(scope="module")
def controlled(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlStack]:
    from services.diffusion.tinycontrol import build_controlnet, build_ip_adapter

    model, root = tiny_models_dir / "tiny-sd", tmp_path_factory.mktemp("openai-controls")
    build_controlnet(model, "sd", root / "controlnets" / CONTROLNET)
    build_ip_adapter(model, "sd", root / "ip-adapters" / IP_ADAPTER)
    sd = DiffusionSettings(port=0, metrics_port=-1, model=str(model), default_steps=STEPS, torch_threads=1,
                           grace_seconds=1, adapters_dir=root / "adapters", controlnet_dir=root / "controlnets",
                           ip_adapter_dir=root / "ip-adapters")
    diffusion = start_server(sd, build_service(sd))
    frontend = start(Settings(port=0, visionlanguage_target="", diffusion_target=diffusion.address,
                              api_keys=[API_KEY], log_level="WARNING"))
    ch: grpc.Channel = channel(diffusion.address)
    try:
        yield ControlStack(diffusion, frontend, pb_grpc.DiffusionStub(ch))
    finally:
        ch.close()
        frontend.stop()
        diffusion.stop(0)


def _grpc(stack: ControlStack, rpc: str = "TextToImage", **kw: Any) -> pb.GeneratedImages:
    params = pb.GenerationParams(prompt="a house", width=64, height=64, steps=STEPS, seed=SEED,
                                 **kw.pop("params", {}))
    events = list(getattr(stack.stub, rpc)(getattr(pb, f"{rpc}Request")(params=params, **kw), timeout=60))
    assert events[-1].WhichOneof("event") == "result"
    return events[-1].result


def _generate(stack: ControlStack, **extra: Any) -> Any:
    return stack.client().images.generate(prompt="a house", size="64x64",
                                          extra_body={"seed": SEED, "num_inference_steps": STEPS, **extra})


def _bytes(b64: str) -> bytes:
    return base64.b64decode(b64)


def test_controlled_generation_equals_grpc_and_scale_zero_equals_no_control(controlled: ControlStack) -> None:
    control = {"controlnet": CONTROLNET, "image": data_url(PICTURE), "preprocess": "canny",
               "conditioning_scale": 0.9, "guidance_end": 0.8}
    got = _generate(controlled, controls=[control])
    direct = _grpc(controlled, params={"controls": [pb.Control(
        controlnet=CONTROLNET, image=cpb.Image(data=PICTURE), preprocess="canny", conditioning_scale=0.9,
        guidance_end=0.8)]})
    assert _bytes(got.data[0].b64_json) == direct.images[0].image.data  # byte for byte
    assert got.data[0].model_extra["seed"] == SEED and "control_maps" not in got.model_extra
    plain = _bytes(_generate(controlled).data[0].b64_json)
    assert plain != direct.images[0].image.data  # the control steers
    # scale 0 multiplies every residual by 0: exactly the uncontrolled image; plain base64 works as a data URL does
    off = _generate(controlled, controls=[{"controlnet": CONTROLNET, "image": base64.b64encode(PICTURE).decode(),
                                           "preprocess": "canny", "conditioning_scale": 0}])
    assert _bytes(off.data[0].b64_json) == plain


def test_return_control_maps_gives_the_canny_map(controlled: ControlStack) -> None:
    import cv2

    resp = _generate(controlled, controls=[{"controlnet": CONTROLNET, "image": data_url(PICTURE),
                                            "preprocess": "canny", "kind": "controlnet"}], return_control_maps=True)
    (entry,) = resp.model_extra["control_maps"]
    assert (entry["index"], entry["controlnet"], entry["output_format"]) == (0, CONTROLNET, "png")
    got = np.asarray(decode_b64(entry["b64_json"]).convert("L"))
    expected = cv2.Canny(np.asarray(_picture().convert("L")), 100, 200)  # already 64x64: no resize first
    assert np.array_equal(got, expected) and expected.any()


def test_streamed_controlled_generation_keeps_partial_images(controlled: ControlStack) -> None:
    control = {"controlnet": CONTROLNET, "image": data_url(PICTURE), "preprocess": "canny"}
    events = list(controlled.client().images.generate(
        prompt="a house", size="64x64", stream=True, partial_images=1,
        extra_body={"seed": SEED, "num_inference_steps": STEPS, "controls": [control], "return_control_maps": True}))
    assert [e.type for e in events] == ["image_generation.partial_image", "image_generation.completed"]
    assert decode_b64(events[0].b64_json).size == (64, 64)
    unary = _generate(controlled, controls=[control])
    assert events[-1].b64_json == unary.data[0].b64_json  # previews do not change the controlled result
    assert len(events[-1].model_extra["control_maps"]) == 1


def test_ip_adapter_reference_images_equal_grpc(controlled: ControlStack) -> None:
    ref = _png(_picture(4))
    got = _generate(controlled, ip_adapter=IP_ADAPTER, reference_images=[data_url(ref)], ip_adapter_scale=0.7)
    direct = _grpc(controlled, params={"ip_adapter": IP_ADAPTER, "reference_images": [cpb.Image(data=ref)],
                                       "ip_adapter_scale": 0.7})
    assert _bytes(got.data[0].b64_json) == direct.images[0].image.data
    assert direct.images[0].image.data != _grpc(controlled).images[0].image.data  # the image prompt steers


def test_edit_with_a_control_inline_or_as_a_file_part_equals_grpc(controlled: ControlStack) -> None:
    source = _png(Image.effect_noise((64, 64), 60).convert("RGB"))
    mask_img = Image.new("L", (64, 64), 0)
    mask_img.paste(255, (16, 16, 48, 48))
    mask = _png(mask_img)
    control = {"controlnet": CONTROLNET, "preprocess": "canny", "conditioning_scale": 1.2}
    edited = controlled.client().images.edit(
        image=("image.png", source, "image/png"), mask=("mask.png", mask, "image/png"), prompt="a house",
        extra_body={"seed": SEED, "num_inference_steps": STEPS,
                    "controls": json.dumps([{**control, "image": data_url(PICTURE)}])})
    direct = _grpc(controlled, "Inpaint", image=cpb.Image(data=source), mask=cpb.Image(data=mask), params={
        "controls": [pb.Control(controlnet=CONTROLNET, image=cpb.Image(data=PICTURE), preprocess="canny",
                                conditioning_scale=1.2)]})
    assert _bytes(edited.data[0].b64_json) == direct.images[0].image.data
    plain = _grpc(controlled, "Inpaint", image=cpb.Image(data=source), mask=cpb.Image(data=mask))
    assert plain.images[0].image.data != direct.images[0].image.data  # the control steers the edit
    # curl's way: the control image as a control_image[] file part
    resp = httpx.post(f"{controlled.frontend.url}/v1/images/edits", headers={"Authorization": f"Bearer {API_KEY}"},
                      data={"prompt": "a house", "seed": str(SEED), "num_inference_steps": str(STEPS),
                            "controls": json.dumps([control])},
                      files=[("image", ("image.png", source, "image/png")), ("mask", ("mask.png", mask, "image/png")),
                             ("control_image[]", ("edges.png", PICTURE, "image/png"))], timeout=60)
    assert resp.status_code == 200, resp.text
    assert _bytes(resp.json()["data"][0]["b64_json"]) == direct.images[0].image.data


def test_control_models_are_listed(controlled: ControlStack) -> None:
    resp = httpx.get(f"{controlled.frontend.url}/v1/controlnets", headers={"Authorization": f"Bearer {API_KEY}"})
    assert resp.status_code == 200
    body = resp.json()
    models = {m["id"]: m for m in body["data"]}
    assert (models[CONTROLNET]["kind"], models[CONTROLNET]["family"]) == ("controlnet", "sd")
    assert models[IP_ADAPTER]["kind"] == "ip_adapter" and "txt2img" in models[IP_ADAPTER]["modes"]
    assert "canny" in body["preprocessors"]


def test_bad_controls_are_the_sdk_errors_with_the_service_message(controlled: ControlStack) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        _generate(controlled, controls=[{"controlnet": "no-such-net", "image": data_url(PICTURE)}])
    assert "no-such-net" in missing.value.message and CONTROLNET in missing.value.message  # names the available
    with pytest.raises(openai.BadRequestError) as undecodable:
        _generate(controlled, controls=[{"controlnet": CONTROLNET, "image": data_url(b"not an image at all")}])
    assert "controls[0].image" in undecodable.value.message
    with pytest.raises(openai.BadRequestError) as window:
        _generate(controlled, controls=[{"controlnet": CONTROLNET, "image": data_url(PICTURE),
                                         "guidance_start": 0.6, "guidance_end": 0.4}])
    assert "guidance_start" in window.value.message
    with pytest.raises(openai.BadRequestError) as typo:  # a misspelt field of a control is refused, not dropped
        _generate(controlled, controls=[{"controlnet": CONTROLNET, "image": data_url(PICTURE), "scale": 0.5}])
    assert typo.value.body["param"] == "controls.0.scale"
    with pytest.raises(openai.BadRequestError) as remote:  # allow_remote_images is off
        _generate(controlled, controls=[{"controlnet": CONTROLNET, "image": "http://127.0.0.1:9/edges.png"}])
    assert remote.value.body["code"] == "image_url_forbidden"
    with pytest.raises(openai.BadRequestError) as maps:
        _generate(controlled, return_control_maps=True)
    assert "no controls" in maps.value.message
    with pytest.raises(openai.BadRequestError) as flattened:  # a list of objects the SDK flattens into form fields
        controlled.client().images.edit(image=("image.png", PICTURE, "image/png"), prompt="x",
                                        extra_body={"controls": [{"controlnet": CONTROLNET}]})
    assert "JSON" in flattened.value.message
    assert _generate(controlled).data  # the service keeps serving
