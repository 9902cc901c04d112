"""Write a diffusers checkpoint as ONE .safetensors file in its family's original layout.

The layouts are the ones A1111 / ComfyUI users download and that diffusers'
``from_single_file`` converts back: LDM for SD 1.x (``model.diffusion_model.input_blocks…``,
``first_stage_model.…``, ``cond_stage_model.transformer.…``), SGM for SDXL (the second text
encoder in OpenCLIP form under ``conditioner.embedders.1.model.``), and MMDiT for SD 3
(``joint_blocks.N.x_block…`` with fused qkv, the text encoders under ``text_encoders.``).
Each mapping here is the exact inverse of diffusers' converter, so exporting and loading
back gives the same tensors (the tests check it). Used to give every tiny model a
single-file twin; it works for any checkpoint of the three families.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

from services.core.loading import TEST_MODEL_MARKER
from services.diffusion.families import SD, SD3, SDXL, family_of_index

Tensors = dict[str, Any]
_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
           "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _ldm_mapping(part: str) -> dict[str, Any]:
    """diffusers' own diffusers -> original key table for ``part`` (unet, vae, openclip)."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    return cast(dict[str, Any], DIFFUSERS_TO_LDM_MAPPING[part])


def _renamed(rest: str, table: dict[str, str]) -> str:
    for new, old in table.items():
        if rest.startswith(new + "."):
            return old + rest[len(new):]
    return rest


def unet_to_ldm(sd: Tensors, config: dict[str, Any]) -> Tensors:
    """Diffusers UNet2DConditionModel tensors -> LDM/SGM ``input_blocks / middle_block / output_blocks``."""
    unet = _ldm_mapping("unet")
    top = dict(unet["layers"])
    if config.get("addition_embed_type") == "text_time":
        top.update(unet["addition_embed_type"])
    per = int(config["layers_per_block"]) + 1
    attn_up = [t.startswith("CrossAttn") for t in config["up_block_types"]]
    out: Tensors = {}
    for key, value in sd.items():
        out[top.get(key) or _unet_key(key, per, attn_up)] = value
    return out


def _unet_key(key: str, per: int, attn_up: list[bool]) -> str:
    parts = key.split(".")
    if parts[0] == "mid_block":
        kind, i, rest = parts[1], int(parts[2]), ".".join(parts[3:])
        return f"middle_block.{2 * i}.{_renamed(rest, _RESNET)}" if kind == "resnets" else f"middle_block.1.{rest}"
    block, kind = int(parts[1]), parts[2]
    if parts[0] == "down_blocks" and kind == "downsamplers":
        return f"input_blocks.{(block + 1) * per}.0.op.{parts[-1]}"
    if parts[0] == "up_blocks" and kind == "upsamplers":
        return f"output_blocks.{block * per + per - 1}.{2 if attn_up[block] else 1}.conv.{parts[-1]}"
    layer, rest = int(parts[3]), ".".join(parts[4:])
    index = 1 + block * per + layer if parts[0] == "down_blocks" else block * per + layer
    name = "input_blocks" if parts[0] == "down_blocks" else "output_blocks"
    if parts[0] not in ("down_blocks", "up_blocks"):
        raise ValueError(f"unexpected UNet tensor {key}")
    return f"{name}.{index}.0.{_renamed(rest, _RESNET)}" if kind == "resnets" else f"{name}.{index}.1.{rest}"


def controlnet_to_ldm(sd: Tensors, config: dict[str, Any]) -> Tensors:
    """Diffusers ControlNetModel tensors -> the original layout (``input_hint_block``, ``zero_convs``, …,
    without the ``control_model.`` prefix): the inverse of diffusers' ``convert_controlnet_checkpoint``."""
    cn = _ldm_mapping("controlnet")
    top = dict(cn["layers"])
    top.update(cn["addition_embed_type"] if config.get("addition_embed_type") == "text_time" else {})
    top.update(cn["class_embed_type"] if config.get("class_embed_type") else {})
    per = int(config["layers_per_block"]) + 1
    out: Tensors = {}
    for key, value in sd.items():
        parts = key.split(".")
        if key in top:
            out[top[key]] = value
        elif parts[0] == "controlnet_down_blocks":
            out[f"zero_convs.{parts[1]}.0.{parts[2]}"] = value
        elif parts[0] == "controlnet_mid_block":
            out[f"middle_block_out.0.{parts[1]}"] = value
        elif parts[0] == "controlnet_cond_embedding":  # blocks.j -> input_hint_block.(2j + 2)
            out[f"input_hint_block.{2 * int(parts[2]) + 2}.{parts[3]}"] = value
        else:
            out[_unet_key(key, per, [])] = value
    return out


