"""VisionLanguage service wiring: ``build_service`` for the core server."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from services.core.names import full_name
from services.core.server import GrpcService
from services.core.settings import section
from services.visionlanguage.engine import Engine
from services.visionlanguage.servicer import VisionLanguageServicer
from services.visionlanguage.settings import EngineConfig, Settings
from services.visionlanguage.types import Limits
from unfragile.visionlanguage.v1 import visionlanguage_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from services.visionlanguage.batch import ModelRunner
    from services.visionlanguage.judge import JudgeService

log = logging.getLogger(__name__)
FULL_NAME = full_name("visionlanguage")
TINY_JUDGE = "tiny"  # judge_model value: the tiny random CLIP under models_dir (tests and demos)
__all__ = ["FULL_NAME", "Settings", "build_service", "resolve_model"]


def resolve_model(settings: Settings) -> str | Path:
    """The configured model, or the tiny offline one (built on first use)."""
    if settings.model:
        return settings.model
    folder = Path(settings.models_dir) / "tiny-kosmos2"
    if not (folder / "config.json").exists():
        from services.visionlanguage.tiny import build_tiny_kosmos2

        log.info("building the tiny Kosmos-2 into %s", folder)
        build_tiny_kosmos2(folder)
    return folder


def resolve_judge(settings: Settings) -> str | Path:
    """The configured judge, or (``judge_model=tiny``) the tiny offline CLIP, built on first use."""
    if settings.judge_model != TINY_JUDGE:
        return settings.judge_model
    folder = Path(settings.models_dir) / "tiny-clip"
    if not (folder / "config.json").exists():
        from services.visionlanguage.judge_tiny import build_tiny_clip

        log.info("building the tiny CLIP judge into %s", folder)
        build_tiny_clip(folder)
    return folder


def load_judge(settings: Settings) -> JudgeService:
    """The judge model of ``judge_model`` on the service's device and dtype."""
    from services.visionlanguage.judge import ClipJudge, JudgeService

    device, dtype = settings.resolve_device_dtype()
    return JudgeService(ClipJudge(resolve_judge(settings), device, dtype), settings.max_queue_size)


def build_service(settings: Settings, runner_factory: Callable[[], ModelRunner] | None = None) -> GrpcService:
    """Servicer now; model + engine in ``load`` (health flips to SERVING after it).

    ``runner_factory`` replaces model execution (tests script the model's tokens with it).
    """
    holder: dict[str, tuple[Engine, Limits]] = {}
    judges: dict[str, JudgeService] = {}

    def make_runner() -> ModelRunner:
        from services.visionlanguage.runner import Kosmos2Runner

        device, dtype = settings.resolve_device_dtype()
        return Kosmos2Runner(resolve_model(settings), device, dtype, quantize=settings.quantize,
                             threads=settings.threads, attn_implementation=settings.attn_implementation,
                             kv_cache=settings.kv_cache, compile=settings.compile)

    def load() -> None:
        runner = (runner_factory or make_runner)()
        engine = Engine(runner, section(settings, EngineConfig))
        if settings.judge_model:  # before the state: SERVING means the judge is ready too
            judges["judge"] = load_judge(settings)
        holder["state"] = (engine, section(settings, Limits, model_id=runner.model_id))

    def close() -> None:
        state = holder.pop("state", None)
        if state is not None:
            state[0].close()

    servicer = VisionLanguageServicer(lambda: holder.get("state"), lambda: judges.get("judge"))
    return GrpcService(name="visionlanguage", full_name=FULL_NAME, servicer=servicer,
                       add_to_server=pb_grpc.add_VisionLanguageServicer_to_server, load=load, close=close)
