"""The one load generator: the same requests to every server, each over its own protocol.

unfragile is called over gRPC (the generated stubs), LitServe over its HTTP JSON API
(base64 image in, token ids or a base64 PNG out), PyTriton over Triton's KServe v2 HTTP
API with the binary-tensor extension for the image bytes (what ``tritonclient.http``
sends). Each client thread keeps its own HTTP connection (keep-alive); gRPC
multiplexes every thread over one channel, as gRPC clients do.
"""

from __future__ import annotations

import base64
import json
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import httpx

T = TypeVar("T")
PROMPT = "a photo of a red cat"


class CaptionSide(Protocol):
    name: str

    def caption(self, image: bytes, max_new_tokens: int, check: bool = False) -> list[int]: ...


class ImageSide(Protocol):
    name: str

    def generate(self, seed: int, steps: int, size: int, guidance: float) -> bytes: ...


class _Http:
    """One keep-alive httpx client per calling thread."""

    def __init__(self, base: str) -> None:
        self.base = base
        self._local = threading.local()

    def client(self) -> httpx.Client:
        c = getattr(self._local, "client", None)
        if c is None:
            c = self._local.client = httpx.Client(base_url=self.base, timeout=600)
        return c


class UnfragileCaption:
    name = "unfragile"

    def __init__(self, address: str, check_address: str) -> None:
        from services.core.client import channel
        from unfragile.visionlanguage.v1 import visionlanguage_pb2 as pb
        from unfragile.visionlanguage.v1 import visionlanguage_pb2_grpc as pb_grpc

        self.pb = pb
        self._channels = [channel(address), channel(check_address)]
        self._stubs = [pb_grpc.VisionLanguageStub(ch) for ch in self._channels]

    def caption(self, image: bytes, max_new_tokens: int, check: bool = False) -> list[int]:
        from unfragile.common.v1 import common_pb2

        req = self.pb.CaptionRequest(image=common_pb2.Image(data=image), mode=self.pb.CAPTION_MODE_BRIEF)
        req.sampling.max_new_tokens = max_new_tokens  # temperature 0: greedy
        return list(self._stubs[1 if check else 0].Caption(req, timeout=600).token_ids)

    def close(self) -> None:
        for ch in self._channels:
            ch.close()


class LitServeCaption:
    name = "litserve"

    def __init__(self, port: int) -> None:
        self.http = _Http(f"http://127.0.0.1:{port}")

    def caption(self, image: bytes, max_new_tokens: int, check: bool = False) -> list[int]:
        r = self.http.client().post("/caption-check" if check else "/caption",
                                    json={"image": base64.b64encode(image).decode(), "max_new_tokens": max_new_tokens})
        r.raise_for_status()
        return list(r.json()["token_ids"])


def triton_infer(client: httpx.Client, model: str, inputs: list[tuple[str, str, Any]],
                 outputs: list[tuple[str, bool]]) -> dict[str, Any]:
    """One KServe v2 infer call (batch of 1). BYTES inputs travel as binary tensors.

    ``inputs``: (name, datatype, value); ``outputs``: (name, binary). Returns JSON outputs
    as lists and binary BYTES outputs as the raw bytes of their single element.
    """
    specs, blobs = [], []
    for name, dtype, value in inputs:
        if dtype == "BYTES":
            blob = struct.pack("<I", len(value)) + value
            specs.append({"name": name, "shape": [1, 1], "datatype": dtype,
                          "parameters": {"binary_data_size": len(blob)}})
            blobs.append(blob)
        else:
            specs.append({"name": name, "shape": [1, 1], "datatype": dtype, "data": [value]})
    header = json.dumps({"inputs": specs, "outputs": [{"name": n, "parameters": {"binary_data": b}}
                                                      for n, b in outputs]}).encode()
    r = client.post(f"/v2/models/{model}/infer", content=header + b"".join(blobs),
                    headers={"Inference-Header-Content-Length": str(len(header)),
                             "Content-Type": "application/octet-stream"})
    if r.status_code != 200:
        raise RuntimeError(f"Triton {model}: HTTP {r.status_code}: {r.text[:300]}")
    json_len = int(r.headers.get("Inference-Header-Content-Length", len(r.content)))
    body = json.loads(r.content[:json_len])
    out: dict[str, Any] = {}
    offset = json_len
    for o in body["outputs"]:
        size = o.get("parameters", {}).get("binary_data_size")
        if size is None:
            out[o["name"]] = o["data"]
            continue
        raw = r.content[offset:offset + size]
        offset += size
        out[o["name"]] = raw[4:4 + struct.unpack("<I", raw[:4])[0]]  # one BYTES element
    return out