def vae_to_ldm(sd: Tensors, config: dict[str, Any]) -> Tensors:
    """Diffusers AutoencoderKL tensors -> LDM ``encoder.down.N.block…`` (attention as 1x1 convs)."""
    top: dict[str, str] = _ldm_mapping("vae")
    n_up = len(config["up_block_types"])
    out: Tensors = {}
    for key, value in sd.items():
        if key in top:
            out[top[key]] = value
            continue
        side, parts = key.split(".", 1)[0], key.split(".")[1:]
        if parts[0] == "mid_block" and parts[1] == "attentions":
            rest = _renamed(".".join(parts[3:]), _VAE_ATTN)
            out[f"{side}.mid.attn_1.{rest}"] = value[:, :, None, None] if value.ndim == 2 else value
        elif parts[0] == "mid_block":
            out[f"{side}.mid.block_{int(parts[2]) + 1}.{_vae_res('.'.join(parts[3:]))}"] = value
        else:
            block = int(parts[1]) if side == "encoder" else n_up - 1 - int(parts[1])
            prefix = f"{side}.{'down' if side == 'encoder' else 'up'}.{block}"
            if parts[2] == "resnets":
                out[f"{prefix}.block.{parts[3]}.{_vae_res('.'.join(parts[4:]))}"] = value
            else:  # downsamplers.0.conv / upsamplers.0.conv
                out[f"{prefix}.{'downsample' if side == 'encoder' else 'upsample'}.conv.{parts[-1]}"] = value
    return out


def _vae_res(rest: str) -> str:
    return _renamed(rest, {"conv_shortcut": "nin_shortcut"})


def clip_to_open_clip(sd: Tensors) -> Tensors:
    """HF CLIPTextModelWithProjection tensors -> OpenCLIP text tower (fused in_proj, transposed projection)."""
    top: dict[str, str] = _ldm_mapping("openclip")["layers"]
    out: Tensors = {}
    for key, value in sd.items():
        if key in top:
            out[top[key]] = value.T.contiguous() if key == "text_projection.weight" else value
        elif ".self_attn." in key and key.rsplit(".", 2)[1] in ("q_proj", "k_proj", "v_proj"):
            if key.rsplit(".", 2)[1] == "q_proj":
                stem, kind = key.rsplit(".", 2)[0], key.rsplit(".", 1)[1]
                fused = [sd[f"{stem}.{p}.{kind}"] for p in ("q_proj", "k_proj", "v_proj")]
                out[_open_clip_layer(stem) + f".in_proj_{kind}"] = _cat(fused)
        elif key.startswith("text_model.encoder.layers."):
            out[_open_clip_layer(key)] = value
    return out


def _open_clip_layer(key: str) -> str:
    key = key.replace("text_model.encoder.layers.", "transformer.resblocks.").replace(".self_attn", ".attn")
    return key.replace("layer_norm1", "ln_1").replace("layer_norm2", "ln_2").replace(".fc1.", ".c_fc.").replace(
        ".fc2.", ".c_proj.")


def _cat(tensors: list[Any]) -> Any:
    import torch

    return torch.cat(tensors, dim=0)


def _swap(value: Any) -> Any:
    """Diffusers keeps adaLN (scale, shift) where MMDiT keeps (shift, scale) in a few places."""
    return _cat(list(reversed(value.chunk(2, dim=0))))


_MMDIT_TOP = {
    "pos_embed.pos_embed": "pos_embed", "pos_embed.proj": "x_embedder.proj", "context_embedder": "context_embedder",
    "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
    "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
    "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
    "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2", "proj_out": "final_layer.linear",
    "norm_out.linear": "final_layer.adaLN_modulation.1",
}
_MMDIT_BLOCK = {
    "attn.to_out.0": "x_block.attn.proj", "attn.to_add_out": "context_block.attn.proj",
    "attn.norm_q": "x_block.attn.ln_q", "attn.norm_k": "x_block.attn.ln_k",
    "attn.norm_added_q": "context_block.attn.ln_q", "attn.norm_added_k": "context_block.attn.ln_k",
    "attn2.to_out.0": "x_block.attn2.proj", "attn2.norm_q": "x_block.attn2.ln_q", "attn2.norm_k": "x_block.attn2.ln_k",
    "norm1.linear": "x_block.adaLN_modulation.1", "norm1_context.linear": "context_block.adaLN_modulation.1",
    "ff.net.0.proj": "x_block.mlp.fc1", "ff.net.2": "x_block.mlp.fc2",
    "ff_context.net.0.proj": "context_block.mlp.fc1", "ff_context.net.2": "context_block.mlp.fc2",
}
_QKV = {"attn.to_": "x_block.attn.qkv", "attn.add_": "context_block.attn.qkv", "attn2.to_": "x_block.attn2.qkv"}


