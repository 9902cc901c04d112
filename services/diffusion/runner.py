"""Model execution: diffusers pipelines, one UNet batch per call, nothing about queues.

The engine hands ``run`` a batch of compatible requests (same mode, size, steps,
scheduler, guidance, strength, adapters); this module turns it into ONE pipeline call
with per-image prompts and per-image ``torch.Generator`` seeds, and reports every
denoising step through ``callback_on_step_end`` so the engine can stream progress,
render previews and stop cancelled work. All model access happens on the engine's
single worker thread, so no locking is needed here.

Txt2img, img2img and inpaint pipelines share the same modules (``from_pipe``); the
inpaint pipeline gets the checkpoint's 9-channel UNet when there is one, otherwise the
ordinary UNet (diffusers then blends latents with the mask every step).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.core.loading import pretrained_source, test_model_details
from services.core.modelinfo import ModelInfo
from services.diffusion.types import SCHEDULER_NAMES, AdapterSpec, GenerateRequest

log = logging.getLogger(__name__)

# SD 1.x latent -> RGB linear factors ("approx cheap" previews, as in A1111/ComfyUI).
LATENT_RGB_FACTORS = (
    (0.298, 0.207, 0.208),
    (0.187, 0.286, 0.173),
    (-0.158, 0.189, 0.264),
    (-0.184, -0.271, -0.473),
)
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"

# on_step(step (1-based), total steps, latents of the whole batch) -> True to stop now.
StepHook = Callable[[int, int, Any], bool]


class Interrupted(Exception):
    """Raised from the step callback when every request in the batch is cancelled."""


@dataclass
class BatchItem:
    """One request inside a batch, with the seeds of its images."""

    request: GenerateRequest
    seeds: list[int]


class Runner(Protocol):
    """What the engine needs from model execution (tests can substitute a fake)."""

    def facts(self) -> ModelInfo: ...
    def native_size(self) -> int: ...
    def run(self, items: Sequence[BatchItem], on_step: StepHook) -> list[list[Image.Image]]: ...
    def preview(self, latents: Any, mode: str) -> list[Image.Image]: ...
    def check_adapters(self, adapters: Sequence[AdapterSpec]) -> None: ...


def make_scheduler(name: str, config: Any) -> Any:
    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
    )

    if name == "ddim":
        return DDIMScheduler.from_config(config)
    if name == "euler":
        return EulerDiscreteScheduler.from_config(config)
    if name == "euler-a":
        return EulerAncestralDiscreteScheduler.from_config(config)
    if name == "dpm++":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2)
    raise InvalidArgument(f"unknown scheduler {name!r}; use one of {', '.join(SCHEDULER_NAMES)}")


def adain_blend(content: Any, style: Any, weight: float) -> Any:
    """Latent-space style blend, exactly as documented on StyleTransferRequest.

    Per channel: a = (c - mean c) / std c * std s + mean s; result (1-w) c + w a.
    """
    dims = (-2, -1)
    c_mean, c_std = content.mean(dims, keepdim=True), content.std(dims, keepdim=True) + 1e-5
    s_mean, s_std = style.mean(dims, keepdim=True), style.std(dims, keepdim=True)
    adain = (content - c_mean) / c_std * s_std + s_mean
    return (1.0 - weight) * content + weight * adain


def restore_unmasked(original: Image.Image, generated: Image.Image, mask: Image.Image) -> Image.Image:
    """Copy original pixels back wherever the mask is black, so they are byte-exact."""
    orig = np.asarray(original.convert("RGB"))
    gen = np.asarray(generated.convert("RGB").resize(original.size))
    keep = np.asarray(mask.convert("L")) < 128
    out = np.where(keep[..., None], orig, gen)
    return Image.fromarray(out.astype(np.uint8), "RGB")


class DiffusersRunner:
    """Runs the pipelines of one loaded checkpoint; adapters hot-load from ``adapters_dir``."""

    def __init__(self, model: str, device: Any, dtype: Any, adapters_dir: Path) -> None:
        self.model = model
        self.device = device
        self.dtype = dtype
        self.adapters_dir = adapters_dir
        self.pipe: Any = None
        self.img2img: Any = None
        self.inpaint: Any = None
        self.has_inpaint_unet = False
        self._base_scheduler_config: Any = None
        self._loaded_adapters: dict[str, int] = {}  # name -> mtime_ns of the weights it came from
        self._rgb_factors: Any = None

    # ----------------------------------------------------------------- loading
    def load(self) -> None:
        from diffusers import (
            StableDiffusionImg2ImgPipeline,
            StableDiffusionInpaintPipeline,
            StableDiffusionPipeline,
            UNet2DConditionModel,
        )
        from diffusers.utils import logging as dlogging

        dlogging.disable_progress_bar()
        source, kwargs = pretrained_source(self.model)
        try:
            pipe = StableDiffusionPipeline.from_pretrained(  # safetensors only: never unpickle weights
                source, safety_checker=None, requires_safety_checker=False, dtype=self.dtype, use_safetensors=True,
                **kwargs)
        except Exception as exc:
            from common.errors import ModelUnavailable

            raise ModelUnavailable(f"could not load Stable Diffusion from {self.model!r}: {exc}") from exc
        inpaint_unet = None
        if pipe.unet.config.in_channels == 9:  # an inpainting checkpoint: no txt2img UNet
            inpaint_unet = pipe.unet
        else:
            try:
                inpaint_unet = UNet2DConditionModel.from_pretrained(
                    source, subfolder="unet_inpaint", dtype=self.dtype, use_safetensors=True, **kwargs)
            except Exception:
                log.info("no unet_inpaint in %s: Inpaint uses latent blending with the base UNet", self.model)
        pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe
        self._base_scheduler_config = pipe.scheduler.config
        self.img2img = StableDiffusionImg2ImgPipeline.from_pipe(pipe)
        self.has_inpaint_unet = inpaint_unet is not None and inpaint_unet.config.in_channels == 9
        extra = {"unet": inpaint_unet.to(self.device)} if self.has_inpaint_unet else {}
        self.inpaint = StableDiffusionInpaintPipeline.from_pipe(pipe, **extra)
        for p in (self.img2img, self.inpaint):
            p.set_progress_bar_config(disable=True)

    def close(self) -> None:
        self.pipe = self.img2img = self.inpaint = None

    def native_size(self) -> int:
        return int(self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor)

    def facts(self) -> ModelInfo:
        modules = [self.pipe.unet, self.pipe.vae, self.pipe.text_encoder]
        if self.has_inpaint_unet and self.inpaint.unet is not self.pipe.unet:
            modules.append(self.inpaint.unet)
        params = sum(p.numel() for m in modules for p in m.parameters())
        return ModelInfo(
            model_id=self.model,
            architecture=type(self.pipe).__name__,
            device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch."),
            parameters=params,
            details={
                "native_size": str(self.native_size()),
                "vae_scale_factor": str(self.pipe.vae_scale_factor),
                "unet_in_channels": str(self.pipe.unet.config.in_channels),
                "inpaint": "9-channel inpaint UNet" if self.has_inpaint_unet else "latent blending",
                "schedulers": ",".join(SCHEDULER_NAMES),
                "default_scheduler": type(self.pipe.scheduler).__name__,
                "text_encoder": type(self.pipe.text_encoder).__name__,
                **test_model_details(self.model),
            },
        )

    # ----------------------------------------------------------------- adapters
    def _adapter_file(self, name: str) -> Path:
        return self.adapters_dir / name / LORA_WEIGHT_NAME

    def check_adapters(self, adapters: Sequence[AdapterSpec]) -> None:
        for a in adapters:
            if not self._adapter_file(a.name).is_file():
                raise NotFound(f"adapter {a.name!r} does not exist; ListAdapters shows the saved ones, "
                               f"StartFineTune creates one")

    def _ensure_loaded(self, name: str) -> None:
        path = self._adapter_file(name)
        if not path.is_file():
            raise NotFound(f"adapter {name!r} does not exist (was it deleted?)")
        version = path.stat().st_mtime_ns
        if self._loaded_adapters.get(name) == version:
            return
        if name in self._loaded_adapters:  # overwritten by a new fine-tune: swap it
            self.pipe.delete_adapters(name)
            del self._loaded_adapters[name]
        self.pipe.load_lora_weights(str(path.parent), weight_name=LORA_WEIGHT_NAME, adapter_name=name)
        self._loaded_adapters[name] = version

    def forget_adapter(self, name: str) -> None:
        """Drop a loaded adapter (it was overwritten or deleted on disk)."""
        if name in self._loaded_adapters:
            self.pipe.delete_adapters(name)
            del self._loaded_adapters[name]

    def activate(self, adapters: Sequence[AdapterSpec]) -> None:
        """Make exactly ``adapters`` active on the shared UNet (none = base model)."""
        for a in adapters:
            self._ensure_loaded(a.name)
        unet = self.pipe.unet
        if not adapters:
            if getattr(unet, "peft_config", None):
                unet.disable_lora()
            return
        unet.enable_lora()
        self.pipe.set_adapters([a.name for a in adapters], adapter_weights=[a.weight for a in adapters])

    # ----------------------------------------------------------------- generation
    def preview(self, latents: Any, mode: str) -> list[Image.Image]:
        import torch

        with torch.no_grad():
            if mode == "vae":
                vae = self.pipe.vae
                decoded = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
                return self.pipe.image_processor.postprocess(decoded, output_type="pil")
            if self._rgb_factors is None or self._rgb_factors.device != latents.device:
                self._rgb_factors = torch.tensor(LATENT_RGB_FACTORS, dtype=torch.float32, device=latents.device)
            rgb = torch.einsum("bchw,cr->brhw", latents.float(), self._rgb_factors)
            arr = ((rgb + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(a, "RGB") for a in arr]

    def _encode_latents(self, images: list[Image.Image]) -> Any:
        import torch

        vae = self.pipe.vae
        px = self.pipe.image_processor.preprocess(images).to(self.device, vae.dtype)
        with torch.no_grad():
            dist = vae.encode(px).latent_dist
        return dist.mode() * vae.config.scaling_factor

    def run(self, items: Sequence[BatchItem], on_step: StepHook) -> list[list[Image.Image]]:
        import torch

        first = items[0].request
        mode, p = first.mode, first.params
        if mode == "txt2img" and self.pipe.unet.config.in_channels != 4:
            raise FailedPrecondition("this checkpoint is an inpainting model; use Inpaint")
        pipe = {"txt2img": self.pipe, "img2img": self.img2img, "style": self.img2img,
                "inpaint": self.inpaint}[mode]
        pipe.scheduler = make_scheduler(p.scheduler, self._base_scheduler_config)
        self.activate(p.adapters)

        prompts, negatives, gens = [], [], []
        for it in items:
            for seed in it.seeds:
                prompts.append(it.request.params.prompt)
                negatives.append(it.request.params.negative_prompt)
                gens.append(torch.Generator("cpu").manual_seed(seed % 2**64))

        def callback(_pipe: Any, i: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            if on_step(i + 1, _pipe.num_timesteps, kwargs["latents"]):
                raise Interrupted()
            return {}

        common: dict[str, Any] = dict(
            prompt=prompts, negative_prompt=negatives, num_inference_steps=p.steps,
            guidance_scale=p.guidance_scale, generator=gens, output_type="pil",
            callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["latents"],
        )
        per_image = [it.request for it in items for _ in it.seeds]
        # captured now: the engine may release a cancelled job's inputs while the batch runs
        inputs = [(r.image, r.mask) for r in per_image]
        if mode == "txt2img":
            out = pipe(height=p.height, width=p.width, **common)
        elif mode == "img2img":
            out = pipe(image=[img for img, _ in inputs], strength=first.strength, **common)
        elif mode == "style":
            latents = []
            for it in items:
                c, s = self._encode_latents([it.request.image, it.request.style_image]).chunk(2)
                blended = adain_blend(c, s, it.request.style_weight)
                latents.extend([blended] * len(it.seeds))
            out = pipe(image=torch.cat(latents), strength=first.strength, **common)
        else:  # inpaint
            out = pipe(image=[img for img, _ in inputs], mask_image=[mask for _, mask in inputs],
                       height=p.height, width=p.width, strength=first.strength, **common)
        images = list(out.images)
        if mode == "inpaint":
            images = [restore_unmasked(orig, img, mask) for (orig, mask), img in zip(inputs, images)]
        result, k = [], 0
        for it in items:
            result.append(images[k:k + len(it.seeds)])
            k += len(it.seeds)
        return result
