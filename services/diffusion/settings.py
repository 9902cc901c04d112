"""Diffusion configuration, each setting declared once.

``EngineConfig`` (queue and cross-request batching), ``Limits`` (request validation) and
``LoadConfig`` (single-file configs, SDXL refiner, SD 3's T5, community LoRA files) and
``ControlConfig`` (ControlNet / IP-Adapter folders, the depth model, their memory budget) are
what the engine, the request types, the model loader and the control models receive; ``Settings`` composes them with
the gRPC server and model bases (environment prefix ``UNFRAGILE_DIFFUSION_``).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from services.core.settings import GrpcServerSettings, ModelSettings, settings_config

TINY_FOLDERS = {"sd": "tiny-sd", "sdxl": "tiny-sdxl", "sd3": "tiny-sd3", "flux": "tiny-flux",
                "flux-schnell": "tiny-flux-schnell"}


class EngineConfig(BaseModel):
    """The generation queue and cross-request UNet batching."""

    max_queue: int = Field(32, gt=0, description="Generation jobs that may wait; beyond it RESOURCE_EXHAUSTED.")
    max_batch_images: int = Field(8, gt=0, description="Most images denoised in one cross-request UNet batch.")
    batching: bool = Field(True, description="Batch compatible concurrent requests into one UNet batch.")
    max_queue_delay_ms: float = Field(
        0.0, ge=0, le=10_000,
        description="How long a request may wait for compatible ones to fill its UNet batch (Triton's "
                    "max_queue_delay); 0 = take what is queued at once.")
    cancel_wait_s: float = Field(
        30.0, gt=0, description="How long a cancelled job may take to leave the worker before the caller "
                                "stops waiting for it.")
    torch_threads: int = Field(
        0, ge=0, description="CPU threads torch uses for model work (set on the worker thread); 0 = torch's "
        "default. Use 1 when several model processes share few cores: OpenMP spin-waiting under "
        "oversubscription made denoising ~20x slower on a busy 2-core machine.")


class Limits(BaseModel, frozen=True):
    """Server-side bounds; requests outside them are INVALID_ARGUMENT."""

    max_side: int = Field(1024, ge=8, description="Largest width/height accepted (pixels, multiple of 8).")
    max_steps: int = Field(150, gt=0, description="Largest number of denoising steps per request.")
    default_steps: int = Field(20, gt=0, description="Steps used when a request leaves steps at 0.")
    max_images_per_request: int = Field(8, gt=0, description="Largest num_images per request.")
    max_image_pixels: int = Field(4096 * 4096, gt=0, description="Largest input image (pixels) accepted.")
    max_prompt_chars: int = Field(2000, gt=0, description="Longest prompt or negative prompt (characters).")
    max_finetune_steps: int = Field(5000, gt=0, description="Largest number of steps of a fine-tune job.")
    max_training_examples: int = Field(1000, gt=0, description="Largest training set of a fine-tune job.")
    max_controls: int = Field(4, gt=0, description="Most controls (ControlNets / T2I-Adapters) in one request.")
    max_reference_images: int = Field(4, gt=0, description="Most IP-Adapter reference images in one request.")


class LoadConfig(BaseModel):
    """How the checkpoint, its optional parts and the community LoRA files are found and loaded."""

    single_file_config: Path | None = Field(
        None, description="A diffusers folder (model_index.json, component configs, tokenizers; weights not "
        "needed) describing a single-file .safetensors checkpoint; unset = the configs shipped for its family.")
    refiner: str = Field(
        "", description="Stable Diffusion XL only: a refiner checkpoint (diffusers folder) that TextToImage runs "
        "on the last refiner_fraction of the steps; \"\" = no refiner.")
    refiner_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="Share of the denoising steps the SDXL refiner runs (0.2 = the last 20%).")
    t5: bool = Field(
        True, description="Stable Diffusion 3: load the T5 text encoder (the largest part); false encodes prompts "
        "with the two CLIP encoders only, to save memory.")
    t5_max_tokens: int = Field(
        256, ge=16, le=512, description="Stable Diffusion 3: T5 tokens per prompt (diffusers' max_sequence_length; "
        "longer prompts are cut). 256 as diffusers; 77 as ComfyUI pads short prompts: every denoising step "
        "attends over these tokens, so fewer make steps cheaper.")
    lora_dir: Path | None = Field(
        None, description="Folder of community LoRA files (*.safetensors in the kohya or diffusers format) listed "
        "and usable beside the trained adapters; unset = none.")
    vae_slicing: bool = Field(
        True, description="Decode a batch's latents one image at a time (less peak memory for large batches; the "
        "images are the same).")
    vae_tiling_pixels: int = Field(
        1024 * 1024, ge=0, description="Images of more pixels than this are decoded and encoded by the VAE in "
        "overlapping tiles (much less memory at large sizes; faint seams are possible); 0 = never.")


class ControlConfig(BaseModel):
    """Where control models (ControlNet, T2I-Adapter, IP-Adapter, depth estimator) come from, and their memory."""

    controlnet_dir: Path | None = Field(
        None, description="Folder of ControlNets and T2I-Adapters: diffusers folders (config.json + weights) and "
        "single .safetensors ControlNet files (original or diffusers layout), each named by its folder or file "
        "stem; unset = none.")
    ip_adapter_dir: Path | None = Field(
        None, description="Folder of IP-Adapters: NAME/ holding a .safetensors file and image_encoder/, or "
        "NAME.safetensors files sharing image_encoder/ beside them (the layout of h94/IP-Adapter); unset = none.")
    depth_model: str = Field(
        "", description="A transformers depth-estimation model (DPT / Depth Anything folder or cached hub id) for "
        "the \"depth\" preprocessor; \"\" = that preprocessor is unavailable.")
    control_cache_mb: int = Field(
        8192, ge=0, description="Memory budget of the loaded control models (least recently used ones are dropped "
        "beyond it; one that is larger than the budget alone is still loaded for its batch).")


class Settings(Limits, EngineConfig, LoadConfig, ControlConfig, ModelSettings, GrpcServerSettings):
    """Diffusion service settings (environment prefix ``UNFRAGILE_DIFFUSION_``)."""

    model_config = settings_config("UNFRAGILE_DIFFUSION_") | {"frozen": False}

    port: int = Field(50052, ge=0, le=65535, description="gRPC port; 0 picks a free one (tests).")
    metrics_port: int = Field(9102, ge=-1, le=65535, description="Prometheus port; 0 = any free, -1 = off.")
    model: str = Field(
        "", description='Checkpoint: a diffusers folder, a single .safetensors file or a cached hub id; "" = the '
        "tiny model of tiny_family under models_dir (built if missing).")
    tiny_family: str = Field(
        "sd", pattern="^(sd|sdxl|sd3|flux|flux-schnell)$", description="Family of the tiny model built when model "
        "is empty: sd, sdxl, sd3, flux (FLUX.1 [dev]) or flux-schnell.")
    tiny_preset: str = Field("tiny", description="Preset used when the default tiny model has to be built.")
    adapters_dir: Path | None = Field(None, description="Where LoRA adapters are saved; default <models_dir>/adapters.")
    data_root: Path | None = Field(
        None, description="Folder that StartFineTune.data_folder paths are confined to; unset = uploads only.")

    def model_path(self) -> str:
        return self.model or str(self.models_dir / TINY_FOLDERS[self.tiny_family])

    def adapters_path(self) -> Path:
        return self.adapters_dir or (self.models_dir / "adapters")
