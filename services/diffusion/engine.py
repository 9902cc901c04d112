"""Scheduling: a bounded priority queue, cross-request batching, one model worker thread.

Why one worker: the GPU (or the 2 CPU cores) is one resource; a single thread that owns
every model call (generation batches, previews, LoRA training steps) needs no locks
around the model, and interleaving is explicit: after each generation batch the worker
runs at most ONE training step, so a fine-tune never holds the queue for more than a
step.

Batching: when the worker takes the head of the queue it also takes every queued job
with the same ``batch_key`` (mode, size, steps, scheduler, guidance, strength,
adapters, control models with their scales and windows, IP-Adapter) up to
``max_batch_images`` images, and the runner denoises them in one UNet batch, each image
with its own prompt and seed. Results equal unbatched runs within float tolerance
(bit-identical only for the same batch composition).

Cancellation: a queued job leaves the queue at once; a running one is noticed at the
next denoising step (its stream ends, its slot is free); when every job of a batch is
cancelled the runner stops the pipeline immediately.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from PIL import Image

from common.errors import Internal, PermissionDenied, ResourceExhausted, Unavailable, UnfragileError, is_out_of_memory
from services.core.cancel import CancelToken
from services.core.devicememory import release_cached_memory
from services.core.modelinfo import ModelInfo
from services.core.security import ANONYMOUS, Principal
from services.diffusion import metrics as m
from services.diffusion.events import AdapterInfo, ControlModelInfo, GenerateEventT, JobSnapshot, StatusEvent
from services.diffusion.genjob import GenJob
from services.diffusion.jobs import RUNNING, JobRegistry
from services.diffusion.settings import EngineConfig
from services.diffusion.types import GenerateRequest

log = logging.getLogger(__name__)


# on_step(step (1-based), total steps, latents of the whole batch) -> True to stop now.
StepHook = Callable[[int, int, Any], bool]


class Interrupted(Exception):
    """Raised from the step callback when every request in the batch is cancelled."""


@dataclass
class BatchItem:
    """One request inside a batch, with the seeds of its images."""

    request: GenerateRequest
    seeds: list[int]


class Runner(Protocol):
    """What the engine needs from model execution (tests substitute a fake)."""

    def facts(self) -> ModelInfo: ...
    def prepare(self, request: GenerateRequest) -> GenerateRequest: ...
    def run(self, items: Sequence[BatchItem], on_step: StepHook) -> list[list[Image.Image]]: ...
    def preview(self, latents: Any, mode: str) -> list[Image.Image]: ...
    def list_adapters(self) -> list[AdapterInfo]: ...
    def list_controls(self) -> tuple[list[ControlModelInfo], list[str]]: ...


class Trainer(Protocol):
    """Background work the worker interleaves with generation, one step at a time."""

    def has_work(self) -> bool: ...
    def step(self) -> None: ...


class Engine:
    """Owns the queue and the model worker thread."""

    def __init__(self, runner: Runner, config: EngineConfig, registry: JobRegistry) -> None:
        self.runner = runner
        self.config = config
        self.registry = registry
        self._heap: list[GenJob] = []
        self._cv = threading.Condition()
        self._seq = itertools.count()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._trainer: Trainer | None = None
        self._batch_s_ema = 1.0
        self._running: list[GenJob] = []

    # ----------------------------------------------------------------- lifecycle
    def attach_trainer(self, trainer: Trainer) -> None:
        self._trainer = trainer

    def start(self, on_thread_start: Callable[[], None] | None = None) -> None:
        """Start the worker; ``on_thread_start`` runs first on it (e.g. torch thread settings)."""

        def main() -> None:
            if on_thread_start is not None:
                on_thread_start()
            self._loop()

        self._thread = threading.Thread(target=main, name="diffusion-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self.wake()
        with self._cv:
            pending, self._heap = list(self._heap), []
        for job in pending:
            job.finish_error(Unavailable("server is shutting down; retry on another replica"))
        for job in list(self._running):  # stops the running batch within one step
            job.token.cancel("server shutting down")
        if self._thread is not None:
            self._thread.join(timeout)
        m.WAITING.set(0)

    @property
    def waiting(self) -> int:
        """Jobs waiting in this engine's queue now (the gauge of the same name is process-wide)."""
        with self._cv:
            return len(self._heap)

    def wake(self) -> None:
        with self._cv:
            self._cv.notify_all()

    # ----------------------------------------------------------------- API
    def submit(self, request: GenerateRequest, token: CancelToken, owner: Principal = ANONYMOUS) -> GenJob:
        """Queue a generation job or raise (bad scheduler / adapter for the model, queue full)."""
        if self._stop.is_set():
            raise Unavailable("server is shutting down; retry on another replica")
        request = self.runner.prepare(request)  # the model's size, scheduler and adapters
        p = request.params
        base = p.seed if p.seed is not None else secrets.randbits(32)
        seeds = [(base + i) % 2**64 for i in range(p.num_images)]
        with self._cv:
            if len(self._heap) >= self.config.max_queue:
                retry = max(0.5, self._batch_s_ema * len(self._heap) / max(1, self.config.max_batch_images))
                raise ResourceExhausted(
                    f"generation queue is full ({len(self._heap)} jobs waiting, limit {self.config.max_queue}); "
                    f"retry in about {retry:.1f}s", retry_after_s=retry)
            job = GenJob(request, seeds, token, next(self._seq), owner.name)
            self.registry.add(job)
            heapq.heappush(self._heap, job)
            self._publish_positions()
            self._cv.notify_all()
        token.on_cancel(lambda: self._on_cancel(job))
        return job

    def events(self, job: GenJob) -> Iterator[GenerateEventT]:
        """The submitting client's stream: status, progress, previews, then the result."""
        return job.events()

    def watch(self, job_id: str, token: CancelToken) -> Iterator[JobSnapshot]:
        """Any job's snapshots (generation or fine-tune) until it finishes or ``token`` is cancelled."""
        return self.registry.get(job_id).watch(token)

    def cancel(self, job_id: str, caller: Principal = ANONYMOUS) -> JobSnapshot:
        """Cancel any job by id; waits (briefly) until it has actually stopped.

        Callers may cancel their own jobs; other callers' jobs need the admin role.
        """
        job = self.registry.get(job_id)
        if not caller.is_admin and caller.shared:
            raise PermissionDenied(f"cancelling job {job_id} needs a bearer token: callers without one share a "
                                   f"single identity and cannot own jobs")
        if not caller.is_admin and caller.name != job.owner:
            raise PermissionDenied(f"job {job_id} belongs to another caller; cancelling it needs the admin role")
        job.token.cancel("cancelled by CancelJob")
        self.wake()
        give_up = CancelToken(deadline=time.monotonic() + self.config.cancel_wait_s)
        for snap in job.watch(give_up, poll_s=0.05):  # ends at a terminal state or when give_up expires
            if snap.terminal:
                return snap
        return job.snapshot

    def model_info(self) -> ModelInfo:
        return self.runner.facts()

    def list_adapters(self) -> list[AdapterInfo]:
        return self.runner.list_adapters()

    def list_controls(self) -> tuple[list[ControlModelInfo], list[str]]:
        return self.runner.list_controls()

    def queue_length(self) -> int:
        with self._cv:
            return len(self._heap)

    # ----------------------------------------------------------------- queue
    def _publish_positions(self) -> None:
        """Tell every waiting job its 1-based position when it changed (caller holds _cv)."""
        for pos, job in enumerate(sorted(self._heap), start=1):
            job.queued_at(pos)
        m.WAITING.set(len(self._heap))

    def _on_cancel(self, job: GenJob) -> None:
        with self._cv:
            if job not in self._heap:
                return  # running (the step hook notices) or finished
            self._heap.remove(job)
            heapq.heapify(self._heap)
            self._publish_positions()
        job.finish_cancelled()

    def _compatible(self, head: GenJob, job: GenJob) -> bool:
        return job.key == head.key and not job.finished and not job.token.cancelled

    def _fillable(self, head: GenJob) -> bool:
        """Whether the compatible jobs waiting now leave ``head``'s batch short of full."""
        images = len(head.seeds) + sum(len(j.seeds) for j in self._heap if self._compatible(head, j))
        return images < self.config.max_batch_images

    def _pop_head(self) -> GenJob | None:
        """The next live job (caller holds _cv); cancelled ones on top are finished on the way."""
        while self._heap and (self._heap[0].finished or self._heap[0].token.cancelled):
            stale = heapq.heappop(self._heap)
            if not stale.finished:
                stale.finish_cancelled()
        if not self._heap:
            m.WAITING.set(0)
            return None
        return heapq.heappop(self._heap)

    def _take_batch(self) -> list[GenJob]:
        with self._cv:
            head = self._pop_head()
            if head is None:
                return []
            if self.config.batching and self.config.max_queue_delay_ms > 0:
                deadline = time.monotonic() + self.config.max_queue_delay_ms / 1000
                while (self._fillable(head) and not self._stop.is_set() and not head.token.cancelled
                       and (remaining := deadline - time.monotonic()) > 0):
                    self._cv.wait(remaining)  # a submit notifies: re-check how full the batch would be
            batch, images = [head], len(head.seeds)
            if self.config.batching:
                for job in sorted(self._heap):
                    if images >= self.config.max_batch_images:
                        break
                    if self._compatible(head, job) and images + len(job.seeds) <= self.config.max_batch_images:
                        batch.append(job)
                        images += len(job.seeds)
                if len(batch) > 1:
                    self._heap = [j for j in self._heap if j not in batch]
                    heapq.heapify(self._heap)
            self._publish_positions()
        return batch

    # ----------------------------------------------------------------- worker
    def _loop(self) -> None:
        while not self._stop.is_set():
            batch = self._take_batch()
            if batch:
                self._run_batch(batch)
            trainer = self._trainer
            if trainer is not None and trainer.has_work():
                try:
                    trainer.step()
                except Exception:
                    log.exception("fine-tune step failed")
                continue
            if not batch:
                with self._cv:
                    if not self._heap and not self._stop.is_set():
                        self._cv.wait(0.5)

    def _start_batch(self, jobs: list[GenJob], started: float) -> list[GenJob]:
        live = [j for j in jobs if j.update(state=RUNNING, position=0)]
        for job in live:
            m.QUEUE_TIME.labels(job.mode).observe(started - job.submitted)
            job.emit(StatusEvent(RUNNING))
        return live

    def _step_hook(self, jobs: list[GenJob]) -> StepHook:
        """Per step: finish cancelled jobs, report the others; True (stop) once none is alive."""
        last = [time.monotonic()]
        mode = jobs[0].mode

        def on_step(step: int, total: int, latents: Any) -> bool:
            now = time.monotonic()
            m.STEP_TIME.labels(mode).observe(now - last[0])
            last[0] = now
            alive, row = False, 0
            for job in jobs:
                n = len(job.seeds)
                if not job.finished:
                    if job.token.cancelled:
                        job.finish_cancelled()
                    else:
                        alive = True
                        job.report_step(step, total, now, latents[row:row + n], self.runner.preview)
                row += n
            return not alive

        return on_step

    def _run_batch(self, jobs: list[GenJob]) -> None:
        started = time.monotonic()
        if not self._start_batch(jobs, started):
            return
        images = sum(len(j.seeds) for j in jobs)
        m.BATCH_SIZE.labels(jobs[0].mode).observe(images)
        m.RUNNING.inc(len(jobs))
        self._running = list(jobs)
        outputs: list[list[Image.Image]] = []
        outcome = "done"
        try:
            outputs = self.runner.run([BatchItem(j.request, j.seeds) for j in jobs], self._step_hook(jobs))
        except Interrupted:
            outcome = "interrupted"
        except Exception as exc:
            outcome = "out of memory" if is_out_of_memory(exc) else "failed"
            if outcome == "failed" or len(jobs) == 1:
                self._fail_batch(jobs, exc, images)
        finally:
            self._running = []
            m.RUNNING.dec(len(jobs))
            self._batch_s_ema = 0.8 * self._batch_s_ema + 0.2 * (time.monotonic() - started)
        if outcome == "out of memory":
            # Only now, outside the handler, are the failed call's frames (and its tensors) gone.
            release_cached_memory()
            if len(jobs) > 1:
                log.warning("out of memory on a batch of %d images; retrying each job alone", images)
                for job in jobs:
                    if not job.finished:
                        self._run_batch([job])
        if outcome != "done":
            return
        ended = time.monotonic()
        for job, imgs in zip(jobs, outputs):
            if job.token.cancelled and not job.finished:
                job.finish_cancelled()
            elif not job.finished:
                job.finish_ok(imgs, started, ended, images)

    def _fail_batch(self, jobs: list[GenJob], exc: BaseException, images: int) -> None:
        err: UnfragileError
        if isinstance(exc, UnfragileError):
            err = exc
        elif is_out_of_memory(exc):
            w, h = jobs[0].request.width, jobs[0].request.height
            err = ResourceExhausted(f"out of memory generating {images} image(s) of {w}x{h}; retry with fewer or "
                                    f"smaller images, or later", retry_after_s=5.0)
        else:
            log.exception("generation batch failed", exc_info=exc)
            err = Internal(f"generation failed ({type(exc).__name__}); the server logged the details")
        for job in jobs:
            job.finish_error(err)