class TritonCaption:
    name = "pytriton"

    def __init__(self, port: int) -> None:
        self.http = _Http(f"http://127.0.0.1:{port}")

    def caption(self, image: bytes, max_new_tokens: int, check: bool = False) -> list[int]:
        out = triton_infer(self.http.client(), "kosmos2_check" if check else "kosmos2",
                           [("image", "BYTES", image), ("max_new_tokens", "INT32", max_new_tokens)],
                           [("token_ids", False), ("text", False)])
        return [int(t) for t in out["token_ids"] if int(t) >= 0]


class UnfragileImage:
    name = "unfragile"

    def __init__(self, address: str) -> None:
        from services.core.client import channel
        from unfragile.diffusion.v1 import diffusion_pb2 as pb
        from unfragile.diffusion.v1 import diffusion_pb2_grpc as pb_grpc

        self.pb = pb
        self._channel = channel(address)
        self.stub = pb_grpc.DiffusionStub(self._channel)

    def generate(self, seed: int, steps: int, size: int, guidance: float) -> bytes:
        params = self.pb.GenerationParams(prompt=PROMPT, width=size, height=size, steps=steps, seed=seed,
                                          guidance_scale=guidance, scheduler="ddim")
        for ev in self.stub.TextToImage(self.pb.TextToImageRequest(params=params), timeout=600):
            if ev.WhichOneof("event") == "result":
                return bytes(ev.result.images[0].image.data)
        raise RuntimeError("the TextToImage stream ended without a result")

    def close(self) -> None:
        self._channel.close()


class LitServeImage:
    name = "litserve"

    def __init__(self, port: int) -> None:
        self.http = _Http(f"http://127.0.0.1:{port}")

    def generate(self, seed: int, steps: int, size: int, guidance: float) -> bytes:
        r = self.http.client().post("/generate", json={"prompt": PROMPT, "seed": seed, "steps": steps, "size": size,
                                                       "guidance": guidance})
        r.raise_for_status()
        return base64.b64decode(r.json()["image"])


class TritonImage:
    name = "pytriton"

    def __init__(self, port: int) -> None:
        self.http = _Http(f"http://127.0.0.1:{port}")

    def generate(self, seed: int, steps: int, size: int, guidance: float) -> bytes:
        out = triton_infer(self.http.client(), "sd",
                           [("prompt", "BYTES", PROMPT.encode()), ("seed", "INT64", seed), ("steps", "INT32", steps),
                            ("size", "INT32", size), ("guidance", "FP32", guidance)],
                           [("image", True)])
        return bytes(out["image"])


@dataclass
class Load(Generic[T]):
    """What one load run measured: wall time, per-request latencies and every answer by request key."""

    seconds: float
    latencies: list[float] = field(default_factory=list)
    answers: dict[Any, T] = field(default_factory=dict)

    @property
    def per_s(self) -> float:
        return len(self.latencies) / self.seconds


def run_load(call: Callable[[Any], T], plan: list[list[Any]]) -> Load[T]:
    """``plan[c]`` is client ``c``'s request keys, sent one after another; all clients start together."""
    barrier = threading.Barrier(len(plan))
    lock = threading.Lock()
    load: Load[T] = Load(0.0)

    def client(keys: list[Any]) -> None:
        barrier.wait()
        for key in keys:
            t = time.perf_counter()
            answer = call(key)
            took = time.perf_counter() - t
            with lock:
                load.latencies.append(took)
                load.answers[key] = answer

    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(plan)) as pool:
        list(pool.map(client, plan))
    load.seconds = time.perf_counter() - t0
    return load
