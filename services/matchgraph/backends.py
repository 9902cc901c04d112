"""gRPC clients of the two model services, behind the graph's small interfaces.

``GrpcEmbedder`` implements ``graph.search.Embedder`` with VisionLanguage ``Embed``;
``GrpcProbeBackend`` implements ``graph.probes.ProbeBackend`` with Diffusion
``TextToImage`` (server stream; the last event carries the images), VisionLanguage
``Similarity``, ``Caption`` and ``Embed``, and both services' ``ModelInfo`` (what a probe
ran on: a random-weight test model says so in its details). Failures surface as core
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
from graph.probes import ServedModel
from services.core.client import channel
from services.core.loading import TEST_MODEL_DETAIL, TEST_PRESET_DETAIL

T = TypeVar("T")
PROBE_STEPS = 4  # enough for the tiny test model; probe images are judged, not admired
PROBE_SIZE = 64


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
    """Probe calls to the Diffusion and VisionLanguage services."""

    def __init__(self, vl_target: str, diffusion_target: str, timeout_s: float = 120.0) -> None:
        from unfragile.common.v1 import common_pb2
        from unfragile.diffusion.v1 import diffusion_pb2 as d_pb
        from unfragile.diffusion.v1 import diffusion_pb2_grpc as d_grpc
        from unfragile.visionlanguage.v1 import visionlanguage_pb2 as vl_pb
        from unfragile.visionlanguage.v1 import visionlanguage_pb2_grpc as vl_grpc

        self.common, self.d_pb, self.vl_pb = common_pb2, d_pb, vl_pb
        self.vl_target, self.d_target, self.timeout = vl_target, diffusion_target, timeout_s
        self.vl = vl_grpc.VisionLanguageStub(channel(vl_target, balance=True))
        self.diffusion = d_grpc.DiffusionStub(channel(diffusion_target, balance=True))
        self.embedder = GrpcEmbedder(vl_target, timeout_s)

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

    def text_to_image(self, prompt: str, seed: int) -> bytes:
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

    def image_text_similarity(self, image: bytes, text: str) -> float:
        req = self.vl_pb.SimilarityRequest(images=[self.common.Image(data=image, mime_type="image/png")], texts=[text])
        resp = _call(self.vl_target, "VisionLanguage.Similarity", lambda: self.vl.Similarity(req, timeout=self.timeout))
        return float(resp.cosine[0])

    def caption(self, image: bytes) -> str:
        req = self.vl_pb.CaptionRequest(image=self.common.Image(data=image, mime_type="image/png"),
                                        mode=self.vl_pb.CAPTION_MODE_BRIEF, grounding=False,
                                        sampling=self.vl_pb.SamplingParams(max_new_tokens=16))
        resp = _call(self.vl_target, "VisionLanguage.Caption", lambda: self.vl.Caption(req, timeout=self.timeout))
        return resp.completion or resp.text

    def text_similarity(self, a: str, b: str) -> float:
        v = self.embedder.embed_texts([a, b])
        na, nb = np.linalg.norm(v[0]), np.linalg.norm(v[1])
        return float(v[0] @ v[1] / (na * nb)) if na > 0 and nb > 0 else 0.0
