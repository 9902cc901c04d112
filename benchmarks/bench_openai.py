"""The OpenAI-compatible frontend against direct gRPC, all ratios measured in one run on one machine.

VisionLanguage (the ``bench`` Kosmos-2, ~23.7 M parameters, caches off so a repeated image is
no shortcut), Diffusion (the ``bench`` tiny Stable Diffusion, 64x64) and the frontend each run
in their own process (``unfragile serve``), as deployed. The clients are the official ``openai``
SDK (through the frontend) and the generated gRPC stubs (straight to the service), in this
process; calls alternate between the two paths so machine-load drift hits both, and every
SDK answer is checked against the gRPC answer to the same request (same text; same PNG
bytes): a path that did different work voids its entry.

- ``openai.chat.p50_over_grpc_caption``: chat completion p50 through the SDK (a data-URL image,
  greedy, ``NEW_TOKENS`` tokens) / Caption p50 over gRPC. Target <= 1.10.
- ``openai.chat.stream_ttft_over_grpc``: time to the first content delta of a streamed chat
  completion (SDK) / time to the first StreamCaption chunk with text (gRPC), p50. Target <= 1.15.
- ``openai.chat.throughput_16_sdk_over_16_grpc``: requests/s of 16 concurrent SDK clients /
  16 concurrent gRPC clients; each round measures both twice in ABBA (or BAAB) order, the value
  is the median of the rounds' ratios. Target >= 0.9.
- ``openai.images.b64_over_grpc_texttoimage``: images/s of images.generate (b64_json, PNG) /
  images/s of TextToImage over gRPC, sequential calls, median of back-to-back pair ratios.
  Target >= 0.9.

LitServe's OpenAI spec (litserve 0.2.19, the peers' pin) serving the same Kosmos-2 is measured
beside the peers (``make bench-peers``, in their separate environment):
``peer.vl.litserve_openai.chat_p50_1`` sends the request of ``openai.chat.p50_over_grpc_caption``
(same SDK, images and tokens) to this frontend and to LitServe's ``OpenAISpec``, alternating
(benchmarks/peers/openai_chat.py). What that spec can do: chat completions whose messages
carry ``image_url`` parts (decoding or fetching them is left to the user's LitAPI), and
text or token-id embeddings. What it cannot: ``seed``, ``stream_options``, ``logprobs`` and
``extra_body`` fields are dropped before the LitAPI sees the request (no reproducible
sampling can be asked for); usage rides on a stream's last chunk always, never in a
usage-only chunk; ``finish_reason`` is always ``stop``; no ``/v1/models``, no images API
(generations, edits), no image embeddings; errors outside a stream are FastAPI's
``{"detail": ...}``, not OpenAI's shape.
"""

from __future__ import annotations

import base64
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.bench_vl import noise_images
from benchmarks.common import Result, free_port, served, terminate

PREFIX = "openai."
NEW_TOKENS = 24
VL_MODEL = Path(".models/tiny-kosmos2-bench")
SD_STEPS, SD_SIZE = 8, 64
CLIENTS, PER_CLIENT, ROUNDS = 16, 2, 4  # short phases, ABBA within a round: load drift hits both


