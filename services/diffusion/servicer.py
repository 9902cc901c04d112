"""gRPC servicer: protobuf in, domain call, protobuf out. No logic lives here."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from services.core.cancel import CancelToken
from services.core.security import current_principal
from services.diffusion.engine import Engine
from services.diffusion.finetune import FineTuner
from services.diffusion.settings import Limits
from services.diffusion.types import FineTuneRequest, GenerateRequest, job_id_from_pb
from unfragile.common.v1 import common_pb2 as cpb
from unfragile.diffusion.v1 import diffusion_pb2 as pb
from unfragile.diffusion.v1 import diffusion_pb2_grpc as pb_grpc


class DiffusionServicer(pb_grpc.DiffusionServicer):
    def __init__(self, engine: Engine, finetuner: FineTuner, limits: Limits) -> None:
        self.engine = engine
        self.finetuner = finetuner
        self.limits = limits

    def _generate(self, request: GenerateRequest, context: Any) -> Iterator[pb.GenerateEvent]:
        job = self.engine.submit(request, CancelToken.from_context(context), current_principal())
        for event in self.engine.events(job):
            yield event.to_pb(job.id)

    def TextToImage(self, request: pb.TextToImageRequest, context: Any) -> Iterator[pb.GenerateEvent]:
        yield from self._generate(GenerateRequest.from_txt2img(request, self.limits), context)

    def ImageToImage(self, request: pb.ImageToImageRequest, context: Any) -> Iterator[pb.GenerateEvent]:
        yield from self._generate(GenerateRequest.from_img2img(request, self.limits), context)

    def Inpaint(self, request: pb.InpaintRequest, context: Any) -> Iterator[pb.GenerateEvent]:
        yield from self._generate(GenerateRequest.from_inpaint(request, self.limits), context)

    def StyleTransfer(self, request: pb.StyleTransferRequest, context: Any) -> Iterator[pb.GenerateEvent]:
        yield from self._generate(GenerateRequest.from_style(request, self.limits), context)

    def StartFineTune(self, request: pb.StartFineTuneRequest, context: Any) -> pb.StartFineTuneResponse:
        snap = self.finetuner.submit(FineTuneRequest.from_pb(request, self.limits), current_principal().name)
        return pb.StartFineTuneResponse(job_id=snap.job_id, status=snap.status_pb())

    def WatchJob(self, request: pb.WatchJobRequest, context: Any) -> Iterator[pb.JobEvent]:
        for snap in self.engine.watch(job_id_from_pb(request.job_id), CancelToken.from_context(context)):
            yield snap.to_pb()

    def CancelJob(self, request: pb.CancelJobRequest, context: Any) -> pb.CancelJobResponse:
        snap = self.engine.cancel(job_id_from_pb(request.job_id), current_principal())
        return pb.CancelJobResponse(status=snap.status_pb())

    def ListAdapters(self, request: pb.ListAdaptersRequest, context: Any) -> pb.ListAdaptersResponse:
        return pb.ListAdaptersResponse(adapters=[a.to_pb() for a in self.engine.list_adapters()])

    def ListControlNets(self, request: pb.ListControlNetsRequest, context: Any) -> pb.ListControlNetsResponse:
        models, preprocessors = self.engine.list_controls()
        return pb.ListControlNetsResponse(models=[m.to_pb() for m in models], preprocessors=preprocessors)

    def ModelInfo(self, request: cpb.ModelInfoRequest, context: Any) -> cpb.ModelInfoResponse:
        return self.engine.model_info().to_pb()
