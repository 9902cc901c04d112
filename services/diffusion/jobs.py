"""Jobs with ids that clients can watch and cancel (generation and fine-tuning alike).

A job publishes a ``JobSnapshot`` on every change to any number of watchers
(WatchJob streams); a registry finds jobs by id and forgets old finished ones.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from common.errors import NotFound
from services.core.cancel import CancelToken
from services.diffusion.events import JobSnapshot
from unfragile.common.v1 import common_pb2 as cpb

QUEUED, RUNNING = cpb.JOB_STATE_QUEUED, cpb.JOB_STATE_RUNNING
SUCCEEDED, FAILED, CANCELLED = cpb.JOB_STATE_SUCCEEDED, cpb.JOB_STATE_FAILED, cpb.JOB_STATE_CANCELLED


def new_job_id(kind: str) -> str:
    return f"{'ft' if kind == 'finetune' else 'gen'}-{uuid.uuid4().hex[:16]}"


class Job:
    """State shared by every job kind; thread-safe, observable."""

    def __init__(self, kind: str, token: CancelToken | None = None, adapter_name: str = "",
                 owner: str = "anonymous", job_id: str | None = None) -> None:
        self.id = job_id or new_job_id(kind)  # an explicit id: a job recovered from the journal
        self.owner = owner  # caller name (services.core.security) for CancelJob permissions
        self.token = token or CancelToken()
        self.submitted = time.monotonic()
        self.started: float | None = None
        self._lock = threading.Lock()
        self._snap = JobSnapshot(job_id=self.id, kind=kind, state=QUEUED, adapter_name=adapter_name)
        self._watchers: list[queue.Queue[JobSnapshot]] = []

    @property
    def snapshot(self) -> JobSnapshot:
        return self._snap

    @property
    def finished(self) -> bool:
        return self._snap.terminal

    def update(self, **changes: Any) -> bool:
        """Apply changes and notify watchers; False (and nothing changes) once finished."""
        with self._lock:
            if self._snap.terminal:
                return False
            if changes.get("state") == RUNNING and self.started is None:
                self.started = time.monotonic()
            if self.started is not None and "elapsed_ms" not in changes:
                changes["elapsed_ms"] = (time.monotonic() - self.started) * 1000
            self._snap = replace(self._snap, **changes)
            watchers = list(self._watchers)
            snap = self._snap
            self._persist(snap)  # before anyone is told: what a watcher saw is never lost in a crash
        for w in watchers:
            w.put(snap)
        return True

    def _persist(self, snap: JobSnapshot) -> None:
        """Hook for jobs that outlive the process (fine-tunes journal their state)."""

    def watch(self, token: CancelToken | None = None, poll_s: float = 0.25) -> Iterator[JobSnapshot]:
        """Current snapshot, then every change, ending after a terminal one (or on cancel)."""
        q: queue.Queue[JobSnapshot] = queue.Queue()
        with self._lock:
            self._watchers.append(q)
            q.put(self._snap)
        try:
            while True:
                try:
                    snap = q.get(timeout=poll_s)
                except queue.Empty:
                    if token is not None and token.cancelled:
                        return
                    continue
                yield snap
                if snap.terminal:
                    return
        finally:
            with self._lock:
                self._watchers.remove(q)


class JobRegistry:
    """Jobs by id. Keeps every live job and the most recent ``keep_finished`` finished ones."""

    def __init__(self, keep_finished: int = 1000) -> None:
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self.keep_finished = keep_finished

    def add(self, job: Job) -> Job:
        with self._lock:
            self._jobs[job.id] = job
            finished = [k for k, j in self._jobs.items() if j.finished]
            for k in finished[: max(0, len(finished) - self.keep_finished)]:
                del self._jobs[k]
        return job

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}: it never existed or finished long ago")
        return job

    def all(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())
