"""Batch and cache limits derived from the memory the device has free after loading.

The running batch's KV cache is the memory that grows with load: every sequence holds
``2 x layers x hidden x bytes`` per position (192 KiB for the real Kosmos-2 in fp16), up to
the whole model context (2048 positions: 384 MiB). A fixed default batch limit either
wastes a large card or lets the cache outgrow a small one, so ``max_batch_size=0`` counts
each sequence at the whole context and admits as many as fit ``kv_cache_memory_fraction``
of the free memory (no request can then make the cache outgrow it), capped where batching
stops paying (compute-bound CPUs) and at what one scheduler thread usefully drives. The
image-prefix cache keeps 67 positions per image and may use a tenth of the free memory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from services.visionlanguage.settings import EngineConfig

if TYPE_CHECKING:
    from services.visionlanguage.batch import ModelRunner

log = logging.getLogger(__name__)

CPU_BATCH_CAP = 16  # a CPU decode step is compute-bound already at small batches
GPU_BATCH_CAP = 64
PREFIX_SHARE = 0.1  # of the free memory, for the image-prefix KV cache
PREFIX_POSITIONS = 67  # '<s><image>[64 slots]</image>'


@dataclass(frozen=True)
class MemoryLimits:
    max_batch_size: int
    prefix_cache_size: int
    note: str  # how they were chosen (ModelInfo details, the start-up log)


def kv_bytes_per_position(layers: int, hidden: int, element_size: int) -> int:
    """Keys and values of one position in every layer."""
    return 2 * layers * hidden * element_size


def derive_limits(free_bytes: int, per_position: int, context: int, fraction: float, gpu: bool,
                  max_batch_size: int = 0, prefix_cache_size: int = 0) -> MemoryLimits:
    """The batch limit (``max_batch_size=0``: derived) and the prefix cache size that fit ``free_bytes``.

    ``per_position``: KV bytes of one position; ``context``: positions one sequence may hold.
    A configured (non-zero) batch limit is kept as it is; the prefix cache is lowered to what fits.
    """
    per_sequence = per_position * context
    if max_batch_size > 0:
        batch, how = max_batch_size, f"max_batch_size {max_batch_size} (set)"
    else:
        cap = GPU_BATCH_CAP if gpu else CPU_BATCH_CAP
        fits = int(free_bytes * fraction) // per_sequence
        batch = max(1, min(cap, fits))
        how = (f"max_batch_size {batch}: {fraction:g} of {free_bytes / 2**30:.1f} GiB free / "
               f"{per_sequence / 2**20:.0f} MiB per sequence at the full context of {context}"
               f"{f', capped at {cap}' if fits > cap else ''}")
    prefix_fits = int(free_bytes * PREFIX_SHARE) // (per_position * PREFIX_POSITIONS)
    prefix = min(prefix_cache_size, prefix_fits)
    if prefix < prefix_cache_size:
        how += f"; prefix_cache_size lowered from {prefix_cache_size} to {prefix} (a tenth of the free memory)"
    return MemoryLimits(batch, prefix, how)


def fit_to_memory(config: EngineConfig, runner: ModelRunner) -> tuple[EngineConfig, str]:
    """``config`` with the batch limit (when 0) and the prefix cache fitted to the runner's free memory."""
    limits = derive_limits(runner.free_memory(), runner.kv_bytes_per_position(), runner.max_context,
                           config.kv_cache_memory_fraction, gpu=runner.info().device.startswith("cuda"),
                           max_batch_size=config.max_batch_size, prefix_cache_size=config.prefix_cache_size)
    log.info("VisionLanguage limits: %s", limits.note)
    return config.model_copy(update={"max_batch_size": limits.max_batch_size,
                                     "prefix_cache_size": limits.prefix_cache_size}), limits.note
