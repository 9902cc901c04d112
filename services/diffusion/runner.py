"""Model execution: the family's diffusers pipelines, one denoiser batch per call, nothing about queues.

The engine hands ``run`` a batch of compatible requests (same mode, size, steps,
scheduler, guidance, strength, adapters); this module turns it into ONE pipeline call
with per-image prompts and per-image ``torch.Generator`` seeds, and reports every
denoising step through ``callback_on_step_end`` so the engine can stream progress,
render previews and stop cancelled work. All model access happens on the engine's
single worker thread, so no locking is needed here.

The same code runs every family (``families.py``): SD 1.x/2.x and SDXL (UNet), SD 3
(MMDiT, flow matching) and FLUX.1 (packed latents: unpacked before the step hook sees
them). Img2img and inpaint pipelines share the loaded modules; inpaint uses a 9-channel
inpaint UNet when the checkpoint has one, otherwise the family's own inpaint pipeline
blends latents with the mask every step.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from PIL import Image

from common.errors import FailedPrecondition, InvalidArgument
from services.core.modelinfo import ModelInfo
from services.diffusion import vae as vae_calls
from services.diffusion.adapters import LORA_WEIGHT_NAME, AdapterCatalog, AdapterStore, LoraFile
from services.diffusion.calls import Inputs, adain_blend, pipeline_call, restore_unmasked
from services.diffusion.controls import Controls
from services.diffusion.engine import BatchItem, Interrupted, StepHook
from services.diffusion.events import AdapterInfo, ControlModelInfo
from services.diffusion.families import Family
from services.diffusion.modelload import Pipelines, load_pipelines
from services.diffusion.settings import ControlConfig, LoadConfig
from services.diffusion.types import AdapterSpec, GenerateRequest

log = logging.getLogger(__name__)

__all__ = ["LORA_WEIGHT_NAME", "DiffusersRunner", "adain_blend", "make_scheduler", "restore_unmasked"]


def make_scheduler(name: str, config: Any) -> Any:
    """A scheduler by canonical name, from the checkpoint's own scheduler config."""
    import diffusers

    if name == "dpm++":
        return diffusers.DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2)
    if name == "euler" and "shift" in config:  # a flow-matching checkpoint (SD 3)
        return diffusers.FlowMatchEulerDiscreteScheduler.from_config(config)
    cls = {"ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler", "euler-a": "EulerAncestralDiscreteScheduler"}
    return getattr(diffusers, cls[name]).from_config(config)


