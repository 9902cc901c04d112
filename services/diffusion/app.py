"""Wiring of the Diffusion service: typed settings and ``build_service``.

``unfragile serve diffusion`` runs ``start_server(settings, build_service(settings))``;
``load`` (called by the core server before it reports SERVING) builds the tiny model
when no model is configured and it is missing, loads the pipelines, and starts the
engine's worker thread.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.core.server import GrpcService
from services.core.settings import ServiceSettings
from services.diffusion.engine import Engine, EngineConfig
from services.diffusion.finetune import AdapterStore, FineTuner
from services.diffusion.jobs import JobRegistry
from services.diffusion.runner import DiffusersRunner
from services.diffusion.types import Limits

log = logging.getLogger(__name__)

FULL_NAME = "unfragile.diffusion.v1.Diffusion"


class Settings(ServiceSettings):
    """Diffusion service settings (env prefix ``UNFRAGILE_DIFFUSION_``)."""

    model_config = SettingsConfigDict(env_prefix="UNFRAGILE_DIFFUSION_", extra="ignore", protected_namespaces=())

    port: int = Field(50052, ge=0, le=65535, description="gRPC port; 0 picks a free one (tests).")
    metrics_port: int = Field(9102, ge=-1, le=65535, description="Prometheus port; 0 = any free, -1 = off.")
    model: str = Field("", description='Checkpoint folder or hub id; "" = <models_dir>/tiny-sd (built if missing).')
    tiny_preset: str = Field("tiny", description="Preset used when the default tiny model has to be built.")
    adapters_dir: Path | None = Field(None, description="Where LoRA adapters are saved; default <models_dir>/adapters.")
    data_root: Path | None = Field(
        None, description="Folder that StartFineTune.data_folder paths are confined to; unset = uploads only.")
    max_queue: int = Field(32, gt=0, description="Generation jobs that may wait; beyond it RESOURCE_EXHAUSTED.")
    max_batch_images: int = Field(8, gt=0, description="Most images denoised in one cross-request UNet batch.")
    batching: bool = Field(True, description="Batch compatible concurrent requests into one UNet batch.")
    max_queue_delay_ms: float = Field(
        0.0, ge=0, le=10_000,
        description="How long a request may wait for compatible ones to fill its UNet batch (Triton's "
                    "max_queue_delay); 0 = take what is queued at once.")
    max_side: int = Field(1024, ge=8, description="Largest width/height accepted (pixels, multiple of 8).")
    max_steps: int = Field(150, gt=0, description="Largest number of denoising steps per request.")
    default_steps: int = Field(20, gt=0, description="Steps used when a request leaves steps at 0.")
    max_images_per_request: int = Field(8, gt=0, description="Largest num_images per request.")
    max_image_pixels: int = Field(4096 * 4096, gt=0, description="Largest input image (pixels) accepted.")
    max_finetune_steps: int = Field(5000, gt=0, description="Largest number of steps of a fine-tune job.")
    max_training_examples: int = Field(1000, gt=0, description="Largest training set of a fine-tune job.")
    torch_threads: int = Field(
        0, ge=0, description="CPU threads torch uses for model work (set on the worker thread); 0 = torch's "
        "default. Use 1 when several model processes share few cores: OpenMP spin-waiting under "
        "oversubscription made denoising ~20x slower on a busy 2-core machine.")

    def model_path(self) -> str:
        return self.model or str(self.models_dir / "tiny-sd")

    def adapters_path(self) -> Path:
        return self.adapters_dir or (self.models_dir / "adapters")

    def limits(self) -> Limits:
        return Limits(max_side=self.max_side, max_steps=self.max_steps, default_steps=self.default_steps,
                      max_images_per_request=self.max_images_per_request, max_image_pixels=self.max_image_pixels,
                      max_finetune_steps=self.max_finetune_steps, max_training_examples=self.max_training_examples)


@dataclass
class DiffusionBackend:
    """Everything behind the servicer; ``load``/``close`` bracket the model's lifetime."""

    settings: Settings
    runner: DiffusersRunner
    engine: Engine
    finetuner: FineTuner

    def load(self) -> None:
        if not self.settings.model:
            folder = Path(self.settings.model_path())
            if not (folder / "model_index.json").exists():
                from services.diffusion.tiny import build_tiny_sd

                log.info("building the tiny Stable Diffusion model in %s", folder)
                build_tiny_sd(folder, preset=self.settings.tiny_preset)
        self.runner.load()
        threads = self.settings.torch_threads

        def on_worker_start() -> None:
            if threads:
                import torch

                torch.set_num_threads(threads)

        self.engine.start(on_worker_start)

    def close(self) -> None:
        self.engine.stop()
        self.runner.close()


def build_backend(settings: Settings) -> DiffusionBackend:
    device, dtype = settings.resolve_device_dtype()
    limits = settings.limits()
    registry = JobRegistry()
    runner = DiffusersRunner(settings.model_path(), device, dtype, settings.adapters_path())
    engine = Engine(runner, EngineConfig(settings.max_queue, settings.max_batch_images, settings.batching,
                                          max_queue_delay_s=settings.max_queue_delay_ms / 1000), registry)
    store = AdapterStore(settings.adapters_path())
    finetuner = FineTuner(runner, store, registry, limits, settings.data_root, wake=engine.wake)
    engine.attach_trainer(finetuner)
    return DiffusionBackend(settings, runner, engine, finetuner)


def build_service(settings: Settings) -> GrpcService:
    from services.diffusion.servicer import DiffusionServicer
    from unfragile.diffusion.v1 import diffusion_pb2_grpc as pb_grpc

    backend = build_backend(settings)
    return GrpcService(
        name="diffusion",
        full_name=FULL_NAME,
        servicer=DiffusionServicer(backend.engine, backend.finetuner, settings.limits()),
        add_to_server=pb_grpc.add_DiffusionServicer_to_server,
        load=backend.load,
        close=backend.close,
        admin_methods=frozenset({"StartFineTune"}),
    )
