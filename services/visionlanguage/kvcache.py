"""The transformers cache objects a decode step runs with, over a ``DecodeBatch``'s buffers.

- Static (the default): the batch's buffers have free columns; a ``StaticCache`` adopts them
  as they are, and each decode step writes its new position in place (``index_copy_``). No
  per-step allocation or copy, fixed shapes between growths: what ``torch.compile`` and CUDA
  graphs need. A batch without a free column grows by ``BLOCK`` columns first (one copy per
  ``BLOCK`` steps instead of one per step).
- Dynamic: a ``DynamicCache`` adopts the used columns; the step concatenates its position
  onto them (a copy of the whole cache every step), as transformers does by default.

Prefills always run with a ``DynamicCache``: Kosmos-2 builds its causal mask from the
prompt length, which a preallocated cache longer than the prompt does not match. Their
batches have no free column; the first static decode step grows them.
"""

from __future__ import annotations

from typing import Any

import torch

from services.visionlanguage.batch import DecodeBatch

BLOCK = 64  # columns a static cache grows by


def block_capacity(length: int) -> int:
    """Columns for a batch of ``length`` used columns plus at least one free one, in whole blocks."""
    return (length // BLOCK + 1) * BLOCK


def adopt_dynamic(keys: list[torch.Tensor], values: list[torch.Tensor]) -> Any:
    """A DynamicCache holding these tensors as they are.

    ``DynamicCache(ddp_cache_data=...)`` would ``torch.cat`` each onto an empty tensor: a
    full copy of the KV cache before every step. The forward pass never writes into them
    (it concatenates the new position into a new tensor), so the batch's tensors stay valid.
    """
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache()  # no config: building the layer list from it costs more than the layers do
    for k, v in zip(keys, values):
        layer = DynamicLayer()
        layer.lazy_initialization(k, v)
        layer.keys, layer.values = k, v
        cache.layers.append(layer)
    return cache


def adopt_static(batch: DecodeBatch, mark_static: bool = False) -> Any:
    """A StaticCache over the batch's buffers, writing its next position at column ``batch.length``.

    ``mark_static``: tell torch.compile the buffers keep their addresses (CUDA graphs).
    """
    from transformers import StaticCache
    from transformers.cache_utils import CacheLayerMixin, StaticLayer

    cache = StaticCache.__new__(StaticCache)  # the layers are given, not derived from a model config
    layers: list[CacheLayerMixin] = []
    for k, v in zip(batch.keys, batch.values):
        layer = StaticLayer(max_cache_len=batch.capacity)
        layer.dtype, layer.device = k.dtype, k.device
        layer.batch_size, layer.num_heads = int(k.shape[0]), int(k.shape[1])
        layer.k_head_dim, layer.v_head_dim = int(k.shape[-1]), int(v.shape[-1])
        layer.keys, layer.values = k, v
        layer.cumulative_length = torch.tensor(batch.length, dtype=torch.long, device=k.device)
        layer.is_initialized = True
        if mark_static:
            for t in (k, v, layer.cumulative_length):
                torch._dynamo.mark_static_address(t)
        layers.append(layer)
    super(StaticCache, cache).__init__(layers=list(layers))
    return cache


def taken(cache: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The per-layer key and value tensors a cache holds now."""
    return [layer.keys for layer in cache.layers], [layer.values for layer in cache.layers]
