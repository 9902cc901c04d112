"""One LoRA adapter being trained on the served UNet (SD 1.x/2.x and SDXL): model execution only.

The adapter is added to the shared UNet under a private name; generation batches switch
the active adapters back to what each request asked for, and the engine's worker runs
one ``step()`` at a time between batches. SDXL's UNet also gets the pooled embedding of its
second text encoder and the ``add_time_ids`` (size and crop) conditioning, as its pipeline
passes them at inference.

Memory, for SDXL at 1024x1024 on a GPU: the UNet recomputes activations in the backward pass
(gradient checkpointing, active only while gradients are on, so serving is unaffected); the
batch follows from a per-family budget of pixels per step; a float16 model trains under
bfloat16 autocast where the device supports it (no gradient underflow), else under float16
autocast with a ``GradScaler``. The LoRA weights themselves are float32.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageOps

from services.diffusion import vae as vae_calls
from services.diffusion.types import FineTuneRequest, TrainingExample

if TYPE_CHECKING:
    from services.diffusion.runner import DiffusersRunner

log = logging.getLogger(__name__)

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
# Pixels per training step (batch x resolution²) each family trains with: SD 1.x/2.x 4 x 512², SDXL 2 x 1024²
# (with gradient checkpointing, what a 24 GB card holds); at most MAX_BATCH images, at least one.
STEP_PIXELS = {"sd": 4 * 512 * 512, "sdxl": 2 * 1024 * 1024}
MAX_BATCH = 4


def training_batch(family: str, resolution: int, examples: int) -> int:
    """Images per training step for ``family`` at ``resolution``."""
    per_step = STEP_PIXELS.get(family, STEP_PIXELS["sd"]) // (resolution * resolution)
    return max(1, min(MAX_BATCH, examples, per_step))


def precision(base_dtype: Any, bf16_supported: bool) -> str:
    """How a step runs on a ``base_dtype`` UNet: "float32" as it is, "bf16-autocast", or "fp16-autocast+scaler"."""
    import torch

    if base_dtype == torch.float32:
        return "float32"
    return "bf16-autocast" if bf16_supported else "fp16-autocast+scaler"


def bf16_supported(device: Any) -> bool:
    import torch

    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return device.type == "cpu"


def _square(img: Image.Image, size: int) -> Image.Image:
    return ImageOps.fit(img.convert("RGB"), (size, size), Image.Resampling.LANCZOS)


class LoraTrainingRun:
    """One adapter being trained on the shared UNet (model execution only)."""

    def __init__(self, runner: DiffusersRunner, req: FineTuneRequest, examples: list[TrainingExample],
                 key: str) -> None:
        import torch
        from diffusers import DDPMScheduler

        self.runner, self.req, self.key = runner, req, key
        pipe = runner.pipe
        self.unet = pipe.unet
        size = req.resolution or runner.native_size()
        with torch.no_grad():
            self.latents = self._latents([_square(e.image, size) for e in examples])
            self.embeds, self.added = self._conditioning([e.caption for e in examples], size)
        self.params = self._add_lora()
        self.opt = torch.optim.AdamW(self.params, lr=req.learning_rate)
        self.noise = DDPMScheduler.from_config(runner.scheduler_config())
        self.gen = torch.Generator("cpu").manual_seed(req.seed)
        self.batch = training_batch(runner.family.key, size, len(examples))
        self.precision = precision(self.unet.dtype, bf16_supported(runner.device))
        self.scaler = torch.amp.GradScaler(runner.device.type) if self.precision == "fp16-autocast+scaler" else None
        self.unet.enable_gradient_checkpointing()

    def _latents(self, images: list[Image.Image]) -> Any:
        import torch

        vae, pipe = self.runner.pipe.vae, self.runner.pipe
        px = pipe.image_processor.preprocess(images).to(self.runner.device)
        return torch.cat([vae_calls.encode(vae, px[i:i + 8]) for i in range(0, len(px), 8)])

    def _conditioning(self, captions: list[str], size: int) -> tuple[Any, dict[str, Any]]:
        """Prompt embeddings, plus SDXL's pooled embedding and size/crop time ids (empty dict for SD)."""
        import torch

        pipe, device = self.runner.pipe, self.runner.device
        encoded = pipe.encode_prompt(captions, device=device, num_images_per_prompt=1,
                                     do_classifier_free_guidance=False)
        if self.runner.family.key != "sdxl":
            return encoded[0], {}
        embeds, pooled = encoded[0], encoded[2]
        time_ids = pipe._get_add_time_ids((size, size), (0, 0), (size, size), dtype=embeds.dtype,
                                          text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
        return embeds, {"text_embeds": pooled, "time_ids": torch.cat([time_ids] * len(captions)).to(device)}

    def _add_lora(self) -> list[Any]:
        from peft import LoraConfig

        self.unet.requires_grad_(False)
        with warnings.catch_warnings():  # "multiple adapters in the model" is exactly what we want
            warnings.simplefilter("ignore", UserWarning)
            self.unet.add_adapter(LoraConfig(r=self.req.rank, lora_alpha=self.req.rank, init_lora_weights="gaussian",
                                             target_modules=LORA_TARGETS), adapter_name=self.key)
        params = [p for n, p in self.unet.named_parameters() if f".{self.key}." in n]
        for p in params:
            p.data = p.data.float()  # train LoRA weights in fp32 even on a fp16 base
            p.requires_grad_(True)
        return params

    def step(self) -> float:
        import torch
        import torch.nn.functional as F

        self.unet.enable_lora()
        self.unet.set_adapters([self.key], weights=[1.0])
        for p in self.params:
            p.requires_grad_(True)
        n = self.latents.shape[0]
        idx = torch.randperm(n, generator=self.gen)[: self.batch].to(self.latents.device)
        lat = self.latents[idx]
        noise = torch.randn(lat.shape, generator=self.gen).to(lat.device, lat.dtype)
        t = torch.randint(0, self.noise.config.num_train_timesteps, (lat.shape[0],), generator=self.gen)
        t = t.to(lat.device)
        noisy = self.noise.add_noise(lat, noise, t)
        target = noise if self.noise.config.prediction_type == "epsilon" else self.noise.get_velocity(lat, noise, t)
        added = {k: v[idx] for k, v in self.added.items()} or None
        embeds = self.embeds[idx]
        if self.precision == "bf16-autocast":  # autocast cannot mix float16 inputs into bfloat16 ops (torch.cat)
            noisy, embeds = noisy.to(torch.bfloat16), embeds.to(torch.bfloat16)
            added = {k: v.to(torch.bfloat16) for k, v in added.items()} if added else None
        with torch.enable_grad():
            with self._autocast():
                pred = self.unet(noisy, t, encoder_hidden_states=embeds, added_cond_kwargs=added,
                                 return_dict=False)[0]
            loss = F.mse_loss(pred.float(), target.float())
            if self.scaler is not None:  # float16 gradients underflow without scaling
                self.scaler.scale(loss).backward()
                self.scaler.step(self.opt)
                self.scaler.update()
            else:
                loss.backward()
                self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    def _autocast(self) -> Any:
        import torch

        if self.precision == "float32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16-autocast" else torch.float16
        return torch.autocast(self.runner.device.type, dtype=dtype)

    def lora_state_dict(self) -> dict[str, Any]:
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        sd = get_peft_model_state_dict(self.unet, adapter_name=self.key)
        return {k: v.detach().to("cpu").contiguous() for k, v in convert_state_dict_to_diffusers(sd).items()}

    def discard(self) -> None:
        """Remove the training adapter from the shared UNet."""
        self.unet.disable_gradient_checkpointing()
        try:
            with warnings.catch_warnings():  # "was active which is now deleted": generation resets it anyway
                warnings.simplefilter("ignore", UserWarning)
                self.unet.delete_adapters(self.key)
        except Exception:
            log.exception("could not remove training adapter %s", self.key)
