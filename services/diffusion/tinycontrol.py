"""Tiny, randomly initialised control models for the tiny checkpoints, built offline.

Each is the real diffusers / transformers architecture, made the way the released ones were
derived from their base models, saved in the layouts they are distributed in:

- ControlNets: ``ControlNetModel.from_unet`` (SD 1.x, SDXL), ``SD3ControlNetModel.from_transformer``,
  ``FluxControlNetModel.from_transformer``, as diffusers folders; the UNet ones also as one
  ``.safetensors`` file in the diffusers layout, and SD 1.x's in the original ``control_model.…``
  layout too (``singlefile.controlnet_to_ldm``), which ``ControlNetModel.from_single_file`` reads
  (its converter does not map SDXL's ``label_emb``, so SDXL ControlNets load from the diffusers layout).
- T2I-Adapters: ``T2IAdapter`` (full_adapter_xl blocks, which match the tiny UNets' geometry).
- IP-Adapters: the ``image_proj.…`` / ``ip_adapter.N.to_k_ip…`` state dict that ``load_ip_adapter``
  reads (for FLUX.1, XLabs' ``ip_adapter_proj_model.…`` / ``double_blocks.N.processor.…`` layout),
  with a ``CLIPVisionModelWithProjection`` image encoder in ``image_encoder/`` beside it.
- A depth estimator: ``DPTForDepthEstimation`` with its image processor, for the ``depth``
  preprocessor.

The released models start with zero-initialised output layers (so training starts from the base
model); random ones would then change nothing, so every all-zero tensor gets seeded noise here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from services.diffusion.tiny import _preset, _seeded

# Output folder names of the tiny control models, per family.
CONTROLNETS = {"sd": "sd-canny", "sdxl": "sdxl-canny", "sd3": "sd3-canny", "flux": "flux-canny"}
SINGLE_FILES = {"sd": ("sd-file", "sd-ldm"), "sdxl": ("sdxl-file",)}
T2I_ADAPTERS = {"sd": "sd-t2i", "sdxl": "sdxl-t2i"}
IP_ADAPTERS = {"sd": "sd-ip", "sdxl": "sdxl-ip", "flux": "flux-ip"}


def _noised(module: Any, seed: int, scale: float = 0.1) -> Any:
    """Seeded noise in every all-zero tensor (zero convs, zero-initialised embedders)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return module


def _load(folder: Path, sub: str, cls: Any) -> Any:
    return cls.from_pretrained(folder, subfolder=sub, use_safetensors=True)


def build_controlnet(model: Path, family: str, out: Path) -> Path:
    """A ControlNet for the tiny ``family`` checkpoint in ``model``, as a diffusers folder ``out``."""
    _preset("tiny")  # prepares the libraries
    from diffusers import (
        ControlNetModel,
        FluxControlNetModel,
        FluxTransformer2DModel,
        SD3ControlNetModel,
        SD3Transformer2DModel,
        UNet2DConditionModel,
    )

    if family in ("sd", "sdxl"):
        unet = _load(model, "unet", UNet2DConditionModel)
        net = _seeded(10, lambda: ControlNetModel.from_unet(unet))
    elif family == "sd3":
        transformer = _load(model, "transformer", SD3Transformer2DModel)
        net = _seeded(10, lambda: SD3ControlNetModel.from_transformer(transformer, num_layers=1,
                                                                      num_extra_conditioning_channels=0))
    elif family == "flux":
        transformer = _load(model, "transformer", FluxTransformer2DModel)
        cfg = transformer.config
        net = _seeded(10, lambda: FluxControlNetModel.from_transformer(
            transformer, num_layers=1, num_single_layers=1, attention_head_dim=cfg.attention_head_dim,
            num_attention_heads=cfg.num_attention_heads))
    else:
        raise ValueError(f"no ControlNet for family {family!r}")
    _noised(net, 11).save_pretrained(out, safe_serialization=True)
    config = json.loads((out / "config.json").read_text())
    config.pop("out_channels", None)  # from_transformer copies the transformer's, which the ControlNet does not take
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out


def build_controlnet_files(folder: Path, family: str, out_dir: Path) -> list[Path]:
    """The ControlNet folder as one file in the diffusers layout (and, for SD 1.x, one in the original one)."""
    from diffusers import ControlNetModel
    from safetensors.torch import save_file

    from services.diffusion.singlefile import controlnet_to_ldm

    net = ControlNetModel.from_pretrained(folder, use_safetensors=True)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    names = SINGLE_FILES[family]
    files = [out_dir / f"{names[0]}.safetensors"]
    save_file(state, str(files[0]), metadata={"format": "pt"})
    if len(names) > 1:
        files.append(out_dir / f"{names[1]}.safetensors")
        ldm = {f"control_model.{k}": v for k, v in controlnet_to_ldm(state, dict(net.config)).items()}
        save_file(ldm, str(files[1]), metadata={"format": "pt"})
    return files


def build_t2i_adapter(model: Path, out: Path) -> Path:
    """A T2I-Adapter whose feature maps fit the tiny UNet in ``model`` (channels per down block)."""
    _preset("tiny")
    from diffusers import T2IAdapter

    unet_cfg = json.loads((model / "unet" / "config.json").read_text())
    channels = list(unet_cfg["block_out_channels"])
    # full_adapter_xl keeps the first two blocks at one resolution, as the tiny UNets' residuals need
    adapter = _seeded(12, lambda: T2IAdapter(in_channels=3, channels=channels, num_res_blocks=1,
                                              downscale_factor=16, adapter_type="full_adapter_xl"))
    _noised(adapter, 13).save_pretrained(out, safe_serialization=True)
    return out