def mmdit_to_sd3(sd: Tensors, config: dict[str, Any]) -> Tensors:
    """Diffusers SD3Transformer2DModel tensors -> the MMDiT layout (fused qkv, swapped final adaLN)."""
    last = int(config["num_layers"]) - 1
    out: Tensors = {}
    for key, value in sd.items():
        module, kind = key.rsplit(".", 1)
        if module in _MMDIT_TOP or key in _MMDIT_TOP:
            name = _MMDIT_TOP.get(key) or f"{_MMDIT_TOP[module]}.{kind}"
            out[name] = _swap(value) if module == "norm_out.linear" else value
            continue
        _, index, inner = module.split(".", 2)
        prefix = f"joint_blocks.{index}."
        if inner in _MMDIT_BLOCK:
            swap = inner == "norm1_context.linear" and int(index) == last
            out[prefix + _MMDIT_BLOCK[inner] + "." + kind] = _swap(value) if swap else value
            continue
        for stem, fused in _QKV.items():  # attn.to_q / attn.add_q_proj / attn2.to_q, fused in q, k, v order
            if inner in (f"{stem}q", f"{stem}q_proj"):
                suffix = "_proj" if stem == "attn.add_" else ""
                parts = [sd[f"transformer_blocks.{index}.{stem}{c}{suffix}.{kind}"] for c in "qkv"]
                out[f"{prefix}{fused}.{kind}"] = _cat(parts)
    return out


def _components(folder: Path) -> Iterator[tuple[str, Any, dict[str, Any]]]:
    """(name, state dict, config) of each weighted component, loaded as the pipeline loads them."""
    from services.diffusion.modelload import prepare_libraries

    prepare_libraries()
    import diffusers

    index = json.loads((folder / "model_index.json").read_text())
    pipe = getattr(diffusers, index["_class_name"]).from_pretrained(folder, use_safetensors=True)
    for name in ("unet", "transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        module = getattr(pipe, name, None)
        if module is not None:
            config = dict(module.config) if hasattr(module.config, "keys") else module.config.to_dict()
            yield name, {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}, config


def _prefixed(prefix: str, tensors: Tensors) -> Tensors:
    return {prefix + k: v for k, v in tensors.items()}


def _clip_l_keys(sd: Tensors) -> Tensors:
    """HF CLIPTextModel tensors with the ``text_model.`` root the original layouts keep."""
    return {(k if k.startswith(("text_model.", "text_projection")) else "text_model." + k): v for k, v in sd.items()}


def export_single_file(folder: Path, out_file: Path) -> Path:
    """Write the diffusers checkpoint in ``folder`` as one .safetensors file in its family's original layout."""
    from safetensors.torch import save_file

    folder = Path(folder)
    family = family_of_index(json.loads((folder / "model_index.json").read_text()), str(folder))
    state: Tensors = {}
    for name, sd, config in _components(folder):
        if name == "unet":
            state |= _prefixed("model.diffusion_model.", unet_to_ldm(sd, config))
        elif name == "transformer":
            state |= _prefixed("model.diffusion_model.", mmdit_to_sd3(sd, config))
        elif name == "vae":
            state |= _prefixed("first_stage_model.", vae_to_ldm(sd, config))
        elif family is SD3:
            prefix = {"text_encoder": "clip_l", "text_encoder_2": "clip_g", "text_encoder_3": "t5xxl"}[name]
            tensors = sd if name == "text_encoder_3" else _clip_l_keys(sd)
            state |= _prefixed(f"text_encoders.{prefix}.transformer.", tensors)
        elif family is SDXL and name == "text_encoder_2":
            state |= _prefixed("conditioner.embedders.1.model.", clip_to_open_clip(sd))
        else:
            root = "cond_stage_model.transformer." if family is SD else "conditioner.embedders.0.transformer."
            state |= _prefixed(root, _clip_l_keys(sd))
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out_file), metadata={"format": "pt"})
    marker = folder / TEST_MODEL_MARKER
    if marker.is_file():  # a test model stays marked as one in its single-file form
        shutil.copyfile(marker, out_file.with_name(f"{out_file.name}.{TEST_MODEL_MARKER}"))
    return out_file


def copy_configs(folder: Path, dest: Path) -> Path:
    """The weight-free part of a diffusers folder (model_index, configs, tokenizers): a single_file_config."""
    import shutil

    folder, dest = Path(folder), Path(dest)
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix not in (".safetensors", ".bin", ".ckpt", ".pt"):
            target = dest / path.relative_to(folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    return dest


def main() -> None:  # pragma: no cover - convenience entry point
    import sys

    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m services.diffusion.singlefile DIFFUSERS_FOLDER OUT.safetensors")
    print(export_single_file(Path(sys.argv[1]), Path(sys.argv[2])))


if __name__ == "__main__":  # pragma: no cover
    main()
