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

from services.core.names import full_name
from services.core.server import GrpcService
from services.core.settings import section
from services.diffusion.adapters import AdapterStore
from services.diffusion.engine import Engine
from services.diffusion.finetune import FineTuner
from services.diffusion.jobs import JobRegistry
from services.diffusion.runner import DiffusersRunner
from services.diffusion.settings import ControlConfig, EngineConfig, Limits, LoadConfig, Settings

log = logging.getLogger(__name__)

FULL_NAME = full_name("diffusion")
__all__ = ["FULL_NAME", "Settings", "build_backend", "build_service"]


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
                from services.diffusion.tiny import build_tiny

                log.info("building the tiny %s model in %s", self.settings.tiny_family, folder)
                build_tiny(self.settings.tiny_family, folder, preset=self.settings.tiny_preset)
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
    limits = section(settings, Limits)
    registry = JobRegistry()
    runner = DiffusersRunner(settings.model_path(), device, dtype, settings.adapters_path(),
                             section(settings, LoadConfig), section(settings, ControlConfig))
    engine = Engine(runner, section(settings, EngineConfig), registry)
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
        servicer=DiffusionServicer(backend.engine, backend.finetuner, section(settings, Limits)),
        add_to_server=pb_grpc.add_DiffusionServicer_to_server,
        load=backend.load,
        close=backend.close,
        admin_methods=frozenset({"StartFineTune"}),
    )
