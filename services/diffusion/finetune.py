"""LoRA fine-tuning jobs, run one step at a time on the engine's worker thread.

Why steps and not a thread: the base UNet is shared with serving (LoRA layers are added
to it under a private adapter name, and generation batches switch the active adapters
back to what each request asked for), so training must never overlap a generation
batch. The engine calls ``step()`` between batches; a queued generation request waits
for at most one training step.

SD 1.x/2.x and SDXL train (LoRA on the UNet); SD 3 answers FAILED_PRECONDITION. Adapters
are saved with the family pipeline's ``save_lora_weights`` as safetensors under
``adapters_dir/<name>/`` (plus ``meta.json``), written to a temporary folder first and
swapped in, so a crash never leaves half an adapter; they survive restarts and are
loaded per request with ``load_lora_weights`` without reloading the base model.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path

from common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, PermissionDenied, UnfragileError
from services.core.images import decode_image
from services.diffusion import metrics as m
from services.diffusion.adapters import AdapterStore
from services.diffusion.events import JobSnapshot
from services.diffusion.jobs import CANCELLED, FAILED, RUNNING, SUCCEEDED, Job, JobRegistry
from services.diffusion.journal import STATE_NAMES, JobJournal
from services.diffusion.runner import DiffusersRunner
from services.diffusion.training import LoraTrainingRun
from services.diffusion.types import FineTuneRequest, Limits, TrainingExample, confined_folder

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def load_folder(folder: Path, root: Path, limits: Limits) -> list[TrainingExample]:
    """Image files of ``folder`` with the caption in ``<stem>.txt`` (empty if missing)."""
    base = root.resolve()
    out = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        real = path.resolve()
        if base not in real.parents:
            raise PermissionDenied(f"{path.name} links outside the data root")
        caption_file = path.with_suffix(".txt")
        caption = caption_file.read_text().strip() if caption_file.is_file() else ""
        out.append(TrainingExample(decode_image(real.read_bytes(), max_pixels=limits.max_image_pixels,
                                                field=path.name), caption))
        if len(out) > limits.max_training_examples:
            raise InvalidArgument(f"data_folder has more than {limits.max_training_examples} images")
    if not out:
        raise InvalidArgument(f"data_folder {folder.name!r} holds no images ({', '.join(IMAGE_SUFFIXES)}): "
                              f"the training set is empty")
    return out


class FineTuneJob(Job):
    def __init__(self, req: FineTuneRequest, examples: list[TrainingExample], owner: str,
                 journal: JobJournal | None = None) -> None:
        super().__init__("finetune", adapter_name=req.adapter_name, owner=owner)
        self.req = req
        self.examples = examples
        self.losses: list[float] = []
        self.journal = journal

    def _persist(self, snap: JobSnapshot) -> None:
        if self.journal is not None:
            self.journal.write(self, snap)


class FineTuner:
    """Queue of fine-tune jobs; ``step()`` advances the current one by one training step."""

    def __init__(self, runner: DiffusersRunner, store: AdapterStore, registry: JobRegistry, limits: Limits,
                 data_root: Path | None, wake: Callable[[], None] = lambda: None) -> None:
        self.runner, self.store, self.registry = runner, store, registry
        self.limits, self.data_root, self.wake = limits, data_root, wake
        self._pending: collections.deque[FineTuneJob] = collections.deque()
        self._current: tuple[FineTuneJob, LoraTrainingRun] | None = None
        self._lock = threading.Lock()
        self.journal = JobJournal(store.root)
        for job in self.journal.recover():  # jobs a killed process left behind: FAILED, still watchable
            self.registry.add(job)

    # ------------------------------------------------------------------ API side
    def submit(self, req: FineTuneRequest, owner: str = "anonymous") -> JobSnapshot:
        family = self.runner.family
        if not family.finetune:
            raise FailedPrecondition(
                f"StartFineTune trains LoRA adapters for Stable Diffusion 1.x/2.x and SDXL; this server runs "
                f"{family.title}. Train a {family.title} LoRA with diffusers' "
                f"train_dreambooth_lora_{family.key}.py and put the .safetensors file in the server's lora_dir, "
                f"or fine-tune on an SD 1.x/SDXL server")
        examples = req.examples
        if not examples:
            folder = confined_folder(self.data_root, req.data_folder)
            examples = load_folder(folder, self.data_root, self.limits)  # type: ignore[arg-type]
        with self._lock:
            busy = [j for j in self._jobs() if j.req.adapter_name == req.adapter_name]
            if busy:
                raise AlreadyExists(f"job {busy[0].id} is already training adapter {req.adapter_name!r}")
            if self.store.exists(req.adapter_name) and not req.overwrite:
                raise AlreadyExists(f"adapter {req.adapter_name!r} exists; set overwrite or choose another name")
            job = FineTuneJob(req, examples, owner, self.journal)
            self.registry.add(job)
            self.journal.write(job)
            self._pending.append(job)
            self._publish_positions()
        job.token.on_cancel(lambda: self._on_cancel(job))
        self._update_gauge()
        self.wake()
        return job.snapshot

    def _jobs(self) -> list[FineTuneJob]:
        return list(self._pending) + ([self._current[0]] if self._current else [])

    def _publish_positions(self) -> None:
        for pos, job in enumerate(self._pending, start=1):
            if job.snapshot.position != pos:
                job.update(position=pos)

    def _on_cancel(self, job: FineTuneJob) -> None:
        with self._lock:
            if job not in self._pending:
                return  # running: the next step() notices
            self._pending.remove(job)
            self._publish_positions()
        job.update(state=CANCELLED, position=0, message=f"job {job.id} stopped: {job.token.reason}")
        self._update_gauge()

    def _update_gauge(self) -> None:
        counts = collections.Counter(STATE_NAMES.get(j.snapshot.state, "unknown") for j in self.registry.all()
                                     if isinstance(j, FineTuneJob))
        for state in STATE_NAMES.values():
            m.FINETUNE_JOBS.labels(state).set(counts.get(state, 0))

    # ------------------------------------------------------------------ worker side
    def has_work(self) -> bool:
        with self._lock:
            return bool(self._pending or self._current)

    def step(self) -> None:
        if self._current is None:
            self._start_next()
            return
        job, run = self._current
        if job.token.cancelled:
            run.discard()
            self._end(job, CANCELLED, f"job {job.id} stopped: {job.token.reason}")
            return
        try:
            self.runner.controls.unload_image_prompts()  # the training step runs the UNet without image embeddings
            t = time.monotonic()
            loss = run.step()
            m.FINETUNE_STEP_TIME.observe(time.monotonic() - t)
            if not math.isfinite(loss):
                raise InvalidArgument(f"training diverged (loss {loss}); lower the learning_rate")
            job.losses.append(loss)
            step, total = len(job.losses), job.req.steps
            elapsed = time.monotonic() - (job.started or t)
            job.update(step=step, loss=loss, eta_ms=elapsed / step * (total - step) * 1000)
            m.FINETUNE_LOSS.labels(job.req.adapter_name).set(loss)
            if step >= total:
                self._save(job, run)
        except Exception as exc:
            run.discard()
            msg = exc.message if isinstance(exc, UnfragileError) else f"training failed: {type(exc).__name__}: {exc}"
            if not isinstance(exc, UnfragileError):
                log.exception("fine-tune job %s failed", job.id)
            self._end(job, FAILED, msg)

    def _start_next(self) -> None:
        with self._lock:
            if not self._pending:
                return
            job = self._pending.popleft()
            self._publish_positions()
        if job.finished:
            return
        try:
            run = LoraTrainingRun(self.runner, job.req, job.examples, f"train_{job.id.replace('-', '_')}")
        except Exception as exc:
            log.exception("could not start fine-tune job %s", job.id)
            job.update(state=FAILED, position=0, message=f"could not start training: {type(exc).__name__}: {exc}")
            self._update_gauge()
            return
        job.examples = []  # latents are cached; free the decoded images
        with self._lock:
            self._current = (job, run)
        job.update(state=RUNNING, position=0, total_steps=job.req.steps)
        self._update_gauge()

    def _save(self, job: FineTuneJob, run: LoraTrainingRun) -> None:
        req = job.req
        sd = run.lora_state_dict()
        run.discard()
        self.store.save(req.adapter_name, type(self.runner.pipe), sd, {
            "rank": req.rank, "steps": req.steps, "final_loss": job.losses[-1], "learning_rate": req.learning_rate,
            "seed": req.seed, "base_model": self.runner.model, "job_id": job.id, "family": self.runner.family.key,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        })
        self.runner.forget_adapter(req.adapter_name)
        self._end(job, SUCCEEDED, f"adapter {req.adapter_name!r} saved")

    def _end(self, job: FineTuneJob, state: int, message: str) -> None:
        with self._lock:
            self._current = None
        job.update(state=state, message=message, eta_ms=0.0)
        self._update_gauge()
