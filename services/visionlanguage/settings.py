"""VisionLanguage configuration, each setting declared once.

``EngineConfig`` (scheduling), ``RequestLimits`` (validation), ``RunnerOptions`` (model
execution) and ``JudgeOptions`` (the quality judge) are the parts the engine, the request
types, the runner and the judge receive; ``Settings``
composes them with the gRPC server and model bases (environment prefix ``UNFRAGILE_VL_``).
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from services.core.images import DEFAULT_MAX_PIXELS
from services.core.settings import GrpcServerSettings, ModelSettings, settings_config


class EngineConfig(BaseModel):
    """Continuous batching and caches of the VisionLanguage engine."""

    max_batch_size: int = Field(0, ge=0, le=256, description="Most sequences decoded together in one step; 0 = "
                                                           "derived at start from the memory free after loading "
                                                           "(see kv_cache_memory_fraction).")
    max_queue_delay_ms: float = Field(2.0, ge=0, description="With an empty batch, how long to wait for more "
                                                             "requests before starting (Triton's knob).")
    max_queue_size: int = Field(64, ge=1, description="Waiting work items beyond which requests get "
                                                      "RESOURCE_EXHAUSTED with a retry-after-ms hint.")
    max_embed_batch_size: int = Field(64, ge=1, description="Most images plus texts embedded in one model batch: "
                                                             "queued Embed/Similarity requests are combined up to "
                                                             "it (a larger request runs alone).")
    feature_cache_size: int = Field(256, ge=0, description="Images whose projected features are kept (LRU by "
                                                           "content hash); 0 disables the cache.")
    prefix_cache_size: int = Field(32, ge=0, description="Images whose prompt-prefix KV cache ('<s><image>[64 "
                                                        "slots]</image>') is kept for reuse (LRU); 0 = recompute. "
                                                        "Lowered at start when the entries would not fit a tenth "
                                                        "of the free memory.")
    kv_cache_memory_fraction: float = Field(
        0.5, gt=0, le=0.95, description="Share of the device memory free after loading that the running batch's KV "
        "cache may use when max_batch_size is 0: each sequence is counted at the whole model context, so the cache "
        "cannot outgrow it (at most 16 sequences on a CPU, 64 on a GPU).")
    preprocess_workers: int = Field(
        2, ge=0, le=64, description="Threads that resize and normalise request images while the scheduler thread "
        "runs the model; 0 = preprocess on the scheduler thread.")


class RequestLimits(BaseModel):
    """Bounds every request is validated against."""

    max_image_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="Largest image (width*height) accepted.")
    default_max_new_tokens: int = Field(32, ge=1, description="max_new_tokens when a request leaves it 0.")
    max_new_tokens_limit: int = Field(256, ge=1, description="Largest max_new_tokens a request may ask for.")


class RunnerOptions(BaseModel):
    """How the Kosmos-2 model is loaded and run."""

    model: str = Field("", description="Kosmos-2 folder or hub id (e.g. microsoft/kosmos-2-patch14-224); "
                                       "'' = <models_dir>/tiny-kosmos2, built on first start if missing.")
    quantize: str = Field("", description="'' (none) or 'int8': dynamic int8 quantization of Linear layers (CPU).")
    threads: int = Field(0, ge=0, description="torch intra-op threads; 0 keeps torch's default (all cores).")
    attn_implementation: str = Field("sdpa", pattern="^(sdpa|eager)$",
                                     description="'sdpa' (the default; AttentionMap requests, which need attention "
                                                 "weights, run with 'eager' alone between steps) or 'eager'.")
    kv_cache: str = Field("static", pattern="^(static|dynamic)$",
                          description="'static': each batch's KV cache is preallocated in blocks of 64 positions and "
                                      "decode steps write into it in place (what torch.compile / CUDA graphs need); "
                                      "'dynamic': transformers' DynamicCache, concatenated every step.")
    compile: str = Field("", description="'' = off; 'inductor' compiles the decode step with torch.compile (CUDA "
                                         "graphs on a GPU: mode 'reduce-overhead'); another torch.compile backend "
                                         "name (e.g. 'eager', 'aot_eager') traces without generating code. Needs "
                                         "kv_cache='static'.")


class JudgeOptions(BaseModel):
    """The quality judge served beside Kosmos-2 (the Judge RPC)."""

    judge_model: str = Field(
        "", description="CLIP-family dual encoder (folder or hub id, e.g. openai/clip-vit-large-patch14 or a SigLIP "
        "checkpoint) loaded beside Kosmos-2 on the same device and dtype to score quality probes (Judge RPC); "
        "'tiny' = <models_dir>/tiny-clip, a random-weight test judge built on first start if "
        "missing; '' = no judge: Judge answers FAILED_PRECONDITION and probes leave quality not measured.")


class Settings(RequestLimits, EngineConfig, RunnerOptions, JudgeOptions, ModelSettings, GrpcServerSettings):
    """VisionLanguage settings (environment prefix ``UNFRAGILE_VL_``)."""

    model_config = settings_config("UNFRAGILE_VL_")

    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one (tests).")
    metrics_port: int = Field(9101, ge=-1, le=65535, description="Prometheus port; 0 = any free, -1 = off.")