class DiffusersRunner:
    """Runs the pipelines of one loaded checkpoint; adapters hot-load from the adapter catalogue."""

    def __init__(self, model: str, device: Any, dtype: Any, adapters_dir: Path,
                 load: LoadConfig | None = None, controls: ControlConfig | None = None) -> None:
        self.model, self.device, self.dtype = model, device, dtype
        self.load_config = load or LoadConfig.model_validate({})
        self.controls = Controls(controls or ControlConfig.model_validate({}), device, dtype)
        self.catalog = AdapterCatalog(AdapterStore(adapters_dir), self.load_config.lora_dir)
        self.loaded: Pipelines | None = None
        self._base_scheduler_config: Any = None
        # One scheduler per name, reused across calls as diffusers pipelines reuse theirs:
        # set_timesteps resets its per-run state, and only the worker thread calls it.
        self._schedulers: dict[str, Any] = {}
        self._loaded_adapters: dict[str, tuple[str, int]] = {}  # name -> (file, mtime_ns) it was loaded from
        self._rgb: tuple[Any, Any] | None = None

    # ----------------------------------------------------------------- loading
    def load(self) -> None:
        self.loaded = load_pipelines(self.model, self.load_config, self.device, self.dtype)
        self._base_scheduler_config = self.pipe.scheduler.config
        self._schedulers = {}
        self.catalog.bind(self.family, self.cross_attention_width())
        self.controls.bind(self)

    def close(self) -> None:
        self.controls.close()
        self.loaded = None

    @property
    def pipes(self) -> Pipelines:
        if self.loaded is None:
            raise RuntimeError("the model is not loaded")
        return self.loaded

    @property
    def pipe(self) -> Any:
        return self.pipes.txt2img

    @property
    def family(self) -> Family:
        return self.pipes.family

    @property
    def denoiser(self) -> Any:
        return self.pipes.denoiser

    def native_size(self) -> int:
        """The image side the checkpoint was trained for (FLUX.1 pipelines default to 1024 themselves)."""
        latent = getattr(self.denoiser.config, "sample_size", None) or self.pipe.default_sample_size
        return int(latent * self.pipe.vae_scale_factor)

    def default_guidance(self) -> float:
        """Guidance when a request leaves it unset; 0 for FLUX.1 [schnell], which takes none."""
        if self.family.packed_latents and not self.denoiser.config.guidance_embeds:
            return 0.0
        return self.family.default_guidance

    def cross_attention_width(self) -> int:
        """In-features of the UNet's cross-attention (what a UNet LoRA must match); 0 for a transformer."""
        return int(self.denoiser.config.cross_attention_dim) if self.family.denoiser == "unet" else 0

    def scheduler_config(self) -> Any:
        return self._base_scheduler_config

    def _scheduler(self, name: str) -> Any:
        if name not in self._schedulers:
            self._schedulers[name] = make_scheduler(name, self._base_scheduler_config)
        return self._schedulers[name]

    def facts(self) -> ModelInfo:
        from services.diffusion.modelinfo import model_facts

        return model_facts(self)

    # ----------------------------------------------------------------- requests
    def prepare(self, request: GenerateRequest) -> GenerateRequest:
        """Fill in the model's size and the family's scheduler; check what the model cannot run."""
        p, family = request.params, self.family
        if request.mode != "inpaint" and family.denoiser == "unet" and self.denoiser.config.in_channels == 9:
            raise FailedPrecondition(f"this checkpoint is a {family.title} inpainting model; use Inpaint")
        changes: dict[str, Any] = {"scheduler": family.scheduler(p.scheduler)}
        trained = int((self._base_scheduler_config or {}).get("num_train_timesteps") or 0)
        if trained and p.steps >= trained:  # DDIM-style spacing would index past the last training timestep
            raise InvalidArgument(f"steps {p.steps} is too many for this model: its scheduler has {trained} training "
                                  f"timesteps, and a request may take 1..{trained - 1} steps")
        if p.guidance_scale is None:
            changes["guidance_scale"] = self.default_guidance()
        if p.negative_prompt.strip() and not family.negative_prompt:
            raise InvalidArgument(
                f"negative_prompt is set, but {family.title} is guidance-distilled: it has no unconditional branch to "
                f"steer away from and takes no negative prompt. Leave negative_prompt empty and describe what you want "
                f"in the prompt (guidance_scale sets the distilled guidance strength)")
        if request.mode == "txt2img" and not (p.width and p.height):
            native = self.native_size()
            changes.update(width=p.width or native, height=p.height or native)
        if family.packed_latents:
            for side, what in ((changes.get("width", p.width), "width"), (changes.get("height", p.height), "height")):
                if side % 16:
                    raise InvalidArgument(
                        f"{what} {side} is not a multiple of 16: {family.title} packs 2x2 latent patches, so image "
                        f"sides must be multiples of 16 (e.g. {side // 16 * 16 or 16})")
        for a in p.adapters:
            self.catalog.get(a.name)  # NOT_FOUND, or FAILED_PRECONDITION for another family's adapter
        self.controls.check(request)
        return replace(request, params=replace(p, **changes))

    def list_adapters(self) -> list[AdapterInfo]:
        return self.catalog.list()

    def list_controls(self) -> tuple[list[ControlModelInfo], list[str]]:
        """The control models and the preprocessor names of this server."""
        return self.controls.list(), self.controls.preprocessors.names()

    # ----------------------------------------------------------------- adapters
    def _ensure_loaded(self, adapter: LoraFile) -> None:
        version = (str(adapter.path), adapter.path.stat().st_mtime_ns)
        if self._loaded_adapters.get(adapter.name) == version:
            return
        self.forget_adapter(adapter.name)  # overwritten by a new fine-tune: swap it
        with warnings.catch_warnings():  # "multiple adapters in the model" is exactly what we want
            warnings.simplefilter("ignore", UserWarning)
            self.pipe.load_lora_weights(str(adapter.path.parent), weight_name=adapter.path.name,
                                        adapter_name=adapter.name)
        self._loaded_adapters[adapter.name] = version

    def forget_adapter(self, name: str) -> None:
        """Drop a loaded adapter (it was overwritten or deleted on disk)."""
        if name in self._loaded_adapters:
            self.pipe.delete_adapters(name)
            del self._loaded_adapters[name]

    def activate(self, adapters: Sequence[AdapterSpec]) -> None:
        """Make exactly ``adapters`` active on the shared modules (none = base model)."""
        for a in adapters:
            self._ensure_loaded(self.catalog.get(a.name))
        if not adapters:
            if self._loaded_adapters or getattr(self.denoiser, "peft_config", None):
                self.pipe.disable_lora()
            return
        self.pipe.enable_lora()
        self.pipe.set_adapters([a.name for a in adapters], adapter_weights=[a.weight for a in adapters])

    # ----------------------------------------------------------------- previews and latents
    def preview(self, latents: Any, mode: str) -> list[Image.Image]:
        """Images of batch latents: the family's linear latent->RGB map (1/8 size), or a full VAE decode."""
        import torch

        if mode == "vae":
            return self.pipe.image_processor.postprocess(vae_calls.decode(self.pipe.vae, latents), output_type="pil")
        with torch.no_grad():
            if self._rgb is None or self._rgb[0].device != latents.device:
                f = self.family
                self._rgb = (torch.tensor(f.rgb_factors, dtype=torch.float32, device=latents.device),
                             torch.tensor(f.rgb_bias, dtype=torch.float32, device=latents.device))
            factors, bias = self._rgb
            rgb = torch.einsum("bchw,cr->brhw", latents.float(), factors) + bias[None, :, None, None]
            arr = ((rgb + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(a, "RGB") for a in arr]

    def encode_latents(self, images: list[Image.Image]) -> Any:
        """VAE latents (scaled and shifted as the denoiser sees them) of ``images``."""
        return vae_calls.encode(self.pipe.vae, self.pipe.image_processor.preprocess(images).to(self.device))

    def _spatial_latents(self, height: int, width: int) -> Any:
        """Latents as (batch, channels, h, w) for the step hook: FLUX.1's packed sequence unpacked."""
        if not self.family.packed_latents:
            return lambda latents: latents
        pipe = self.pipe
        return lambda latents: pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)

    # ----------------------------------------------------------------- generation
    def run(self, items: Sequence[BatchItem], on_step: StepHook) -> list[list[Image.Image]]:
        first = items[0].request
        p = first.params
        base = {"txt2img": self.pipes.txt2img, "img2img": self.pipes.img2img, "style": self.pipes.img2img,
                "inpaint": self.pipes.inpaint}[first.mode]
        pipe = self.controls.pipeline(base, first)  # base itself without controls
        pipe.scheduler = self._scheduler(p.scheduler)
        self.activate(p.adapters)

        spatial = self._spatial_latents(p.height, p.width)

        def callback(_pipe: Any, i: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            if on_step(i + 1, _pipe.num_timesteps, spatial(kwargs["latents"])):
                raise Interrupted()
            return {}

        per_image = [it.request for it in items for _ in it.seeds]
        # captured now: the engine may release a cancelled job's inputs while the batch runs
        inputs = cast(Inputs, [(r.image, r.mask) for r in per_image])
        cfg = self.load_config
        source = inputs[0][0]  # edits without a size run at their input's size
        width, height = (p.width, p.height) if (p.width and p.height) or source is None else source.size
        with (vae_calls.for_call(self.pipe.vae, width, height, cfg.vae_slicing, cfg.vae_tiling_pixels),
              self.controls.batch(pipe, items) as extra):
            images = pipeline_call(self, pipe, items, inputs, callback, extra)
        result, k = [], 0
        for it in items:
            result.append(images[k:k + len(it.seeds)])
            k += len(it.seeds)
        return result
