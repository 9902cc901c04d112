"""VisionLanguage service wiring: typed settings and ``build_service`` for the core server."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.core.images import DEFAULT_MAX_PIXELS
from services.core.server import GrpcService
from services.core.settings import ServiceSettings
from services.visionlanguage.engine import Engine, EngineConfig
from services.visionlanguage.servicer import VisionLanguageServicer
from services.visionlanguage.types import Limits
from unfragile.visionlanguage.v1 import visionlanguage_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from services.visionlanguage.runner import ModelRunner

log = logging.getLogger(__name__)
FULL_NAME = "unfragile.visionlanguage.v1.VisionLanguage"


class Settings(ServiceSettings):
    """VisionLanguage settings (environment prefix UNFRAGILE_VL_)."""

    model_config = SettingsConfigDict(env_prefix="UNFRAGILE_VL_", extra="ignore", protected_namespaces=())

    model: str = Field("", description="Kosmos-2 folder or hub id (e.g. microsoft/kosmos-2-patch14-224); "
                                       "'' = <models_dir>/tiny-kosmos2, built on first start if missing.")
    quantize: str = Field("", description="'' (none) or 'int8': dynamic int8 quantization of Linear layers (CPU).")
    threads: int = Field(0, ge=0, description="torch intra-op threads; 0 keeps torch's default (all cores).")
    attn_implementation: str = Field("eager", description="'eager' (needed for attention maps; the default) or "
                                                          "'sdpa' (switched to eager only for AttentionMap).")
    max_batch_size: int = Field(16, ge=1, le=256, description="Most sequences decoded together in one step.")
    max_queue_delay_ms: float = Field(2.0, ge=0, description="With an empty batch, how long to wait for more "
                                                             "requests before starting (Triton's knob).")
    max_queue_size: int = Field(64, ge=1, description="Waiting work items beyond which requests get "
                                                      "RESOURCE_EXHAUSTED with a retry-after-ms hint.")
    feature_cache_size: int = Field(256, ge=0, description="Images whose projected features are kept (LRU by "
                                                           "content hash); 0 disables the cache.")
    prefix_cache_size: int = Field(32, ge=0, description="Images whose prompt-prefix KV cache ('<s><image>[64 "
                                                        "slots]</image>') is kept for reuse (LRU); 0 = recompute.")
    default_max_new_tokens: int = Field(32, ge=1, description="max_new_tokens when a request leaves it 0.")
    max_new_tokens_limit: int = Field(256, ge=1, description="Largest max_new_tokens a request may ask for.")
    max_image_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="Largest image (width*height) accepted.")


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


def build_service(settings: Settings, runner_factory: Callable[[], ModelRunner] | None = None) -> GrpcService:
    """Servicer now; model + engine in ``load`` (health flips to SERVING after it).

    ``runner_factory`` replaces model execution (tests script the model's tokens with it).
    """
    holder: dict[str, object] = {}

    def make_runner() -> ModelRunner:
        from services.visionlanguage.runner import Kosmos2Runner

        device, dtype = settings.resolve_device_dtype()
        return Kosmos2Runner(resolve_model(settings), device, dtype, quantize=settings.quantize,
                             threads=settings.threads, attn_implementation=settings.attn_implementation)

    def load() -> None:
        runner = (runner_factory or make_runner)()
        engine = Engine(runner, EngineConfig(settings.max_batch_size, settings.max_queue_delay_ms,
                                             settings.max_queue_size, settings.feature_cache_size,
                                             settings.prefix_cache_size))
        limits = Limits(runner.model_id, settings.max_image_pixels, settings.default_max_new_tokens,
                        settings.max_new_tokens_limit)
        holder["state"] = (engine, limits)

    def close() -> None:
        state = holder.pop("state", None)
        if state is not None:
            state[0].close()  # type: ignore[index]

    servicer = VisionLanguageServicer(lambda: holder.get("state"))  # type: ignore[arg-type, return-value]
    return GrpcService(name="visionlanguage", full_name=FULL_NAME, servicer=servicer,
                       add_to_server=pb_grpc.add_VisionLanguageServicer_to_server, load=load, close=close)
