"""FLUX.1 specifics: [dev] and [schnell], guidance distillation, packed latents, single-file detection.

What FLUX.1 shares with the other families (every RPC, previews, seeds, cancel, batching, LoRA
files, ControlNets, IP-Adapters) runs in the family-parametrised tests.
"""

from __future__ import annotations

import grpc
import pytest
import torch
from safetensors.torch import save_file

from common.errors import ModelUnavailable
from services.core.client import channel
from services.diffusion.families import family_of_keys
from tests.diffusion.conftest import events_of, make_settings, params, result_of, start
from unfragile.common.v1 import common_pb2 as cpb
from unfragile.diffusion.v1 import diffusion_pb2 as pb
from unfragile.diffusion.v1 import diffusion_pb2_grpc as pb_grpc


def _image(stub, **kw: object) -> bytes:
    req = pb.TextToImageRequest(params=params(steps=2, seed=8, **kw))
    return result_of(events_of(stub.TextToImage, req)).images[0].image.data


@pytest.fixture(scope="module")
def schnell(tmp_path_factory):
    from services.diffusion.tiny import build_tiny

    root = tmp_path_factory.mktemp("schnell")
    running = start(make_settings(build_tiny("flux-schnell", root / "tiny-flux-schnell"), root / "adapters",
                                  metrics_port=-1))
    with channel(running.address) as ch:
        yield pb_grpc.DiffusionStub(ch)
    running.stop(0)


def test_dev_embeds_the_guidance_scale_and_schnell_takes_none(family_servers, schnell) -> None:
    dev = family_servers.stub("flux")
    d = dev.ModelInfo(cpb.ModelInfoRequest(), timeout=10).details
    assert (d["variant"], d["default_guidance"], d["negative_prompt"]) == ("dev", "3.5", "no (guidance-distilled)")
    assert d["controls"] == ("controlnet: txt2img,img2img,inpaint; t2i_adapter: none; "
                             "ip_adapter: txt2img,img2img,inpaint")
    s = schnell.ModelInfo(cpb.ModelInfoRequest(), timeout=10).details
    assert (s["variant"], s["default_guidance"]) == ("schnell", "0")
    assert _image(dev) == _image(dev, guidance_scale=3.5) != _image(dev, guidance_scale=1.0)
    assert _image(schnell) == _image(schnell, guidance_scale=5.0)  # [schnell] has no guidance embedding


def test_negative_prompts_and_sizes_off_the_patch_grid_are_refused(family_servers) -> None:
    stub = family_servers.stub("flux")
    with pytest.raises(grpc.RpcError) as info:
        _image(stub, negative_prompt="blurry")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "FLUX.1 is guidance-distilled" in info.value.details() and "takes no negative prompt" in \
        info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        _image(stub, width=72)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "multiple of 16" in info.value.details()
    assert _image(stub)  # still serving


_BFL_KEYS = ("double_blocks.0.img_attn.norm.key_norm.scale", "double_blocks.0.img_attn.qkv.weight",
             "single_blocks.0.linear1.weight", "img_in.weight", "txt_in.weight", "time_in.in_layer.weight")


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_single_files_in_the_original_layout_are_recognised(tmp_path, tiny_models, prefix) -> None:
    """Black Forest Labs' layout (bare, or under ComfyUI's prefix) is FLUX.1 and goes to
    FluxPipeline.from_single_file. A tiny one cannot load there: diffusers' converter splits the
    single blocks' fused projections at the released width (3072), so start-up fails naming FLUX.1."""
    keys = [prefix + k for k in _BFL_KEYS]
    assert family_of_keys(keys, "x").key == "flux"
    file = tmp_path / "flux1-tiny.safetensors"
    save_file({k: torch.zeros(2, 2) for k in keys}, str(file))
    with pytest.raises(ModelUnavailable) as info:
        start(make_settings(file, tmp_path / "adapters", metrics_port=-1, single_file_config=tiny_models["flux"]))
    assert "could not load FLUX.1 from" in info.value.message
    with pytest.raises(ModelUnavailable) as info:  # a transformer saved in the diffusers layout
        family_of_keys(["single_transformer_blocks.0.attn.to_q.weight"], "t.safetensors")
    assert "diffusers layout" in info.value.message
