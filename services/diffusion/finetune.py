"""LoRA fine-tuning jobs, run one step at a time on the engine's worker thread.

Why steps and not a thread: the base UNet is shared with serving (LoRA layers are added
to it under a private adapter name, and generation batches switch the active adapters
back to what each request asked for), so training must never overlap a generation
batch. The engine calls ``step()`` between batches; a queued generation request waits
for at most one training step.

Adapters are saved with ``save_lora_weights`` as safetensors under
``adapters_dir/<name>/`` (plus ``meta.json``), written to a temporary folder first and
swapped in, so a crash never leaves half an adapter; they survive restarts and are
loaded per request with ``load_lora_weights`` without reloading the base model.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import logging
import math
import os
import shutil
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from common.errors import AlreadyExists, InvalidArgument, PermissionDenied, UnfragileError
from services.core.images import decode_image
from services.diffusion import metrics as m
from services.diffusion.jobs import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, Job, JobRegistry
from services.diffusion.runner import LORA_WEIGHT_NAME, DiffusersRunner
from services.diffusion.types import (
    AdapterInfo,
    FineTuneRequest,
    JobSnapshot,
    Limits,
    TrainingExample,
    check_adapter_name,
    confined_folder,
)

log = logging.getLogger(__name__)

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
STATE_NAMES = {QUEUED: "queued", RUNNING: "running", SUCCEEDED: "succeeded", FAILED: "failed",
               CANCELLED: "cancelled"}


class AdapterStore:
    """Saved adapters on disk: ``<root>/<name>/pytorch_lora_weights.safetensors`` + meta.json."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.root / check_adapter_name(name)

    def exists(self, name: str) -> bool:
        return (self.path(name) / LORA_WEIGHT_NAME).is_file()

    def list(self) -> list[AdapterInfo]:
        out = []
        for d in sorted(self.root.iterdir()):
            weights = d / LORA_WEIGHT_NAME
            if d.name.startswith(".") or not weights.is_file():
                continue
            try:
                meta = json.loads((d / "meta.json").read_text())
            except (OSError, ValueError):
                meta = {}
            out.append(AdapterInfo(
                name=d.name, size_bytes=weights.stat().st_size, rank=int(meta.get("rank", 0)),
                steps=int(meta.get("steps", 0)), final_loss=float(meta.get("final_loss", 0.0)),
                created_at=str(meta.get("created_at", "")), base_model=str(meta.get("base_model", ""))))
        return out

    def save(self, name: str, unet_lora_layers: dict[str, Any], meta: dict[str, Any]) -> Path:
        from diffusers import StableDiffusionPipeline

        final = self.path(name)
        tmp = self.root / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
        StableDiffusionPipeline.save_lora_weights(save_directory=str(tmp), unet_lora_layers=unet_lora_layers,
                                                  weight_name=LORA_WEIGHT_NAME, safe_serialization=True)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        old = None
        if final.exists():
            old = self.root / f".old-{name}-{uuid.uuid4().hex[:8]}"
            final.rename(old)
        tmp.rename(final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return final


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


def _square(img: Image.Image, size: int) -> Image.Image:
    return ImageOps.fit(img.convert("RGB"), (size, size), Image.Resampling.LANCZOS)


class LoraTrainingRun:
    """One adapter being trained on the shared UNet (model execution only)."""

    def __init__(self, runner: DiffusersRunner, req: FineTuneRequest, examples: list[TrainingExample],
                 key: str) -> None:
        import torch
        from diffusers import DDPMScheduler
        from peft import LoraConfig

        self.runner, self.req, self.key = runner, req, key
        pipe = runner.pipe
        self.unet = pipe.unet
        device, vae = runner.device, pipe.vae
        size = req.resolution or runner.native_size()
        with torch.no_grad():
            px = pipe.image_processor.preprocess([_square(e.image, size) for e in examples]).to(device, vae.dtype)
            self.latents = torch.cat([vae.encode(px[i:i + 8]).latent_dist.mode() for i in range(0, len(px), 8)])
            self.latents = self.latents * vae.config.scaling_factor
            ids = pipe.tokenizer([e.caption for e in examples], padding="max_length", truncation=True,
                                 max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
            self.embeds = pipe.text_encoder(ids.to(device))[0]
        self.unet.requires_grad_(False)
        with warnings.catch_warnings():  # "multiple adapters in the model" is exactly what we want
            warnings.simplefilter("ignore", UserWarning)
            self.unet.add_adapter(LoraConfig(r=req.rank, lora_alpha=req.rank, init_lora_weights="gaussian",
                                             target_modules=LORA_TARGETS), adapter_name=key)
        self.params = [p for n, p in self.unet.named_parameters() if f".{key}." in n]
        for p in self.params:
            p.data = p.data.float()  # train LoRA weights in fp32 even on a fp16 base
            p.requires_grad_(True)
        self.opt = torch.optim.AdamW(self.params, lr=req.learning_rate)
        self.noise = DDPMScheduler.from_config(runner._base_scheduler_config)
        self.gen = torch.Generator("cpu").manual_seed(req.seed)
        self.batch = min(4, len(examples))

    def step(self) -> float:
        import torch
        import torch.nn.functional as F

        self.unet.enable_lora()
        self.unet.set_adapters([self.key], weights=[1.0])
        for p in self.params:
            p.requires_grad_(True)
        n = self.latents.shape[0]
        idx = torch.randperm(n, generator=self.gen)[: self.batch].to(self.latents.device)
        lat = self.latents[idx]
        noise = torch.randn(lat.shape, generator=self.gen).to(lat.device, lat.dtype)
        t = torch.randint(0, self.noise.config.num_train_timesteps, (lat.shape[0],), generator=self.gen)
        t = t.to(lat.device)
        noisy = self.noise.add_noise(lat, noise, t)
        target = noise if self.noise.config.prediction_type == "epsilon" else self.noise.get_velocity(lat, noise, t)
        with torch.enable_grad():
            pred = self.unet(noisy, t, encoder_hidden_states=self.embeds[idx], return_dict=False)[0]
            loss = F.mse_loss(pred.float(), target.float())
            loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    def lora_state_dict(self) -> dict[str, Any]:
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        sd = get_peft_model_state_dict(self.unet, adapter_name=self.key)
        return {k: v.detach().to("cpu").contiguous() for k, v in convert_state_dict_to_diffusers(sd).items()}

    def discard(self) -> None:
        """Remove the training adapter from the shared UNet."""
        try:
            with warnings.catch_warnings():  # "was active which is now deleted": generation resets it anyway
                warnings.simplefilter("ignore", UserWarning)
                self.unet.delete_adapters(self.key)
        except Exception:
            log.exception("could not remove training adapter %s", self.key)


class JobJournal:
    """Fine-tune job states on disk, ``<adapters_dir>/.jobs/<job id>.json`` (one small file each).

    Why: jobs live in memory, so a process killed mid-training (kill -9, OOM killer, node
    loss) would otherwise forget them, and a client watching by id would get NOT_FOUND
    after the restart. On start, every job the journal still shows as queued or running is
    marked FAILED (with the step it reached) and registered again, so WatchJob/CancelJob
    answer for it; the adapter itself is only ever published by an atomic rename, so a
    killed job never leaves a half-written adapter behind.
    """

    def __init__(self, root: Path, keep: int = 1000) -> None:
        self.dir = Path(root) / ".jobs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.keep = keep

    def write(self, job: Job, snap: JobSnapshot | None = None) -> None:
        snap = snap or job.snapshot
        data = {"job_id": snap.job_id, "adapter_name": snap.adapter_name, "owner": job.owner,
                "state": STATE_NAMES.get(snap.state, "unknown"), "message": snap.message, "step": snap.step,
                "total_steps": snap.total_steps}
        tmp = self.dir / f".{snap.job_id}.{threading.get_ident()}.tmp"
        try:
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self.dir / f"{snap.job_id}.json")
        except OSError:  # a full disk must not fail the training itself
            log.warning("could not journal fine-tune job %s", snap.job_id, exc_info=True)

    def recover(self) -> list[Job]:
        """Jobs of earlier processes, newest ``keep``; unfinished ones become FAILED."""
        files = sorted(self.dir.glob("*.json"), key=lambda p: p.stat().st_mtime)
        for old in files[: max(0, len(files) - self.keep)]:
            old.unlink(missing_ok=True)
        codes = {name: code for code, name in STATE_NAMES.items()}
        jobs = []
        for path in files[-self.keep:]:
            try:
                rec = json.loads(path.read_text())
                job = Job("finetune", adapter_name=str(rec["adapter_name"]), owner=str(rec["owner"]),
                          job_id=str(rec["job_id"]))
            except (OSError, ValueError, KeyError):
                continue
            state, step, total = rec.get("state"), int(rec.get("step", 0)), int(rec.get("total_steps", 0))
            if state in ("queued", "running"):
                message = (f"the server stopped while this job was {state} (step {step} of {total}); no adapter "
                           f"was saved: start the fine-tune again")
                job.update(state=FAILED, message=message, step=step, total_steps=total)
                self.write(job)
            else:
                job.update(state=codes.get(state, FAILED), message=str(rec.get("message", "")), step=step,
                           total_steps=total)
            jobs.append(job)
        return jobs


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
        self.store.save(req.adapter_name, sd, {
            "rank": req.rank, "steps": req.steps, "final_loss": job.losses[-1], "learning_rate": req.learning_rate,
            "seed": req.seed, "base_model": self.runner.model, "job_id": job.id,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        })
        self.runner.forget_adapter(req.adapter_name)
        self._end(job, SUCCEEDED, f"adapter {req.adapter_name!r} saved")

    def _end(self, job: FineTuneJob, state: int, message: str) -> None:
        with self._lock:
            self._current = None
        job.update(state=state, message=message, eta_ms=0.0)
        self._update_gauge()
