"""Scheduling: a bounded priority queue, cross-request batching, one model worker thread.

Why one worker: the GPU (or the 2 CPU cores) is one resource; a single thread that owns
every model call (generation batches, previews, LoRA training steps) needs no locks
around the model, and interleaving is explicit: after each generation batch the worker
runs at most ONE training step, so a fine-tune never holds the queue for more than a
step.

Batching: when the worker takes the head of the queue it also takes every queued job
with the same ``batch_key`` (mode, size, steps, scheduler, guidance, strength,
adapters) up to ``max_batch_images`` images, and the runner denoises them in one UNet
batch, each image with its own prompt and seed. Results equal unbatched runs within
float tolerance (bit-identical only for the same batch composition).

Cancellation: a queued job leaves the queue at once; a running one is noticed at the
next denoising step (its stream ends, its slot is free); when every job of a batch is
cancelled the runner stops the pipeline immediately.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any, Protocol

from common.errors import (
    Internal,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
    UnfragileError,
    is_out_of_memory,
)
from services.core.cancel import CancelToken
from services.core.security import ANONYMOUS, Principal
from services.diffusion import metrics as m
from services.diffusion.jobs import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, Job, JobRegistry
from services.diffusion.runner import BatchItem, Interrupted, Runner
from services.diffusion.settings import EngineConfig
from services.diffusion.types import (
    GenerateEventT,
    GenerateRequest,
    JobSnapshot,
    OutputImage,
    PreviewEvent,
    ProgressEvent,
    ResultEvent,
    StatusEvent,
)

log = logging.getLogger(__name__)


class Trainer(Protocol):
    """Background work the worker interleaves with generation, one step at a time."""

    def has_work(self) -> bool: ...
    def step(self) -> None: ...


class GenJob(Job):
    """A generation job: its request, seeds and the event stream of the client that sent it."""

    def __init__(self, request: GenerateRequest, seeds: list[int], token: CancelToken, seq: int,
                 owner: str = "anonymous") -> None:
        super().__init__("generate", token, owner=owner)
        self.request = request
        self.seeds = seeds
        self.seq = seq
        self.key = request.batch_key()
        self.stream: queue.Queue[GenerateEventT | UnfragileError] = queue.Queue()
        self.first_preview: float | None = None
        self.position = 0
        self.detached = False  # the submitting stream went away: stop buffering events for it

    def emit(self, event: GenerateEventT | UnfragileError) -> None:
        if not self.detached:
            self.stream.put(event)

    def release_inputs(self) -> None:
        """Drop decoded input images once finished (finished jobs stay in the registry a while)."""
        self.request.image = self.request.mask = self.request.style_image = None

    @property
    def sort_key(self) -> tuple[int, int]:
        return (-self.request.params.priority, self.seq)

    def __lt__(self, other: GenJob) -> bool:
        return self.sort_key < other.sort_key


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
            self._finish_error(job, Unavailable("server is shutting down; retry on another replica"))
        for job in list(self._running):  # stops the running batch within one step
            job.token.cancel("server shutting down")
        if self._thread is not None:
            self._thread.join(timeout)
        m.WAITING.set(0)

    def wake(self) -> None:
        with self._cv:
            self._cv.notify_all()

    # ----------------------------------------------------------------- API
    def submit(self, request: GenerateRequest, token: CancelToken, owner: Principal = ANONYMOUS) -> GenJob:
        """Queue a generation job or raise (NotFound adapter, ResourceExhausted queue)."""
        if self._stop.is_set():
            raise Unavailable("server is shutting down; retry on another replica")
        if request.mode == "txt2img" and not (request.params.width and request.params.height):
            native = self.runner.native_size()
            request = replace(request, params=replace(
                request.params, width=request.params.width or native, height=request.params.height or native))
        self.runner.check_adapters(request.params.adapters)
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
        try:
            while True:
                ev = job.stream.get()
                if isinstance(ev, UnfragileError):
                    raise ev
                yield ev
                if isinstance(ev, ResultEvent):
                    return
        finally:
            job.detached = True
            while not job.stream.empty():
                job.stream.get_nowait()

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

    def queue_length(self) -> int:
        with self._cv:
            return len(self._heap)

    # ----------------------------------------------------------------- internals
    def _publish_positions(self) -> None:
        """Tell every waiting job its 1-based position when it changed (caller holds _cv)."""
        for pos, job in enumerate(sorted(self._heap), start=1):
            if job.position != pos:
                job.position = pos
                job.emit(StatusEvent(QUEUED, pos))
                job.update(position=pos)
        m.WAITING.set(len(self._heap))

    def _on_cancel(self, job: GenJob) -> None:
        with self._cv:
            if job in self._heap:
                self._heap.remove(job)
                heapq.heapify(self._heap)
                self._publish_positions()
            else:
                return  # running (the step hook notices) or finished
        self._finish_cancelled(job)

    def _finish_cancelled(self, job: GenJob) -> None:
        err = job.token.error(f"job {job.id}")
        if job.update(state=CANCELLED, position=0, message=err.message):
            job.emit(err)
            job.release_inputs()
            m.JOBS_FINISHED.labels(job.request.mode, "cancelled").inc()

    def _finish_error(self, job: GenJob, err: UnfragileError) -> None:
        if job.update(state=FAILED, position=0, message=err.message):
            job.emit(err)
            job.release_inputs()
            m.JOBS_FINISHED.labels(job.request.mode, "failed").inc()

    def _fillable(self, head: GenJob) -> bool:
        """Whether the compatible jobs waiting now leave ``head``'s batch short of full."""
        images = len(head.seeds) + sum(len(j.seeds) for j in self._heap
                                       if j.key == head.key and not j.finished and not j.token.cancelled)
        return images < self.config.max_batch_images

    def _take_batch(self) -> list[GenJob]:
        with self._cv:
            while self._heap and (self._heap[0].finished or self._heap[0].token.cancelled):
                stale = heapq.heappop(self._heap)
                if not stale.finished:
                    self._finish_cancelled(stale)
            if not self._heap:
                m.WAITING.set(0)
                return []
            head = heapq.heappop(self._heap)
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
                    if (job.key == head.key and not job.finished and not job.token.cancelled
                            and images + len(job.seeds) <= self.config.max_batch_images):
                        batch.append(job)
                        images += len(job.seeds)
                if len(batch) > 1:
                    self._heap = [j for j in self._heap if j not in batch]
                    heapq.heapify(self._heap)
            self._publish_positions()
        return batch

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

    def _run_batch(self, jobs: list[GenJob]) -> None:
        mode = jobs[0].request.mode
        t0 = time.monotonic()
        live = [j for j in jobs if j.update(state=RUNNING, position=0)]
        for job in live:
            m.QUEUE_TIME.labels(mode).observe(t0 - job.submitted)
            job.emit(StatusEvent(RUNNING))
        if not live:
            return
        images = sum(len(j.seeds) for j in jobs)
        m.BATCH_SIZE.labels(mode).observe(images)
        m.RUNNING.inc(len(jobs))
        self._running = list(jobs)
        last = [t0]

        def on_step(step: int, total: int, latents: Any) -> bool:
            now = time.monotonic()
            m.STEP_TIME.labels(mode).observe(now - last[0])
            last[0] = now
            alive, row = False, 0
            for job in jobs:
                n = len(job.seeds)
                if not job.finished:
                    if job.token.cancelled:
                        self._finish_cancelled(job)
                    else:
                        alive = True
                        self._report_step(job, step, total, now, latents[row:row + n])
                row += n
            return not alive

        try:
            outputs = self.runner.run([BatchItem(j.request, j.seeds) for j in jobs], on_step)
        except Interrupted:
            return
        except Exception as exc:
            if is_out_of_memory(exc) and len(jobs) > 1:
                log.warning("out of memory on a batch of %d images; retrying each job alone", images)
                for job in jobs:
                    if not job.finished:
                        self._run_batch([job])
                return
            self._fail_batch(jobs, exc, images)
            return
        finally:
            self._running = []
            m.RUNNING.dec(len(jobs))
            self._batch_s_ema = 0.8 * self._batch_s_ema + 0.2 * (time.monotonic() - t0)
        t1 = time.monotonic()
        for job, imgs in zip(jobs, outputs):
            if job.finished:
                continue
            if job.token.cancelled:
                self._finish_cancelled(job)
                continue
            self._finish_ok(job, imgs, t0, t1, images)

    def _report_step(self, job: GenJob, step: int, total: int, now: float, latents: Any) -> None:
        started = job.started or now
        elapsed = now - started
        eta = elapsed / step * (total - step)
        job.emit(ProgressEvent(step, total, elapsed * 1000, eta * 1000))
        job.update(step=step, total_steps=total, eta_ms=eta * 1000)
        p = job.request.params
        if p.preview_every and step % p.preview_every == 0 and step < total:
            for idx, img in enumerate(self.runner.preview(latents, p.preview_mode)):
                job.emit(PreviewEvent(step, idx, img))
            if job.first_preview is None:
                job.first_preview = time.monotonic()
                m.FIRST_PREVIEW.labels(job.request.mode).observe(job.first_preview - job.submitted)

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
            self._finish_error(job, err)

    def _finish_ok(self, job: GenJob, imgs: list[Any], t0: float, t1: float, batch_images: int) -> None:
        now = time.monotonic()
        outs = tuple(OutputImage(img, seed, img.width, img.height) for img, seed in zip(imgs, job.seeds))
        p = job.request.params
        result = ResultEvent(
            images=outs,
            queue_ms=(t0 - job.submitted) * 1000,
            inference_ms=(t1 - t0) * 1000,
            total_ms=(now - job.submitted) * 1000,
            first_preview_ms=((job.first_preview - job.submitted) * 1000) if job.first_preview else 0.0,
            batch_images=batch_images,
            steps=job.snapshot.total_steps,
            scheduler=p.scheduler,
        )
        job.emit(result)
        job.update(state=SUCCEEDED, eta_ms=0.0)
        job.release_inputs()
        m.E2E_TIME.labels(job.request.mode).observe(now - job.submitted)
        m.IMAGES.labels(job.request.mode).inc(len(outs))
        m.JOBS_FINISHED.labels(job.request.mode, "succeeded").inc()
