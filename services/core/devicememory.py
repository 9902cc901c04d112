"""Device memory: how much is free, and giving back what a failed call left cached.

After an out-of-memory error the tensors of the failed call live on as long as the
exception's traceback holds its frames. Callers therefore release memory *after* leaving
the ``except`` block (the exception and its frames are gone then): ``release_cached_memory``
collects reference cycles and returns the caching allocator's free blocks to the driver,
so a retry at a smaller batch finds the memory. Nothing here imports torch unless the
process already did (the gateway and MatchGraph run without it).
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from typing import Any

log = logging.getLogger(__name__)


def release_cached_memory() -> None:
    """Collect garbage, then empty torch's CUDA cache (a no-op when CUDA was never initialised)."""
    gc.collect()
    torch: Any = sys.modules.get("torch")
    if torch is not None:
        torch.cuda.empty_cache()


def host_available_bytes() -> int:
    """Memory the kernel can give this process without swapping (``MemAvailable``), in bytes."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def free_bytes(device: Any) -> int:
    """Free memory of ``device`` (a torch.device): ``torch.cuda.mem_get_info`` on CUDA, else the host's."""
    if getattr(device, "type", "cpu") == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return host_available_bytes()
