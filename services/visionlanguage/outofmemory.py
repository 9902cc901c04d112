"""Running out of device memory: fail only what it hit, free the memory, retry the rest smaller.

``attempt`` runs one model call and turns an out-of-memory error (torch's
``OutOfMemoryError``, or a runtime error that says so) into the ``OUT_OF_MEMORY`` value. It
frees memory only after leaving the ``except`` block: until then the exception's traceback
keeps the failed call's frames, and with them its tensors, alive. The engine then fails the
requests the call was for with RESOURCE_EXHAUSTED (or, for a prefill, puts half of them back
in the queue) and lowers its ``BatchLimit``, so what is still waiting runs at a smaller batch.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from common.errors import ResourceExhausted, is_out_of_memory
from services.core.devicememory import release_cached_memory
from services.visionlanguage import metrics as m

log = logging.getLogger(__name__)
T = TypeVar("T")
RECOVER_STEPS = 256  # decode steps without running out of memory before the limit grows back by one


class _Failed(enum.Enum):
    OUT_OF_MEMORY = "out of memory"


OUT_OF_MEMORY = _Failed.OUT_OF_MEMORY


def attempt(stage: str, fn: Callable[..., T], *args: Any) -> T | _Failed:
    """``fn(*args)``, or ``OUT_OF_MEMORY`` (memory already released) when it ran out of memory."""
    try:
        return fn(*args)
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        log.warning("out of memory in %s: %s", stage, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    # Outside the except block: the exception, its traceback and the failed call's frames are gone.
    m.OUT_OF_MEMORY.labels(stage).inc()
    release_cached_memory()
    return OUT_OF_MEMORY


def exhausted(rows: int) -> ResourceExhausted:
    """What a request hit by an out-of-memory step is told."""
    return ResourceExhausted(f"the model ran out of device memory on a batch of {rows} sequence(s); the server now "
                             f"runs smaller batches: retry", retry_after_s=1.0)


class BatchLimit:
    """How many sequences the engine admits: the configured limit, lowered on running out of memory
    and grown back by one every ``RECOVER_STEPS`` decode steps that do not."""

    def __init__(self, ceiling: int) -> None:
        self.ceiling = self.value = ceiling
        self._ok = 0

    def lower(self, to: int) -> None:
        self.value = max(1, min(self.value, to))
        self._ok = 0
        m.BATCH_LIMIT.set(self.value)

    def step_ok(self) -> None:
        if self.value < self.ceiling:
            self._ok += 1
            if self._ok >= RECOVER_STEPS:
                self.value += 1
                self._ok = 0
                m.BATCH_LIMIT.set(self.value)
