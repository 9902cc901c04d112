"""What the Diffusion service sends back: stream events, job snapshots, adapter descriptions.

Each type converts itself to protobuf (``to_pb``); PNG encoding happens there, on the
RPC's thread, so the denoising worker never waits for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from PIL import Image

from services.core.images import encode_png
from unfragile.common.v1 import common_pb2 as cpb
from unfragile.diffusion.v1 import diffusion_pb2 as pb


def job_status_pb(job_id: str, state: int, position: int = 0, message: str = "") -> cpb.JobStatus:
    return cpb.JobStatus(job_id=job_id, state=cast("cpb.JobState", state), queue_position=position,
                         message=message)


def _png(img: Image.Image) -> cpb.Image:
    return cpb.Image(data=encode_png(img), mime_type="image/png")


@dataclass(frozen=True)
class StatusEvent:
    """QUEUED (with the 1-based queue position) or RUNNING."""

    state: int  # common JobState value
    position: int = 0
    message: str = ""

    def to_pb(self, job_id: str) -> pb.GenerateEvent:
        return pb.GenerateEvent(job_id=job_id, status=job_status_pb(job_id, self.state, self.position, self.message))


@dataclass(frozen=True)
class ProgressEvent:
    """One denoising step finished."""

    step: int
    total: int
    elapsed_ms: float
    eta_ms: float

    def to_pb(self, job_id: str) -> pb.GenerateEvent:
        return pb.GenerateEvent(job_id=job_id, progress=pb.StepProgress(
            step=self.step, total_steps=self.total, elapsed_ms=self.elapsed_ms, eta_ms=self.eta_ms))


@dataclass(frozen=True)
class PreviewEvent:
    """An intermediate look at image ``index`` after ``step``."""

    step: int
    index: int
    image: Image.Image

    def to_pb(self, job_id: str) -> pb.GenerateEvent:
        return pb.GenerateEvent(job_id=job_id, preview=pb.Preview(step=self.step, index=self.index,
                                                                  image=_png(self.image)))


@dataclass(frozen=True)
class OutputImage:
    """A finished image and the seed that reproduces it alone."""

    image: Image.Image
    seed: int
    width: int
    height: int


@dataclass(frozen=True)
class ResultEvent:
    """The last event of a generation stream."""

    images: tuple[OutputImage, ...]
    queue_ms: float
    inference_ms: float
    total_ms: float
    first_preview_ms: float
    batch_images: int
    steps: int
    scheduler: str
    control_maps: tuple[Image.Image, ...] = ()

    def to_pb(self, job_id: str) -> pb.GenerateEvent:
        return pb.GenerateEvent(job_id=job_id, result=pb.GeneratedImages(
            images=[pb.GeneratedImage(image=_png(i.image), seed=i.seed, width=i.width, height=i.height)
                    for i in self.images],
            timings=cpb.Timings(queue_ms=self.queue_ms, inference_ms=self.inference_ms, total_ms=self.total_ms,
                                first_token_ms=self.first_preview_ms),
            batch_images=self.batch_images, steps=self.steps, scheduler=self.scheduler,
            control_maps=[_png(m) for m in self.control_maps]))


GenerateEventT = StatusEvent | ProgressEvent | PreviewEvent | ResultEvent


@dataclass(frozen=True)
class JobSnapshot:
    """A job's state at one moment, for WatchJob / CancelJob / StartFineTune."""

    job_id: str
    kind: str
    state: int
    position: int = 0
    message: str = ""
    step: int = 0
    total_steps: int = 0
    loss: float = 0.0
    elapsed_ms: float = 0.0
    eta_ms: float = 0.0
    adapter_name: str = ""

    @property
    def terminal(self) -> bool:
        return self.state in (cpb.JOB_STATE_SUCCEEDED, cpb.JOB_STATE_FAILED, cpb.JOB_STATE_CANCELLED)

    def status_pb(self) -> cpb.JobStatus:
        return job_status_pb(self.job_id, self.state, self.position, self.message)

    def to_pb(self) -> pb.JobEvent:
        return pb.JobEvent(status=self.status_pb(), kind=self.kind, step=self.step, total_steps=self.total_steps,
                           loss=self.loss, elapsed_ms=self.elapsed_ms, eta_ms=self.eta_ms,
                           adapter_name=self.adapter_name)


@dataclass(frozen=True)
class ControlModelInfo:
    """One control model as ListControlNets shows it."""

    name: str
    kind: str  # "controlnet", "t2i_adapter" or "ip_adapter"
    family: str
    format: str
    class_name: str
    size_bytes: int
    loaded: bool = False
    modes: tuple[str, ...] = ()

    def to_pb(self) -> pb.ControlModel:
        return pb.ControlModel(name=self.name, kind=self.kind, family=self.family, format=self.format,
                               class_name=self.class_name, size_bytes=self.size_bytes, loaded=self.loaded,
                               modes=list(self.modes))


@dataclass(frozen=True)
class AdapterInfo:
    """One adapter as ListAdapters shows it."""

    name: str
    size_bytes: int
    rank: int
    steps: int
    final_loss: float
    created_at: str
    base_model: str
    family: str = ""
    source: str = "trained"
    format: str = "diffusers"

    def to_pb(self) -> pb.Adapter:
        return pb.Adapter(name=self.name, size_bytes=self.size_bytes, rank=self.rank, steps=self.steps,
                          final_loss=self.final_loss, created_at=self.created_at, base_model=self.base_model,
                          family=self.family, source=self.source, format=self.format)
