"""Community-style LoRA files for the tiny models, written the way trainers write them.

``diffusers`` layout: PEFT keys (``unet.<module>.lora_A.weight`` / ``lora_B``), as diffusers'
training scripts save them. ``kohya`` layout: ``lora_unet_<module_with_underscores>`` with
``lora_down`` / ``lora_up`` / ``alpha``, as kohya's sd-scripts save them. Both carry the
trainer metadata real files carry (``ss_base_model_version`` / ``modelspec.architecture``)
unless ``metadata=False``. Weights are seeded noise large enough to change the output.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
ARCHITECTURES = {"sd": ("sd_v1", "stable-diffusion-v1/lora"),
                 "sdxl": ("sdxl_base_v1-0", "stable-diffusion-xl-v1-base/lora"),
                 "sd3": ("sd3", "stable-diffusion-v3-medium/lora"), "flux": ("flux1", "flux-1-dev/lora")}


def _attention_linears(model_folder: Path) -> dict[str, tuple[int, int]]:
    """module name -> (out, in) of the denoiser's attention projections."""
    sub = "transformer" if (model_folder / "transformer").is_dir() else "unet"
    out = {}
    with safe_open(str(model_folder / sub / "diffusion_pytorch_model.safetensors"), "pt") as f:
        for key in f.keys():
            module, shape = key.removesuffix(".weight"), tuple(f.get_slice(key).get_shape())
            if key.endswith(".weight") and module.endswith(TARGETS) and ".attn" in module and len(shape) == 2:
                out[module] = shape
    return out


def write_lora(model_folder: Path, family: str, path: Path, layout: str, rank: int = 4, seed: int = 0,
               metadata: bool = True) -> Path:
    gen = torch.Generator().manual_seed(seed)
    prefix = "transformer" if family in ("sd3", "flux") else "unet"
    tensors: dict[str, torch.Tensor] = {}
    for module, (out_f, in_f) in sorted(_attention_linears(model_folder).items()):
        down = torch.randn(rank, in_f, generator=gen) * 0.5
        up = torch.randn(out_f, rank, generator=gen) * 0.5
        if layout == "kohya":
            key = f"lora_{prefix}_" + module.replace(".", "_")
            tensors |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                        f"{key}.alpha": torch.tensor(float(rank))}
        else:
            tensors |= {f"{prefix}.{module}.lora_A.weight": down, f"{prefix}.{module}.lora_B.weight": up}
    version, architecture = ARCHITECTURES[family]
    header = {"ss_base_model_version": version, "modelspec.architecture": architecture} if metadata else {}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=header or None)
    return path