@contextlib.contextmanager
def frontend(vl: str, sd: str) -> Iterator[str]:
    """``unfragile serve openai`` in its own process in front of ``vl`` and ``sd``; yields its /v1 URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "services.cli", "serve", "openai", "--port", str(port), "--metrics-port", "-1",
           "--set", f"visionlanguage_target={vl}", "--set", f"diffusion_target={sd}", "--set", "log_level=WARNING"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the OpenAI frontend did not become ready") from None
                time.sleep(0.2)
        yield f"{url}/v1"
    finally:
        terminate(proc, 30)


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


class Paths:
    """The same request through the SDK (frontend) and straight over gRPC."""

    def __init__(self, base_url: str, vl: str, sd: str) -> None:
        import openai

        from services.core.client import channel
        from unfragile.diffusion.v1 import diffusion_pb2 as df
        from unfragile.diffusion.v1 import diffusion_pb2_grpc as df_grpc
        from unfragile.visionlanguage.v1 import visionlanguage_pb2 as pb
        from unfragile.visionlanguage.v1 import visionlanguage_pb2_grpc as pb_grpc

        self.base_url = base_url
        self.client: Any = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600)
        self.pb, self.df = pb, df
        self.channels = [channel(vl), channel(sd)]
        self.vl = pb_grpc.VisionLanguageStub(self.channels[0])
        self.sd = df_grpc.DiffusionStub(self.channels[1])
        self.vl_model, self.sd_model = (m.id for m in self.client.models.list().data)
        self.mismatches: dict[str, int] = {}

    def close(self) -> None:
        self.client.close()
        for ch in self.channels:
            ch.close()

    def _messages(self, png: bytes) -> list[dict[str, Any]]:
        return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": _data_url(png)}}]}]

    def sdk_chat(self, png: bytes, client: Any = None) -> str:
        resp = (client or self.client).chat.completions.create(model=self.vl_model, messages=self._messages(png),
                                                               max_tokens=NEW_TOKENS)
        return str(resp.choices[0].message.content)

    def grpc_caption(self, png: bytes) -> str:
        from unfragile.common.v1 import common_pb2

        req = self.pb.CaptionRequest(image=common_pb2.Image(data=png))
        req.sampling.max_new_tokens = NEW_TOKENS
        return str(self.vl.Caption(req, timeout=600).completion)

    def sdk_ttft(self, png: bytes) -> tuple[float, str]:
        t = time.perf_counter()
        first, text = None, []
        for chunk in self.client.chat.completions.create(model=self.vl_model, messages=self._messages(png),
                                                         max_tokens=NEW_TOKENS, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                first = first or time.perf_counter() - t
                text.append(chunk.choices[0].delta.content)
        return first or float("nan"), "".join(text)

    def grpc_ttft(self, png: bytes) -> tuple[float, str]:
        from unfragile.common.v1 import common_pb2

        req = self.pb.CaptionRequest(image=common_pb2.Image(data=png))
        req.sampling.max_new_tokens = NEW_TOKENS
        t = time.perf_counter()
        first, text = None, []
        for chunk in self.vl.StreamCaption(req, timeout=600):
            if chunk.delta:
                first = first or time.perf_counter() - t
                text.append(chunk.delta)
        return first or float("nan"), "".join(text)

    def sdk_image(self, seed: int) -> bytes:
        resp = self.client.images.generate(prompt=f"a red cat, take {seed}", size=f"{SD_SIZE}x{SD_SIZE}",
                                           extra_body={"seed": seed, "num_inference_steps": SD_STEPS})
        return base64.b64decode(str(resp.data[0].b64_json))

    def grpc_image(self, seed: int) -> bytes:
        params = self.df.GenerationParams(prompt=f"a red cat, take {seed}", width=SD_SIZE, height=SD_SIZE,
                                          steps=SD_STEPS, seed=seed)
        for ev in self.sd.TextToImage(self.df.TextToImageRequest(params=params), timeout=600):
            if ev.WhichOneof("event") == "result":
                return bytes(ev.result.images[0].image.data)
        raise RuntimeError("TextToImage ended without a result")

    def same(self, what: str, a: object, b: object) -> None:
        if a != b:
            self.mismatches[what] = self.mismatches.get(what, 0) + 1


def _pairs(n: int, sdk: Callable[[int], float], grpc_: Callable[[int], float]) -> tuple[list[float], list[float]]:
    """``n`` calls of each, alternating which path goes first."""
    a, b = [], []
    for i in range(n):
        if i % 2:
            a.append(sdk(i))
            b.append(grpc_(i))
        else:
            b.append(grpc_(i))
            a.append(sdk(i))
    return a, b


def _timed(fn: Callable[[], object]) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def _answered_pairs(n: int, sdk: Callable[[int], tuple[float, object]], grpc_: Callable[[int], tuple[float, object]],
                    p: Paths, what: str) -> tuple[list[float], list[float]]:
    """``_pairs`` of (seconds, answer) calls; the two answers to each request are checked equal."""
    answers: dict[int, list[str]] = {}

    def keep(call: Callable[[int], tuple[float, object]]) -> Callable[[int], float]:
        def one(i: int) -> float:
            dt, answer = call(i)
            answers.setdefault(i, []).append(str(answer))
            return dt
        return one

    a, b = _pairs(n, keep(sdk), keep(grpc_))
    for pair in answers.values():
        p.same(what, pair[0], pair[1])
    return a, b


def _chat_latency(p: Paths, imgs: list[bytes], n: int) -> Result:
    a, b = _answered_pairs(n, lambda i: _timed(lambda: p.sdk_chat(imgs[i])),
                           lambda i: _timed(lambda: p.grpc_caption(imgs[i])), p, "chat")
    sa, sb = statistics.median(a), statistics.median(b)
    return Result(f"{PREFIX}chat.p50_over_grpc_caption", sa / sb, 1.10, "lower", "ratio",
                  "Caption p50 over gRPC, same image and decoding",
                  f"{n} calls each, {NEW_TOKENS} greedy tokens: SDK p50 {sa * 1000:.1f} ms, gRPC {sb * 1000:.1f} ms",
                  void="answers differ" if p.mismatches.get("chat") else "")


def _ttft(p: Paths, imgs: list[bytes], n: int) -> Result:
    a, b = _answered_pairs(n, lambda i: p.sdk_ttft(imgs[i]), lambda i: p.grpc_ttft(imgs[i]), p, "stream")
    sa, sb = statistics.median(a), statistics.median(b)
    return Result(f"{PREFIX}chat.stream_ttft_over_grpc", sa / sb, 1.15, "lower", "ratio",
                  "StreamCaption time to the first chunk with text over gRPC, p50",
                  f"{n} streams each: SDK TTFT p50 {sa * 1000:.1f} ms, gRPC {sb * 1000:.1f} ms",
                  void="streamed texts differ" if p.mismatches.get("stream") else "")


def _rate(work: Callable[[int, int], None]) -> float:
    barrier = threading.Barrier(CLIENTS)

    def worker(c: int) -> None:
        barrier.wait()
        for k in range(PER_CLIENT):
            work(c, k)

    t = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(worker, range(CLIENTS)))
    return CLIENTS * PER_CLIENT / (time.perf_counter() - t)


def _throughput(p: Paths, imgs: list[bytes]) -> Result:
    import openai

    clients = [openai.OpenAI(base_url=p.base_url, api_key="unused", max_retries=0, timeout=600)
               for _ in range(CLIENTS)]  # 16 independent clients, each its own connection pool
    sdk, grpc_, ratios = [], [], []
    try:
        for r in range(ROUNDS):
            def img(c: int, k: int, r: int = r) -> bytes:
                return imgs[(r * CLIENTS * PER_CLIENT + c * PER_CLIENT + k) % len(imgs)]

            order = [("sdk", lambda c, k: p.sdk_chat(img(c, k), clients[c])),
                     ("grpc", lambda c, k: p.grpc_caption(img(c, k)))]
            got: dict[str, list[float]] = {"sdk": [], "grpc": []}
            for name, work in (order + order[::-1] if r % 2 == 0 else order[::-1] + order):  # ABBA / BAAB
                got[name].append(_rate(lambda c, k, work=work: work(c, k)))  # type: ignore[misc]
            sdk.append(statistics.mean(got["sdk"]))
            grpc_.append(statistics.mean(got["grpc"]))
            ratios.append(sdk[-1] / grpc_[-1])
    finally:
        for c in clients:
            c.close()
    spread = lambda xs: "/".join(f"{x:.1f}" for x in xs)  # noqa: E731 - a formatter
    return Result(f"{PREFIX}chat.throughput_16_sdk_over_16_grpc", statistics.median(ratios), 0.9, "higher", "ratio",
                  "requests/s of 16 concurrent gRPC clients calling Caption",
                  f"{ROUNDS} ABBA rounds of {CLIENTS}x{PER_CLIENT} requests per phase: SDK {spread(sdk)} req/s, gRPC "
                  f"{spread(grpc_)} req/s, per-round ratios {'/'.join(f'{x:.2f}' for x in ratios)}")


def _images(p: Paths, n: int) -> Result:
    ratios, sdk_t, grpc_t = [], [], []
    for i in range(n):
        seed = 1000 + i
        calls = [("sdk", lambda s=seed: p.sdk_image(s)), ("grpc", lambda s=seed: p.grpc_image(s))]
        got: dict[str, tuple[float, object]] = {}
        for name, fn in (calls if i % 2 else calls[::-1]):
            got[name] = _timed(fn)
        p.same("image", got["sdk"][1], got["grpc"][1])
        sdk_t.append(got["sdk"][0])
        grpc_t.append(got["grpc"][0])
        ratios.append(got["grpc"][0] / got["sdk"][0])  # images/s ratio = time ratio inverted
    return Result(f"{PREFIX}images.b64_over_grpc_texttoimage", statistics.median(ratios), 0.9, "higher", "ratio",
                  "images/s of sequential TextToImage calls over gRPC (stream read to the PNG)",
                  f"{n} pairs, {SD_SIZE}x{SD_SIZE}, {SD_STEPS} steps: SDK {1 / statistics.median(sdk_t):.2f} images/s "
                  f"(b64_json PNG), gRPC {1 / statistics.median(grpc_t):.2f} images/s",
                  void="images differ" if p.mismatches.get("image") else "")


def run() -> list[Result]:
    from services.diffusion.tiny import build_tiny
    from services.visionlanguage.tiny import build_tiny_kosmos2

    if not (VL_MODEL / "config.json").exists():
        build_tiny_kosmos2(VL_MODEL, "bench")
    threads = max(1, (os.cpu_count() or 2) // 2)
    imgs = noise_images(240)
    vl_sets = {"threads": threads, "max_batch_size": 16, "max_queue_delay_ms": 5, "max_queue_size": 128,
               "feature_cache_size": 0, "prefix_cache_size": 0}
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-openai-") as tmp:
        sd_model = build_tiny("sd", Path(tmp) / "tiny-sd-bench", preset="bench")
        sd_sets = {"torch_threads": 1, "adapters_dir": Path(tmp) / "adapters"}
        with (served("visionlanguage", VL_MODEL, vl_sets) as vl, served("diffusion", sd_model, sd_sets) as sd,
              frontend(vl, sd) as base_url):
            p = Paths(base_url, vl, sd)
            try:
                for i in range(3):  # warm both paths
                    p.sdk_chat(imgs[i])
                    p.grpc_caption(imgs[i])
                    p.sdk_ttft(imgs[i])
                    p.grpc_ttft(imgs[i])
                p.sdk_image(1)
                p.grpc_image(1)
                results.append(_chat_latency(p, imgs[3:], 16))
                results.append(_ttft(p, imgs[20:], 32))  # short streams: more pairs for a stable median
                results.append(_throughput(p, imgs[40:]))
                results.append(_images(p, 12))
            finally:
                p.close()
    note = (f"bench Kosmos-2 ({threads} torch thread(s), caches off) and tiny SD (1 torch thread), each service "
            "and the frontend in its own process; clients in the benchmark process")
    for r in results:
        r.notes = f"{r.notes}; {note}"
    return results
