"""The scheduler queue's items: sequences, exclusive tasks and embedding work, and how exclusive work is taken."""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.visionlanguage.embedding import EmbedWork
from services.visionlanguage.events import Job, TaskDone
from services.visionlanguage.sequence import Seq


@dataclass
class Task:
    """Exclusive work run on the scheduler thread between decode steps."""

    job: Job
    fn: Callable[[], Any]


Item = Seq | Task | EmbedWork


def take_exclusive(queue: collections.deque[Item], max_embed_batch_size: int) -> list[Task | EmbedWork]:
    """Pop the task at the head, or the run of embedding work there (up to ``max_embed_batch_size`` items)."""
    first = queue.popleft()
    if not isinstance(first, EmbedWork):
        assert isinstance(first, Task)
        return [first]
    works: list[Task | EmbedWork] = [first]
    size = first.size
    while queue and isinstance(nxt := queue[0], EmbedWork):
        if size + nxt.size > max_embed_batch_size:
            break
        works.append(nxt)
        queue.popleft()
        size += nxt.size
    return works


def task_value(job: Job) -> Any:
    """Wait for the value of the job's exclusive work (raises its error, or the cancellation)."""
    return next(e.value for e in job.events_until_stopped() if isinstance(e, TaskDone))
