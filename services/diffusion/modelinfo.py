"""What ``ModelInfo`` says about the served checkpoint: family, format, sizes, parts, schedulers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from services.core.loading import test_model_details
from services.core.modelinfo import ModelInfo
from services.diffusion.controlargs import modes

if TYPE_CHECKING:
    from services.diffusion.runner import DiffusersRunner


def _parameters(modules: list[Any]) -> int:
    seen: set[int] = set()
    total = 0
    for module in modules:
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total


def model_facts(runner: DiffusersRunner) -> ModelInfo:
    """ModelInfo of the loaded checkpoint; ``details`` holds the family-specific facts."""
    pipes, family = runner.pipes, runner.family
    pipe, denoiser = pipes.txt2img, pipes.denoiser
    encoders = pipes.text_encoders()
    modules = [denoiser, pipe.vae, *encoders]
    if pipes.inpaint_unet and pipes.inpaint.unet is not denoiser:
        modules.append(pipes.inpaint.unet)
    if pipes.refiner is not None:
        modules.append(pipes.refiner.unet)
    details = {
        "family": family.key,
        "family_name": family.title,
        "format": pipes.checkpoint_format,
        "native_size": str(runner.native_size()),
        "vae_scale_factor": str(pipe.vae_scale_factor),
        "latent_channels": str(pipe.vae.config.latent_channels),
        "denoiser": type(denoiser).__name__,
        "denoiser_in_channels": str(denoiser.config.in_channels),
        "text_encoders": ",".join(type(e).__name__ for e in encoders),
        "schedulers": ",".join(family.schedulers),
        "default_scheduler": family.default_scheduler,
        "inpaint": "9-channel inpaint UNet" if pipes.inpaint_unet else "latent blending",
        "lora_formats": ",".join(family.lora_formats),
        "finetune": "LoRA on the UNet" if family.finetune else "no",
    }
    details["default_guidance"] = f"{runner.default_guidance():g}"
    details["controls"] = "; ".join(f"{kind}: {','.join(modes(family.key, kind)) or 'none'}"
                                    for kind in ("controlnet", "t2i_adapter", "ip_adapter"))
    details["negative_prompt"] = "yes" if family.negative_prompt else "no (guidance-distilled)"
    if family.key == "sd3":
        details["t5"] = "on" if getattr(pipe, "text_encoder_3", None) is not None else "off"
    if family.key == "flux":
        details["variant"] = "dev" if denoiser.config.guidance_embeds else "schnell"
    if pipes.refiner is not None:
        details["refiner"] = runner.load_config.refiner
    details.update(test_model_details(runner.model))
    return ModelInfo(model_id=runner.model, architecture=type(pipe).__name__, device=str(runner.device),
                     dtype=str(runner.dtype).removeprefix("torch."), parameters=_parameters(modules),
                     details=details)
