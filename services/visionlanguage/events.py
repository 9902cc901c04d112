"""What the scheduler thread tells a waiting request, as typed events, and the one loop that waits.

Each request (a ``Job``) has its own event queue. The scheduler thread posts
``Queued`` (the place in the queue; 0 = running), ``Tokens`` (streamed text),
``SequenceDone`` (one sequence finished), ``TaskDone`` (an exclusive task's value) or
``Failed``; a cancellation callback posts ``CancelRequested``. The request's handler
thread reads them with ``Job.events_until_stopped``, which turns ``Failed`` and
cancellation into the error the client gets.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from common.errors import Internal, ResourceExhausted, UnfragileError, is_out_of_memory
from services.core.cancel import CancelToken

if TYPE_CHECKING:
    from services.visionlanguage.sequence import Seq

log = logging.getLogger(__name__)
POLL_S = 0.5  # backstop for deadlines that pass without a gRPC callback


@dataclass(frozen=True)
class Queued:
    position: int  # 1 = next in line; 0 = admitted to the running batch


@dataclass(frozen=True)
class Tokens:
    delta: str  # newly visible text (may be empty while text is held back)
    token_ids: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class SequenceDone:
    seq: Seq


@dataclass(frozen=True)
class TaskDone:
    value: Any


@dataclass(frozen=True)
class Failed:
    error: UnfragileError


@dataclass(frozen=True)
class CancelRequested:
    """The client cancelled or its deadline passed (posted by the cancellation callback)."""


Event = Queued | Tokens | SequenceDone | TaskDone | Failed | CancelRequested


class Job:
    """A request's work items share one Job: its cancel token and the queue its events travel on."""

    def __init__(self, cancel: CancelToken, stream: bool = False) -> None:
        self.cancel = cancel
        self.stream = stream  # per-token events wanted (StreamCaption)
        self.events: queue.Queue[Event] = queue.Queue()
        self.accepted = time.perf_counter()
        self.last_position = -1

    def post(self, event: Event) -> None:
        self.events.put(event)

    def events_until_stopped(self) -> Iterator[Event]:
        """Yield events as they come; raise the request's error on ``Failed`` or cancellation.

        The caller returns once it has what it waits for. The long poll timeout is only a
        backstop: cancellation posts an event, and idle wake-ups would steal the GIL from
        the scheduler thread between its many small torch calls.
        """
        while True:
            try:
                event: Event | None = self.events.get(timeout=POLL_S)
            except queue.Empty:
                event = None
            if isinstance(event, CancelRequested) or self.cancel.cancelled:
                raise self.cancel.error("generation")
            if isinstance(event, Failed):
                raise event.error
            if event is not None:
                yield event


def client_error(exc: Exception) -> UnfragileError:
    """What the client is told about a failed piece of work: typed errors as they are; running out
    of memory is RESOURCE_EXHAUSTED (retry later); anything else is a bug on our side, logged here
    and reported as INTERNAL without its details."""
    if isinstance(exc, UnfragileError):
        return exc
    if is_out_of_memory(exc):
        log.warning("out of memory: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return ResourceExhausted("the model ran out of device memory on this request; retry later or with a "
                                 "smaller request", retry_after_s=1.0)
    log.error("model execution failed", exc_info=exc)
    return Internal("model execution failed; the server logged the details")
