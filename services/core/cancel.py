"""Cancellation tokens that long-running work checks every step.

A gRPC client that cancels, or whose deadline passes, makes ``context.is_active()``
false and fires ``context.add_callback``; ``CancelToken.from_context`` turns both into
one flag that model loops (decode steps, denoise steps, training steps) poll cheaply.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from common.errors import Cancelled, DeadlineExceeded, UnfragileError


class CancelToken:
    """A thread-safe, one-way cancellation flag with an optional deadline."""

    def __init__(self, deadline: float | None = None) -> None:
        self._event = threading.Event()
        self._deadline = deadline  # time.monotonic() value, or None
        self._reason = "cancelled"
        self._callbacks: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    @classmethod
    def from_context(cls, context: Any) -> CancelToken:
        """Bind to a grpc ServicerContext: client cancel and deadline both cancel."""
        remaining = context.time_remaining() if context is not None else None
        deadline = time.monotonic() + remaining if remaining is not None else None
        token = cls(deadline=deadline)
        if context is not None:
            context.add_callback(lambda: token.cancel("client cancelled or disconnected"))
        return token

    def cancel(self, reason: str = "cancelled") -> None:
        with self._lock:
            if self._event.is_set():
                return
            self._reason = reason
            self._event.set()
            callbacks = list(self._callbacks)
        for cb in callbacks:
            cb()

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once when cancelled (immediately if already cancelled)."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)
                return
        callback()

    @property
    def deadline_passed(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    @property
    def cancelled(self) -> bool:
        return self._event.is_set() or self.deadline_passed

    @property
    def reason(self) -> str:
        return "deadline exceeded" if self.deadline_passed and not self._event.is_set() else self._reason

    def error(self, what: str = "request") -> UnfragileError:
        """Why ``what`` stopped: DEADLINE_EXCEEDED once the deadline passed (gRPC fires the
        cancel callback for both), else CANCELLED with the reason given to ``cancel``."""
        if self.deadline_passed:
            return DeadlineExceeded(f"{what} stopped: its deadline passed before the work finished")
        return Cancelled(f"{what} stopped: {self._reason}")

    def raise_if_cancelled(self, what: str = "request") -> None:
        if self.cancelled:
            raise self.error(what)

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds, waking early on cancellation."""
        return self._event.wait(timeout)
