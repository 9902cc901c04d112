"""gRPC clients of the two model services, behind the graph's small interfaces.

``GrpcEmbedder`` implements ``graph.search.Embedder`` with VisionLanguage ``Embed``;
``GrpcProbeBackend`` implements ``graph.probes.ProbeBackend`` with Diffusion
``TextToImage`` (server stream; the last event carries the images), VisionLanguage
``Caption``, the judge's ``Judge`` (a VisionLanguage service's ``judge_model``, never
Kosmos-2 itself), and both services' ``ModelInfo`` (what a probe ran on: a random-weight
test model says so in its details). Failures surface as core
``Unavailable`` with the target and the gRPC status, so Search can degrade and RunProbes
can say what failed.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import grpc
import numpy as np

from common.errors import Unavailable
from graph.probes import JudgeModel, JudgeScores, ServedModel
from services.core.client import channel
from services.core.loading import TEST_MODEL_DETAIL, TEST_PRESET_DETAIL

T = TypeVar("T")
PROBE_STEPS = 4  # enough for the tiny test model; probe images are judged, not admired
PROBE_SIZE = 64
CAPTION_TOKENS = 16
JUDGE_BATCH = 32  # the Judge RPC's most pairs per request


def _call(target: str, what: str, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except grpc.RpcError as exc:
        raise Unavailable(f"{what} at {target} failed: {exc.code().name}: {exc.details()}") from None  # type: ignore[attr-defined]


class GrpcEmbedder:
    """Text embeddings from the VisionLanguage service (32 texts per call, the server's limit)."""

    def __init__(self, target: str, timeout_s: float = 30.0) -> None:
        from unfragile.visionlanguage.v1 import visionlanguage_pb2 as vl_pb
        from unfragile.visionlanguage.v1 import visionlanguage_pb2_grpc as vl_grpc

        self.target, self.timeout = target, timeout_s
        self.pb = vl_pb
        self.channel = channel(target, balance=True)
        self.stub = vl_grpc.VisionLanguageStub(self.channel)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        out: list[list[float]] = []
        for i in range(0, len(texts), 32):
            chunk = [t if t.strip() else "-" for t in texts[i:i + 32]]
            request = self.pb.EmbedRequest(texts=chunk)
            resp = _call(self.target, "VisionLanguage.Embed", partial(self.stub.Embed, request, timeout=self.timeout))
            out += [list(e.values) for e in resp.text_embeddings]
        return np.array(out, dtype=np.float64)


class GrpcProbeBackend:
    """Probe calls to the Diffusion and VisionLanguage services, and to the judge (VisionLanguage Judge)."""

    def __init__(self, vl_target: str, diffusion_target: str, timeout_s: float = 120.0, judge_target: str = "") -> None:
        from unfragile.common.v1 import common_pb2
        from unfragile.diffusion.v1 import diffusion_pb2 as d_pb
        from unfragile.diffusion.v1 import diffusion_pb2_grpc as d_grpc
        from unfragile.visionlanguage.v1 import visionlanguage_pb2 as vl_pb
        from unfragile.visionlanguage.v1 import visionlanguage_pb2_grpc as vl_grpc

        self.common, self.d_pb, self.vl_pb = common_pb2, d_pb, vl_pb
        self.vl_target, self.d_target, self.timeout = vl_target, diffusion_target, timeout_s
        self.judge_target = judge_target or vl_target
        self.vl = vl_grpc.VisionLanguageStub(channel(vl_target, balance=True))
        self.judge_stub = self.vl if self.judge_target == vl_target else \
            vl_grpc.VisionLanguageStub(channel(self.judge_target, balance=True))
        self.diffusion = d_grpc.DiffusionStub(channel(diffusion_target, balance=True))

    def served_model(self, endpoint: str) -> ServedModel | None:
        """ModelInfo of the service behind ``endpoint``; None when it does not implement ModelInfo."""
        stub, target = (self.vl, self.vl_target) if endpoint == "visionlanguage" else (self.diffusion, self.d_target)

        def model_info() -> Any:
            try:
                return stub.ModelInfo(self.common.ModelInfoRequest(), timeout=self.timeout)
            except grpc.RpcError as exc:
                if isinstance(exc, grpc.Call) and exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                    return None  # a service without ModelInfo: what it serves stays unknown
                raise

        info = _call(target, f"{endpoint} ModelInfo", model_info)
        if info is None:
            return None
        return ServedModel(endpoint, info.model_id, info.architecture, int(info.parameters),
                           info.details.get(TEST_MODEL_DETAIL) == "true", info.details.get(TEST_PRESET_DETAIL, ""))

    def judge_model(self) -> JudgeModel | None:
        """The judge's identity (a Judge call without pairs); None when the service has no judge configured."""

        def identity() -> Any:
            try:
                return self.judge_stub.Judge(self.vl_pb.JudgeRequest(), timeout=self.timeout)
            except grpc.RpcError as exc:
                if isinstance(exc, grpc.Call) and exc.code() in (grpc.StatusCode.FAILED_PRECONDITION,
                                                                 grpc.StatusCode.UNIMPLEMENTED):
                    return None  # no judge_model configured there (or a service from before the Judge RPC)
                raise

        resp = _call(self.judge_target, "VisionLanguage.Judge", identity)
        return None if resp is None else _judge_of(resp.judge)

    def text_to_image(self, model: str, endpoint: str, prompt: str, seed: int) -> bytes:
        params = self.d_pb.GenerationParams(prompt=prompt, width=PROBE_SIZE, height=PROBE_SIZE, steps=PROBE_STEPS,
                                            seed=seed, num_images=1)

        def run() -> bytes:
            result: Any = None
            for event in self.diffusion.TextToImage(self.d_pb.TextToImageRequest(params=params), timeout=self.timeout):
                if event.WhichOneof("event") == "result":
                    result = event.result
            if result is None or not result.images:
                raise Unavailable(f"Diffusion.TextToImage at {self.d_target} ended without an image")
            return bytes(result.images[0].image.data)

        return _call(self.d_target, "Diffusion.TextToImage", run)

    def caption(self, model: str, endpoint: str, image: bytes) -> str:
        req = self.vl_pb.CaptionRequest(image=self.common.Image(data=image, mime_type="image/png"),
                                        mode=self.vl_pb.CAPTION_MODE_BRIEF, grounding=False,
                                        sampling=self.vl_pb.SamplingParams(max_new_tokens=CAPTION_TOKENS))
        resp = _call(self.vl_target, "VisionLanguage.Caption", lambda: self.vl.Caption(req, timeout=self.timeout))
        return str(resp.completion)

    def judge(self, images: list[bytes], texts: list[str]) -> JudgeScores:
        """Cosines of the pairs from the Judge RPC, ``JUDGE_BATCH`` pairs per call, all from one judge."""
        cosine: list[float] = []
        judges: set[JudgeModel] = set()
        for i in range(0, len(images), JUDGE_BATCH):
            req = self.vl_pb.JudgeRequest(images=[self.common.Image(data=d, mime_type="image/png")
                                                  for d in images[i:i + JUDGE_BATCH]], texts=texts[i:i + JUDGE_BATCH])
            resp = _call(self.judge_target, "VisionLanguage.Judge", partial(self.judge_stub.Judge, req,
                                                                             timeout=self.timeout))
            cosine += list(resp.cosine)
            judges.add(_judge_of(resp.judge))
        if len(judges) > 1:  # replicas behind one target serving different judges: never mix their scores
            raise Unavailable(f"the judges behind {self.judge_target} differ ({sorted(j.describe() for j in judges)});"
                              f" serve one judge_model on every replica")
        return JudgeScores(tuple(cosine), judges.pop())


def _judge_of(j: Any) -> JudgeModel:
    return JudgeModel(j.model_id, j.architecture, j.version, j.test_model, j.test_preset, int(j.parameters))
