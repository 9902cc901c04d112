"""gRPC servicer: protobuf in -> domain request -> engine -> protobuf out. Nothing else.

Validation lives in types.py, scheduling in engine.py, model execution in runner.py;
errors are typed domain errors that the core interceptor maps to status codes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc

from common.errors import FailedPrecondition, Unavailable
from services.core.cancel import CancelToken
from services.visionlanguage.engine import Engine
from services.visionlanguage.judge import JudgeService
from services.visionlanguage.types import (
    AttentionMapRequest,
    CaptionRequest,
    EmbedRequest,
    JudgeRequest,
    Limits,
    SimilarityRequest,
    TokenizeRequest,
)
from unfragile.common.v1 import common_pb2
from unfragile.visionlanguage.v1 import visionlanguage_pb2 as pb
from unfragile.visionlanguage.v1 import visionlanguage_pb2_grpc as pb_grpc


class VisionLanguageServicer(pb_grpc.VisionLanguageServicer):
    """Thin adapter; ``state`` supplies the engine and limits once the model is loaded, ``judge`` the judge
    model's runner (None when no judge_model is configured)."""

    def __init__(self, state: Callable[[], tuple[Engine, Limits] | None],
                 judge: Callable[[], JudgeService | None] = lambda: None) -> None:
        self._state = state
        self._judge = judge

    @property
    def engine(self) -> Engine | None:
        """The running engine (None while loading): for tests and admin tooling."""
        st = self._state()
        return st[0] if st is not None else None

    def _ready(self) -> tuple[Engine, Limits]:
        st = self._state()
        if st is None:
            raise Unavailable("the model is still loading; wait for health SERVING and retry")
        return st

    def Caption(self, request: pb.CaptionRequest, context: grpc.ServicerContext) -> pb.CaptionResponse:
        engine, limits = self._ready()
        req = CaptionRequest.from_pb(request, limits)
        return engine.caption(req, CancelToken.from_context(context)).to_pb()

    def StreamCaption(self, request: pb.CaptionRequest, context: grpc.ServicerContext) -> Iterator[pb.CaptionChunk]:
        engine, limits = self._ready()
        req = CaptionRequest.from_pb(request, limits)
        for i, event in enumerate(engine.stream_caption(req, CancelToken.from_context(context))):
            yield event.to_pb(i)

    def Embed(self, request: pb.EmbedRequest, context: grpc.ServicerContext) -> pb.EmbedResponse:
        engine, limits = self._ready()
        return engine.embed(EmbedRequest.from_pb(request, limits), CancelToken.from_context(context)).to_pb()

    def Similarity(self, request: pb.SimilarityRequest, context: grpc.ServicerContext) -> pb.SimilarityResponse:
        engine, limits = self._ready()
        return engine.similarity(SimilarityRequest.from_pb(request, limits), CancelToken.from_context(context)).to_pb()

    def Tokenize(self, request: pb.TokenizeRequest, context: grpc.ServicerContext) -> pb.TokenizeResponse:
        engine, limits = self._ready()
        return engine.tokenize(TokenizeRequest.from_pb(request, limits)).to_pb()

    def AttentionMap(self, request: pb.AttentionMapRequest, context: grpc.ServicerContext) -> pb.AttentionMapResponse:
        engine, limits = self._ready()
        req = AttentionMapRequest.from_pb(request, limits)
        return engine.attention_map(req, CancelToken.from_context(context)).to_pb()

    def ModelInfo(self, request: common_pb2.ModelInfoRequest,
                  context: grpc.ServicerContext) -> common_pb2.ModelInfoResponse:
        engine, _ = self._ready()
        return engine.info().to_pb()

    def Judge(self, request: pb.JudgeRequest, context: grpc.ServicerContext) -> pb.JudgeResponse:
        _, limits = self._ready()
        judge = self._judge()
        if judge is None:
            raise FailedPrecondition("this VisionLanguage server has no judge model: set judge_model "
                                     "(UNFRAGILE_VL_JUDGE_MODEL) to a CLIP-family checkpoint, e.g. "
                                     "openai/clip-vit-large-patch14")
        return judge.score(JudgeRequest.from_pb(request, limits), CancelToken.from_context(context)).to_pb()
