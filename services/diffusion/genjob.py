"""A generation job: its request and seeds, the event stream of the client that sent it,
and what it reports while its batch runs (progress, previews) and when it ends.

The engine decides *when* a job runs and with whom; this module turns what happened into
the client's events, the job's snapshot (for WatchJob) and the metrics.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator
from typing import Any

from PIL import Image

from common.errors import UnfragileError
from services.core.cancel import CancelToken
from services.diffusion import metrics as m
from services.diffusion.events import GenerateEventT, OutputImage, PreviewEvent, ProgressEvent, ResultEvent, StatusEvent
from services.diffusion.jobs import CANCELLED, FAILED, QUEUED, SUCCEEDED, Job
from services.diffusion.types import GenerateRequest

Previewer = Callable[[Any, str], list[Image.Image]]


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

    @property
    def mode(self) -> str:
        return self.request.mode

    @property
    def sort_key(self) -> tuple[int, int]:
        return (-self.request.params.priority, self.seq)

    def __lt__(self, other: GenJob) -> bool:
        return self.sort_key < other.sort_key

    # ----------------------------------------------------------------- the client's stream
    def emit(self, event: GenerateEventT | UnfragileError) -> None:
        if not self.detached:
            self.stream.put(event)

    def events(self) -> Iterator[GenerateEventT]:
        """Status, progress, previews, then the result; an error ends the stream by raising."""
        try:
            while True:
                ev = self.stream.get()
                if isinstance(ev, UnfragileError):
                    raise ev
                yield ev
                if isinstance(ev, ResultEvent):
                    return
        finally:
            self.detached = True
            while not self.stream.empty():
                self.stream.get_nowait()

    def queued_at(self, position: int) -> None:
        if self.position != position:
            self.position = position
            self.emit(StatusEvent(QUEUED, position))
            self.update(position=position)

    # ----------------------------------------------------------------- while running
    def report_step(self, step: int, total: int, now: float, latents: Any, preview: Previewer) -> None:
        """Progress for ``step``, and previews of this job's rows of the batch latents when due."""
        elapsed = now - (self.started or now)
        eta = elapsed / step * (total - step)
        self.emit(ProgressEvent(step, total, elapsed * 1000, eta * 1000))
        self.update(step=step, total_steps=total, eta_ms=eta * 1000)
        p = self.request.params
        if p.preview_every and step % p.preview_every == 0 and step < total:
            for idx, img in enumerate(preview(latents, p.preview_mode)):
                self.emit(PreviewEvent(step, idx, img))
            if self.first_preview is None:
                self.first_preview = time.monotonic()
                m.FIRST_PREVIEW.labels(self.mode).observe(self.first_preview - self.submitted)

    # ----------------------------------------------------------------- endings
    def release_inputs(self) -> None:
        """Drop decoded input images once finished (finished jobs stay in the registry a while)."""
        self.request.image = self.request.mask = self.request.style_image = None
        self.request.controls.release()

    def finish_cancelled(self) -> None:
        err = self.token.error(f"job {self.id}")
        if self.update(state=CANCELLED, position=0, message=err.message):
            self.emit(err)
            self.release_inputs()
            m.JOBS_FINISHED.labels(self.mode, "cancelled").inc()

    def finish_error(self, err: UnfragileError) -> None:
        if self.update(state=FAILED, position=0, message=err.message):
            self.emit(err)
            self.release_inputs()
            m.JOBS_FINISHED.labels(self.mode, "failed").inc()

    def _control_maps(self) -> tuple[Image.Image, ...]:
        c = self.request.controls
        if not c.return_control_maps:
            return ()
        return tuple(x.control_map for x in c.controls if x.control_map is not None)

    def finish_ok(self, images: list[Image.Image], started: float, ended: float, batch_images: int) -> None:
        now = time.monotonic()
        outs = tuple(OutputImage(img, seed, img.width, img.height) for img, seed in zip(images, self.seeds))
        self.emit(ResultEvent(
            images=outs,
            queue_ms=(started - self.submitted) * 1000,
            inference_ms=(ended - started) * 1000,
            total_ms=(now - self.submitted) * 1000,
            first_preview_ms=((self.first_preview - self.submitted) * 1000) if self.first_preview else 0.0,
            batch_images=batch_images,
            steps=self.snapshot.total_steps,
            scheduler=self.request.params.scheduler,
            control_maps=self._control_maps(),
        ))
        self.update(state=SUCCEEDED, eta_ms=0.0)
        self.release_inputs()
        m.E2E_TIME.labels(self.mode).observe(now - self.submitted)
        m.IMAGES.labels(self.mode).inc(len(outs))
        m.JOBS_FINISHED.labels(self.mode, "succeeded").inc()
