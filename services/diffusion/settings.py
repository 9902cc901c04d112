"""Diffusion configuration, each setting declared once.

``EngineConfig`` (queue and cross-request batching) and ``Limits`` (request validation)
are what the engine and the request types receive; ``Settings`` composes them with the
gRPC server and model bases (environment prefix ``UNFRAGILE_DIFFUSION_``).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from services.core.settings import GrpcServerSettings, ModelSettings, settings_config


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


class Settings(Limits, EngineConfig, ModelSettings, GrpcServerSettings):
    """Diffusion service settings (environment prefix ``UNFRAGILE_DIFFUSION_``)."""

    model_config = settings_config("UNFRAGILE_DIFFUSION_") | {"frozen": False}

    port: int = Field(50052, ge=0, le=65535, description="gRPC port; 0 picks a free one (tests).")
    metrics_port: int = Field(9102, ge=-1, le=65535, description="Prometheus port; 0 = any free, -1 = off.")
    model: str = Field("", description='Checkpoint folder or hub id; "" = <models_dir>/tiny-sd (built if missing).')
    tiny_preset: str = Field("tiny", description="Preset used when the default tiny model has to be built.")
    adapters_dir: Path | None = Field(None, description="Where LoRA adapters are saved; default <models_dir>/adapters.")
    data_root: Path | None = Field(
        None, description="Folder that StartFineTune.data_folder paths are confined to; unset = uploads only.")

    def model_path(self) -> str:
        return self.model or str(self.models_dir / "tiny-sd")

    def adapters_path(self) -> Path:
        return self.adapters_dir or (self.models_dir / "adapters")
