"""Which controlled pipelines diffusers has, and the arguments each one takes for a batch.

``PIPELINES`` is the whole support matrix: (family, kind, mode) -> the diffusers pipeline class
that runs it; anything else is FAILED_PRECONDITION before a request is queued, with a message that
says what does run. IP-Adapters run on the plain SD 1.x / SDXL / FLUX.1 pipelines of every mode
and on the controlled pipelines listed in ``IP_ADAPTER_WITH``.

Per batch, every image has its own control maps (one per control, at the output size) and every
control its scale and guidance window. Each control's maps go to the pipeline as one (batch, 3, h,
w) tensor in [0, 1] (what its image processor makes of a list of images): the multi-ControlNet
img2img / inpaint pipelines take no per-image lists, but do take a batch tensor per ControlNet.
The scales / windows go as one value, or a list with one per control.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from common.errors import FailedPrecondition, InvalidArgument
from services.diffusion.controltypes import Control
from services.diffusion.families import FAMILIES, Family

MODES = ("txt2img", "img2img", "inpaint")
_SD_CN = ("StableDiffusionControlNetPipeline", "StableDiffusionControlNetImg2ImgPipeline",
          "StableDiffusionControlNetInpaintPipeline")
_XL_CN = ("StableDiffusionXLControlNetPipeline", "StableDiffusionXLControlNetImg2ImgPipeline",
          "StableDiffusionXLControlNetInpaintPipeline")
_FLUX_CN = ("FluxControlNetPipeline", "FluxControlNetImg2ImgPipeline", "FluxControlNetInpaintPipeline")
PIPELINES: dict[tuple[str, str, str], str] = {
    **{("sd", "controlnet", m): c for m, c in zip(MODES, _SD_CN)},
    **{("sdxl", "controlnet", m): c for m, c in zip(MODES, _XL_CN)},
    **{("flux", "controlnet", m): c for m, c in zip(MODES, _FLUX_CN)},
    ("sd3", "controlnet", "txt2img"): "StableDiffusion3ControlNetPipeline",
    ("sd", "t2i_adapter", "txt2img"): "StableDiffusionAdapterPipeline",
    ("sdxl", "t2i_adapter", "txt2img"): "StableDiffusionXLAdapterPipeline",
}
IP_ADAPTER_FAMILIES = ("sd", "sdxl", "flux")
IP_ADAPTER_WITH = {k for k in PIPELINES if k[0] in ("sd", "sdxl") and k != ("sd", "t2i_adapter", "txt2img")} | {
    ("flux", "controlnet", "txt2img")}
TITLES = {"controlnet": "ControlNet", "t2i_adapter": "T2I-Adapter", "ip_adapter": "IP-Adapter"}


def modes(family: str, kind: str) -> tuple[str, ...]:
    """The modes diffusers runs ``kind`` in on ``family``."""
    if kind == "ip_adapter":
        return MODES if family in IP_ADAPTER_FAMILIES else ()
    return tuple(m for m in MODES if (family, kind, m) in PIPELINES)


def check_supported(family: Family, kind: str | None, mode: str, ip: bool) -> None:
    """FAILED_PRECONDITION unless diffusers runs this combination."""
    rpc = {"txt2img": "TextToImage", "img2img": "ImageToImage", "inpaint": "Inpaint"}[mode]
    if kind is not None and (family.key, kind, mode) not in PIPELINES:
        ok = modes(family.key, kind)
        where = f"on {family.title} it runs with {', '.join(ok)} only" if ok else f"{family.title} has none"
        raise FailedPrecondition(f"{TITLES[kind]} control is not available for {rpc} on {family.title} in diffusers "
                                 f"({where}); send the request without controls or to a server that runs it")
    if ip and family.key not in IP_ADAPTER_FAMILIES:
        raise FailedPrecondition(f"IP-Adapters run on {', '.join(FAMILIES[f].title for f in IP_ADAPTER_FAMILIES)}; "
                                 f"this server runs {family.title}")
    if ip and kind is not None and (family.key, kind, mode) not in IP_ADAPTER_WITH:
        raise FailedPrecondition(f"diffusers' {PIPELINES[(family.key, kind, mode)]} takes no IP-Adapter; send the "
                                 f"image prompt without {TITLES[kind]} controls, or the controls without it")


def check_windows(family: Family, kind: str, controls: tuple[Control, ...]) -> None:
    """T2I-Adapters act from the first step on (SDXL: for a fraction of the steps; SD 1.x: all of them)."""
    if kind != "t2i_adapter":
        return
    for i, c in enumerate(controls):
        if c.start != 0.0 or (family.key == "sd" and c.end != 1.0):
            allowed = "guidance_end" if family.key == "sdxl" else "no guidance window"
            raise InvalidArgument(f"controls[{i}]: a T2I-Adapter on {family.title} takes {allowed}; leave "
                                  f"guidance_start at 0{'' if family.key == 'sdxl' else ' and guidance_end at 1'}")
    if family.key == "sdxl" and len({c.end for c in controls}) > 1:
        raise InvalidArgument("T2I-Adapters on Stable Diffusion XL share one guidance_end "
                              "(adapter_conditioning_factor); give all controls the same one")


def _one_or_list(values: list[Any]) -> Any:
    return values[0] if len(values) == 1 else values


def _batch_tensor(maps: list[Image.Image]) -> Any:
    import numpy as np
    import torch

    arr = np.stack([np.asarray(m.convert("RGB"), dtype=np.float32) / 255.0 for m in maps])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def control_kwargs(family: Family, kind: str, mode: str, controls: tuple[Control, ...],
                   maps: list[list[Image.Image]]) -> dict[str, Any]:
    """Arguments of the controlled pipeline: ``maps[j]`` are control j's maps, one per image of the batch."""
    images: Any = _one_or_list([_batch_tensor(m) for m in maps])
    scales = [c.scale for c in controls]
    if kind == "t2i_adapter":
        out = {"image": images, "adapter_conditioning_scale": _one_or_list(scales)}
        if family.key == "sdxl":
            out["adapter_conditioning_factor"] = controls[0].end
        return out
    name = "image" if mode == "txt2img" and family.key in ("sd", "sdxl") else "control_image"
    return {name: images, "controlnet_conditioning_scale": _one_or_list(scales),
            "control_guidance_start": _one_or_list([c.start for c in controls]),
            "control_guidance_end": _one_or_list([c.end for c in controls])}