def build_image_encoder(out: Path, projection_dim: int = 32) -> Path:
    """A tiny ``CLIPVisionModelWithProjection`` (the IP-Adapter image encoder)."""
    _preset("tiny")
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8, projection_dim=projection_dim)
    _seeded(14, lambda: CLIPVisionModelWithProjection(config)).save_pretrained(out)
    return out


def ip_adapter_state(model: Path, family: str, embed_dim: int, seed: int = 15) -> dict[str, Any]:
    """IP-Adapter tensors for the tiny checkpoint, in the layout its loader reads (4 image tokens)."""
    import torch

    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> Any:
        return torch.randn(*shape, generator=gen) * 0.2

    if family == "flux":
        cfg = json.loads((model / "transformer" / "config.json").read_text())
        cross, inner = cfg["joint_attention_dim"], cfg["num_attention_heads"] * cfg["attention_head_dim"]
        state = {"ip_adapter_proj_model.proj.weight": rand(4 * cross, embed_dim),
                 "ip_adapter_proj_model.proj.bias": rand(4 * cross),
                 "ip_adapter_proj_model.norm.weight": torch.ones(cross),
                 "ip_adapter_proj_model.norm.bias": torch.zeros(cross)}
        for i in range(cfg["num_layers"]):
            for kv in ("k", "v"):
                stem = f"double_blocks.{i}.processor.ip_adapter_double_stream_{kv}_proj"
                state |= {f"{stem}.weight": rand(inner, cross), f"{stem}.bias": rand(inner)}
        return state
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet", use_safetensors=True)
    cross = unet.config.cross_attention_dim
    state = {"image_proj.proj.weight": rand(4 * cross, embed_dim), "image_proj.proj.bias": rand(4 * cross),
             "image_proj.norm.weight": torch.ones(cross), "image_proj.norm.bias": torch.zeros(cross)}
    for key_id, name in enumerate(unet.attn_processors):  # numbered over all processors: attn2 ones are odd
        if name.endswith("attn2.processor"):
            hidden = unet.get_submodule(name.removesuffix(".processor")).to_k.out_features
            state |= {f"ip_adapter.{key_id}.to_k_ip.weight": rand(hidden, cross),
                      f"ip_adapter.{key_id}.to_v_ip.weight": rand(hidden, cross)}
    return state


def build_ip_adapter(model: Path, family: str, out: Path) -> Path:
    """An IP-Adapter folder: ``ip-adapter.safetensors`` and its ``image_encoder/``."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    encoder = build_image_encoder(out / "image_encoder")
    embed_dim = json.loads((encoder / "config.json").read_text())["projection_dim"]
    tensors = {k: v.contiguous() for k, v in ip_adapter_state(model, family, embed_dim).items()}
    save_file(tensors, str(out / "ip-adapter.safetensors"), metadata={"format": "pt"})
    return out


def build_depth_model(out: Path) -> Path:
    """A tiny ``DPTForDepthEstimation`` (ViT backbone) with its image processor."""
    _preset("tiny")
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessorPil

    config = DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
                       image_size=32, patch_size=8, backbone_out_indices=[0, 1, 2, 3],
                       neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, head_in_index=-1,
                       reassemble_factors=[4, 2, 1, 0.5],
                       initializer_range=0.2)  # 0.02 (the default) makes a random DPT predict ~0 everywhere
    _seeded(16, lambda: DPTForDepthEstimation(config)).save_pretrained(out)
    DPTImageProcessorPil(size={"height": 32, "width": 32}, keep_aspect_ratio=False).save_pretrained(out)
    return out


def build_tiny_controls(models: dict[str, Path], out: Path) -> dict[str, Path]:
    """Every tiny control model for the given family checkpoints under ``out``.

    ``out/controlnets`` (ControlNet and T2I-Adapter folders and files: a ``controlnet_dir``),
    ``out/ip-adapters`` (an ``ip_adapter_dir``) and ``out/depth`` (a ``depth_model``).
    """
    controlnets, ip_adapters = out / "controlnets", out / "ip-adapters"
    controlnets.mkdir(parents=True, exist_ok=True)
    for family, model in models.items():
        base = family.removesuffix("-schnell")  # a [schnell] checkpoint gets its own, named flux-schnell-…

        def named(name: str, family: str = family, base: str = base) -> str:
            return name.replace(base, family, 1)

        folder = build_controlnet(model, base, controlnets / named(CONTROLNETS[base]))
        if base in SINGLE_FILES:
            build_controlnet_files(folder, base, controlnets)
        if base in T2I_ADAPTERS:
            build_t2i_adapter(model, controlnets / named(T2I_ADAPTERS[base]))
        if base in IP_ADAPTERS:
            build_ip_adapter(model, base, ip_adapters / named(IP_ADAPTERS[base]))
    depth = build_depth_model(out / "depth")
    return {"controlnet_dir": controlnets, "ip_adapter_dir": ip_adapters, "depth_model": depth}
