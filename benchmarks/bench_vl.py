"""VisionLanguage benchmarks, all ratios measured in one run on one machine.

The ``bench`` preset of services/visionlanguage/tiny.py (a real Kosmos-2 architecture,
~23.7 M parameters: text decoder 512 wide x 6 layers, vision 256 wide x 3 layers) is
built into ``.models/tiny-kosmos2-bench`` if missing and served by ``unfragile serve
visionlanguage`` in its own process (as deployed: the benchmark's client threads must
not share the server's GIL). Every request uses a different image (no feature-cache hits) and
generates ``NEW_TOKENS`` greedy tokens. Served and in-process calls are interleaved so
drifting machine load hits both equally. The in-process baseline runs the same runner
object directly (decode image, image features, prefill, greedy decode loop, entity
extraction) with no gRPC, queue or scheduler.

- ``vl.caption.served_over_inprocess_p50``: served Caption p50 / in-process p50. Target <= 1.10.
- ``vl.throughput.16_clients_over_1_client``: requests/s with 16 concurrent clients
  (dynamic batching) / requests/s with 1 client, on a server using every core. Target >= 4.
- ``vl.throughput.16_clients_over_inprocess_batch16``: 16-client requests/s / in-process
  batch-of-16 requests/s, server and baseline with the same torch threads (one per two
  cores, like the latency entries), warmed at batch 16. Target >= 0.85.
  Both throughput entries run interleaved rounds and take the median of per-round
  ratios; the notes give every round's figures.
- ``vl.stream.ttft_over_inprocess_prefill_1step``: client-side time to the first token
  chunk of StreamCaption / in-process time to the first token (decode image + features
  + prefill + argmax; no extra decode step, which would only make the ratio look
  better), p50. Target <= 1.2.
- ``vl.cache.ttft_repeated_image_over_new_image``: streaming TTFT when the image was
  seen before (image features and the image-prefix KV cache hit) / TTFT for new
  images. Target <= 0.5 (not from the issue: shows what the caches buy).
- ``vl.embed.throughput_16_over_1``: Embed requests/s with 16 concurrent clients (their
  requests combined into one model batch) / requests/s with 1 client, one short text
  per request (the MatchGraph search's query), every core for torch. Target >= 3.
- ``vl.int8.size_over_fp32`` and ``vl.int8.latency_over_fp32``: dynamic int8 (torch.ao)
  serialized weights size and in-process caption p50, each / fp32. Targets <= 0.5 and <= 1.0.
- ``vl.decode.static_over_dynamic_cache_step``: in-process decode step time of a batch of 16
  with the preallocated static KV cache (written in place) / with transformers' DynamicCache
  (concatenated every step), 96 steps from a ~80-token prompt, rounds interleaved; the token
  streams must be equal (else the entry is void). Target <= 0.95: the per-step copy of the
  whole cache is gone (what remains for a GPU, CUDA graphs through ``compile``, is not
  measurable here).
- ``vl.preprocess.scheduler_busy_per_request_workers_over_inline``: CPU time of the engine's
  scheduler thread per Caption of one token (1600x1200 photos, one request at a time: the
  image and prefill stage, where preprocessing ran; decode steps are the same either way)
  with image preprocessing on the worker pool / on the scheduler thread. Target <= 0.9:
  resizing and normalising a photo no longer occupies the thread that drives the model.

``python -m benchmarks.bench_vl device`` re-measures only these last two.
"""

from __future__ import annotations

import io
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.common import Result, served

PREFIX = "vl."
NEW_TOKENS = 24
ROUNDS = 3
EMBED_ROUNDS = 3
# Completion tokens of every served Caption: the in-process baseline always decodes
# NEW_TOKENS steps, so a served request stopping early at </s> would flatter the ratios.
TOKEN_COUNTS: list[int] = []
MODEL_DIR = Path(".models/tiny-kosmos2-bench")


def noise_images(n: int) -> list[bytes]:
    from PIL import Image

    out = []
    for i in range(n):
        img = Image.effect_noise((96, 96), 20 + i).convert("RGB").resize((160, 120))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


class _InProcess:
    """The same work as one Caption, called directly on the runner."""

    def __init__(self, runner: Any) -> None:
        self.r = runner

    def _prep(self, data: list[bytes]) -> tuple[list[Any], Any]:
        import hashlib

        from services.core.images import decode_image
        from services.visionlanguage.types import ImageInput

        imgs = [ImageInput(decode_image(d), hashlib.sha256(d).hexdigest()) for d in data]
        return imgs, self.r.prompt_ids("<grounding>An image of")

    def caption(self, data: list[bytes], steps: int = NEW_TOKENS) -> list[str]:
        from services.visionlanguage import grounding as g
        from services.visionlanguage.runner import PrefillItem

        imgs, p = self._prep(data)
        feats = self.r.image_features(imgs)
        batch, out = self.r.prefill([PrefillItem(p, f) for f in feats])
        gen: list[list[int]] = [[] for _ in imgs]
        for step in range(steps):
            toks = [int(out.logits[i].argmax()) for i in range(len(imgs))]
            for i, t in enumerate(toks):
                gen[i].append(t)
            if step < steps - 1:
                out = self.r.decode(batch, toks)
        return [g.extract_entities(self.r.decode_text(p.ids[p.tail_start:] + ids))[0] for ids in gen]

    def first_token(self, data: bytes) -> None:
        from services.visionlanguage.runner import PrefillItem

        imgs, p = self._prep([data])
        feats = self.r.image_features(imgs)
        _, out = self.r.prefill([PrefillItem(p, feats[0])])
        int(out.logits[0].argmax())  # the first token exists here: no extra decode step (stricter baseline)


def _request(pb: Any, data: bytes) -> Any:
    from unfragile.common.v1 import common_pb2

    req = pb.CaptionRequest(image=common_pb2.Image(data=data))
    req.sampling.max_new_tokens = NEW_TOKENS
    return req


def _latency(stub: Any, pb: Any, inproc: _InProcess, imgs: list[bytes], n: int) -> Result:
    t_in, t_srv = [], []

    def served(data: bytes) -> None:
        t = time.perf_counter()
        resp = stub.Caption(_request(pb, data), timeout=600)
        t_srv.append(time.perf_counter() - t)
        TOKEN_COUNTS.append(resp.usage.completion_tokens)

    def local(data: bytes) -> None:
        t = time.perf_counter()
        inproc.caption([data])
        t_in.append(time.perf_counter() - t)

    for i in range(n):  # alternate which goes first, so neither always follows the other
        first, second = (served, local) if i % 2 else (local, served)
        first(imgs[2 * i])
        second(imgs[2 * i + 1])
    a, b = statistics.median(t_srv), statistics.median(t_in)
    return Result("vl.caption.served_over_inprocess_p50", a / b, 1.10, "lower", "ratio",
                  "in-process p50 of the same runner (decode, features, prefill, greedy loop, entities)",
                  f"{n} calls each, {NEW_TOKENS} new tokens: served p50 {a * 1000:.0f} ms, "
                  f"in-process {b * 1000:.0f} ms")


def _ttft(stub: Any, pb: Any, inproc: _InProcess, imgs: list[bytes], n: int) -> Result:
    t_in, t_srv = [], []
    for i in range(n):
        t = time.perf_counter()
        inproc.first_token(imgs[2 * i])
        t_in.append(time.perf_counter() - t)
        call = stub.StreamCaption(_request(pb, imgs[2 * i + 1]), timeout=600)
        t = time.perf_counter()
        for chunk in call:
            if chunk.token_ids:
                t_srv.append(time.perf_counter() - t)
                break
        call.cancel()
    a, b = statistics.median(t_srv), statistics.median(t_in)
    return Result("vl.stream.ttft_over_inprocess_prefill_1step", a / b, 1.2, "lower", "ratio",
                  "in-process time to the first token: image decode + features + prefill + argmax, p50 "
                  "(no extra decode step: stricter than the issue's prefill + one step)",
                  f"{n} each: served TTFT p50 {a * 1000:.0f} ms, in-process {b * 1000:.0f} ms")


def _vl_server(threads: int) -> Any:
    """The VisionLanguage server of these measurements, in its own process (see ``served``)."""
    return served("visionlanguage", MODEL_DIR, {"threads": threads, "max_batch_size": 16, "max_queue_delay_ms": 5,
                                                "max_queue_size": 128, "feature_cache_size": 0,
                                                "prefix_cache_size": 0})


def _stream_ttft(stub: Any, pb: Any, data: bytes) -> float:
    call = stub.StreamCaption(_request(pb, data), timeout=600)
    t = time.perf_counter()
    for chunk in call:
        if chunk.token_ids:
            break
    call.cancel()
    return time.perf_counter() - t


def _cache_ttft(settings_kw: dict[str, Any], imgs: list[bytes], n: int) -> Result:
    """TTFT of a repeated image (features + prefix cached) / TTFT of new images, one server with caches on."""
    from services.core.client import channel
    from services.core.server import start_server
    from services.visionlanguage.app import Settings, build_service
    from unfragile.visionlanguage.v1 import visionlanguage_pb2 as pb
    from unfragile.visionlanguage.v1 import visionlanguage_pb2_grpc as pb_grpc

    settings = Settings(**{**settings_kw, "feature_cache_size": 64, "prefix_cache_size": 64})
    srv = start_server(settings, build_service(settings))
    try:
        with channel(srv.address) as ch:
            stub = pb_grpc.VisionLanguageStub(ch)
            _stream_ttft(stub, pb, imgs[0])
            hit, miss = [], []
            for i in range(n):
                miss.append(_stream_ttft(stub, pb, imgs[1 + i]))
                hit.append(_stream_ttft(stub, pb, imgs[0]))
    finally:
        srv.stop(0)
    a, b = statistics.median(hit), statistics.median(miss)
    return Result("vl.cache.ttft_repeated_image_over_new_image", a / b, 0.5, "lower", "ratio",
                  "StreamCaption TTFT p50 for images not seen before",
                  f"{n} each: repeated image (feature + image-prefix KV cache hits) {a * 1000:.0f} ms, "
                  f"new image {b * 1000:.0f} ms")


def _throughput(stub: Any, pb: Any, imgs: list[bytes], clients: int, per_client: int) -> float:
    barrier = threading.Barrier(clients)

    def worker(c: int) -> None:
        barrier.wait()
        for k in range(per_client):
            resp = stub.Caption(_request(pb, imgs[(c * per_client + k) % len(imgs)]), timeout=600)
            TOKEN_COUNTS.append(resp.usage.completion_tokens)

    t = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))
    return clients * per_client / (time.perf_counter() - t)


def _embed_rate(stub: Any, reqs: list[Any], clients: int) -> float:
    """Embed requests/s of ``clients`` threads sending ``reqs`` (split evenly), each waiting for its answer."""
    per = len(reqs) // clients
    barrier = threading.Barrier(clients)

    def worker(c: int) -> None:
        barrier.wait()
        for req in reqs[c * per:(c + 1) * per]:
            stub.Embed(req, timeout=600)

    t = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))
    return clients * per / (time.perf_counter() - t)


def _embed_throughput(threads: int) -> Result:
    """Embed requests/s at 16 concurrent clients / at 1 client, on one server, rounds interleaved.

    Each request embeds one short text, a different one each time: what the MatchGraph's
    search sends for every query. (Image rows batch far less well on a CPU: the vision
    encoder and the 67-position image pass are compute-bound already at batch 1.)
    """
    from services.core.client import channel
    from unfragile.visionlanguage.v1 import visionlanguage_pb2 as pb
    from unfragile.visionlanguage.v1 import visionlanguage_pb2_grpc as pb_grpc

    n1, n16, done = 16, 128, {"one": [0, 0.0], "sixteen": [0, 0.0]}
    reqs = [pb.EmbedRequest(texts=[f"a photo of item {i} on a table"]) for i in range(20 + EMBED_ROUNDS * (n1 + n16))]
    with _vl_server(threads) as address, channel(address) as ch:
        stub = pb_grpc.VisionLanguageStub(ch)
        _embed_rate(stub, reqs[:16], 16)  # warm both paths
        _embed_rate(stub, reqs[16:20], 1)
        for rnd in range(EMBED_ROUNDS):
            base = 20 + rnd * (n1 + n16)
            done["one"][0] += n1
            done["one"][1] += n1 / _embed_rate(stub, reqs[base:base + n1], 1)
            done["sixteen"][0] += n16
            done["sixteen"][1] += n16 / _embed_rate(stub, reqs[base + n1:base + n1 + n16], 16)
    one, sixteen = (done[k][0] / done[k][1] for k in ("one", "sixteen"))
    return Result("vl.embed.throughput_16_over_1", sixteen / one, 3.0, "higher", "ratio",
                  "Embed requests/s of 1 client calling in a row",
                  f"{EMBED_ROUNDS} interleaved rounds, one new text per request: 16 clients {sixteen:.1f} req/s, "
                  f"1 client {one:.1f} req/s; concurrent requests share one model batch (max_embed_batch_size 64); "
                  f"{threads} torch threads")


def _state_bytes(model: Any) -> int:
    import torch

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def _int8(model_dir: Path, threads: int, imgs: list[bytes], n: int) -> list[Result]:
    import torch

    from services.visionlanguage.runner import Kosmos2Runner

    fp = Kosmos2Runner(model_dir, torch.device("cpu"), torch.float32, threads=threads)
    q8 = Kosmos2Runner(model_dir, torch.device("cpu"), torch.float32, quantize="int8", threads=threads)
    size_fp, size_q8 = _state_bytes(fp.model), _state_bytes(q8.model)
    a, b = _InProcess(fp), _InProcess(q8)
    a.caption(imgs[:1])
    b.caption(imgs[:1])
    t_fp, t_q8 = [], []
    for i in range(n):
        t = time.perf_counter()
        a.caption([imgs[i]])
        t_fp.append(time.perf_counter() - t)
        t = time.perf_counter()
        b.caption([imgs[i]])
        t_q8.append(time.perf_counter() - t)
    lat_fp, lat_q8 = statistics.median(t_fp), statistics.median(t_q8)
    return [
        Result("vl.int8.size_over_fp32", size_q8 / size_fp, 0.5, "lower", "ratio", "fp32 state_dict bytes",
               f"int8 {size_q8 / 1e6:.1f} MB vs fp32 {size_fp / 1e6:.1f} MB (torch.ao dynamic int8, Linear layers)"),
        Result("vl.int8.latency_over_fp32", lat_q8 / lat_fp, 1.0, "lower", "ratio", "fp32 in-process caption p50",
               f"{n} calls each, {NEW_TOKENS} tokens: int8 p50 {lat_q8 * 1000:.0f} ms, fp32 {lat_fp * 1000:.0f} ms"),
    ]


def _rounds(loads: dict[str, Callable[[int], float]], rounds: int) -> dict[str, list[float]]:
    """req/s of each load in each round; a round runs every load back to back, in rotating order,
    so drifting machine load (other processes on the box) hits each load alike."""
    out: dict[str, list[float]] = {k: [] for k in loads}
    names = list(loads)
    for rnd in range(rounds):
        for name in names[rnd % len(names):] + names[:rnd % len(names)]:
            out[name].append(loads[name](rnd))
    return out


def _spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} (rounds {min(xs):.2f}-{max(xs):.2f})"


def _ratio(a: list[float], b: list[float]) -> tuple[float, str]:
    """Median of per-round ratios, and the ratios themselves for the notes."""
    ratios = [x / y for x, y in zip(a, b)]
    return statistics.median(ratios), "per-round ratios " + ", ".join(f"{r:.2f}" for r in ratios)


def _batch_rate(inproc: _InProcess, imgs: list[bytes]) -> float:
    t = time.perf_counter()
    inproc.caption(imgs)
    return len(imgs) / (time.perf_counter() - t)


def _single_rate(inproc: _InProcess, imgs: list[bytes]) -> float:
    t = time.perf_counter()
    for img in imgs:
        inproc.caption([img])
    return len(imgs) / (time.perf_counter() - t)


def _warm_batches(stub: Any, pb: Any, inproc: _InProcess, imgs: list[bytes]) -> None:
    """Warm the batch-16 shapes on both sides (a first batch allocates what a batch of 1 did not)."""
    inproc.caption(imgs[:16])
    _throughput(stub, pb, imgs, 16, 1)


def _efficiency(stub: Any, pb: Any, inproc: _InProcess, imgs: list[bytes], threads: int) -> Result:
    """16 clients served / the same runner's in-process batch of 16, both with ``threads`` torch threads."""
    _warm_batches(stub, pb, inproc, imgs[400:])
    got = _rounds({"sixteen": lambda r: _throughput(stub, pb, imgs[60 + 50 * r:], 16, 2),
                   "batch16": lambda r: _batch_rate(inproc, imgs[92 + 50 * r:108 + 50 * r])}, ROUNDS)
    value, per_round = _ratio(got["sixteen"], got["batch16"])
    return Result(
        "vl.throughput.16_clients_over_inprocess_batch16", value, 0.85, "higher", "ratio",
        "in-process batch of 16 (one vision batch, one prefill, batched greedy decode), same torch threads",
        f"{ROUNDS} interleaved rounds, {threads} torch thread(s) on both sides (the server keeps a core for gRPC, "
        f"its scheduler and the clients, as the baseline keeps one idle): served {_spread(got['sixteen'])} req/s, "
        f"in-process batch-16 {_spread(got['batch16'])} req/s; {per_round}")


def _scaling(stub: Any, pb: Any, inproc: _InProcess, imgs: list[bytes], threads: int) -> Result:
    """16 clients / 1 client on a server using every core, with the in-process ceiling and gap in the notes."""
    _warm_batches(stub, pb, inproc, imgs[400:])
    got = _rounds({"one": lambda r: _throughput(stub, pb, imgs[220 + 60 * r:], 1, 4),
                   "sixteen": lambda r: _throughput(stub, pb, imgs[224 + 60 * r:], 16, 2),
                   "batch16": lambda r: _batch_rate(inproc, imgs[256 + 60 * r:272 + 60 * r]),
                   "single": lambda r: _single_rate(inproc, imgs[272 + 60 * r:276 + 60 * r])}, ROUNDS)
    value, per_round = _ratio(got["sixteen"], got["one"])
    ceiling, _ = _ratio(got["batch16"], got["single"])
    gap, _ = _ratio(got["sixteen"], got["batch16"])
    return Result(
        "vl.throughput.16_clients_over_1_client", value, 4.0, "higher", "ratio",
        "requests/s of 1 client calling Caption in a row",
        f"{ROUNDS} interleaved rounds, {threads} torch threads (every core): 16 clients {_spread(got['sixteen'])} "
        f"req/s, 1 client {_spread(got['one'])} req/s; {per_round}; max_batch_size 16; in-process ceiling "
        f"batch-16 / single = {_spread(got['batch16'])} / {_spread(got['single'])} = {ceiling:.2f}; served 16 "
        f"clients / in-process batch-16 at every core = {gap:.2f} (torch's OpenMP threads then share the cores "
        f"with the server's gRPC and scheduler threads and the clients: see docs/visionlanguage.md)")


def _decode_steps(runner: Any, imgs: list[Any], steps: int) -> tuple[float, list[list[int]]]:
    """Mean seconds per decode step of a batch of ``len(imgs)`` greedy sequences, and their tokens."""
    from services.visionlanguage.batch import PrefillItem

    feats = runner.image_features(imgs)
    batch, out = runner.prefill([PrefillItem(runner.prompt_ids("<grounding>An image of"), f) for f in feats])
    toks = []
    t = time.perf_counter()
    for _ in range(steps):
        nxt = out.greedy()
        toks.append(nxt)
        out = runner.decode(batch, nxt)
    return (time.perf_counter() - t) / steps, toks


def _static_cache(threads: int, rounds: int = 5, steps: int = 96) -> Result:
    import torch
    from PIL import Image

    from services.visionlanguage.runner import Kosmos2Runner
    from services.visionlanguage.types import ImageInput

    imgs = [ImageInput.from_pil(Image.new("RGB", (96, 96), (15 * i, 255 - 15 * i, 90))) for i in range(16)]
    runners = {kv: Kosmos2Runner(MODEL_DIR, torch.device("cpu"), torch.float32, threads=threads, kv_cache=kv)
               for kv in ("static", "dynamic")}
    for r in runners.values():
        _decode_steps(r, imgs, 4)
    ratios: list[float] = []
    times: dict[str, list[float]] = {"static": [], "dynamic": []}
    equal = True
    for rnd in range(rounds):
        order = ["static", "dynamic"] if rnd % 2 == 0 else ["dynamic", "static"]
        got = {kv: _decode_steps(runners[kv], imgs, steps) for kv in order}
        equal = equal and got["static"][1] == got["dynamic"][1]
        for kv in order:
            times[kv].append(got[kv][0])
        ratios.append(got["static"][0] / got["dynamic"][0])
    value = statistics.median(ratios)
    return Result("vl.decode.static_over_dynamic_cache_step", value, 0.95, "lower", "ratio",
                  "decode step time with transformers' DynamicCache (torch.cat of the whole cache every step)",
                  f"batch 16, {steps} steps from a ~80-token prompt, {rounds} interleaved rounds: static "
                  f"{statistics.median(times['static']) * 1000:.1f} ms/step, dynamic "
                  f"{statistics.median(times['dynamic']) * 1000:.1f} ms/step; per-round ratios "
                  + ", ".join(f"{r:.2f}" for r in ratios) + f"; token streams {'equal' if equal else 'DIFFER'}",
                  void="" if equal else "static and dynamic caches gave different tokens")


def photos(n: int, size: tuple[int, int] = (1600, 1200)) -> list[bytes]:
    """Photo-sized JPEGs (camera uploads), each different."""
    from PIL import Image

    out = []
    for i in range(n):
        img = Image.effect_noise((size[0] // 8, size[1] // 8), 30 + i).convert("RGB").resize(size)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _scheduler_busy(runner: Any, reqs: list[Any], workers: int) -> float:
    """CPU seconds the scheduler thread spends per Caption, with ``workers`` preprocessing threads."""
    from services.core.cancel import CancelToken
    from services.visionlanguage.engine import Engine
    from services.visionlanguage.settings import EngineConfig

    engine = Engine(runner, EngineConfig(max_batch_size=16, max_queue_delay_ms=0, preprocess_workers=workers,
                                         feature_cache_size=0, prefix_cache_size=0))
    try:
        clock = time.pthread_getcpuclockid(engine._thread.ident or 0)
        engine.caption(reqs[0], CancelToken())
        t = time.clock_gettime(clock)
        for req in reqs[1:]:
            engine.caption(req, CancelToken())
        return (time.clock_gettime(clock) - t) / (len(reqs) - 1)
    finally:
        engine.close()


def _preprocess_offload(threads: int, rounds: int = 3, per_round: int = 12) -> Result:
    import torch

    from services.visionlanguage.runner import Kosmos2Runner
    from services.visionlanguage.types import CaptionRequest, Limits
    from unfragile.common.v1 import common_pb2
    from unfragile.visionlanguage.v1 import visionlanguage_pb2 as pb

    runner = Kosmos2Runner(MODEL_DIR, torch.device("cpu"), torch.float32, threads=threads)
    limits = Limits(model_id=runner.model_id)
    data = photos(2 * rounds * (per_round + 1))

    def request(blob: bytes) -> Any:
        msg = pb.CaptionRequest(image=common_pb2.Image(data=blob))
        msg.sampling.max_new_tokens = 1
        return CaptionRequest.from_pb(msg, limits)

    reqs = [request(b) for b in data]
    busy: dict[int, list[float]] = {2: [], 0: []}
    k = 0
    for rnd in range(rounds):
        for workers in ((2, 0) if rnd % 2 == 0 else (0, 2)):
            busy[workers].append(_scheduler_busy(runner, reqs[k:k + per_round + 1], workers))
            k += per_round + 1
    ratios = [a / b for a, b in zip(busy[2], busy[0])]
    return Result("vl.preprocess.scheduler_busy_per_request_workers_over_inline", statistics.median(ratios), 0.9,
                  "lower", "ratio", "scheduler-thread CPU time per Caption with preprocessing on that thread",
                  f"1600x1200 JPEG photos, {per_round} Captions of 1 token in a row x {rounds} interleaved rounds: "
                  f"2 workers {statistics.median(busy[2]) * 1000:.1f} ms, inline "
                  f"{statistics.median(busy[0]) * 1000:.1f} ms of scheduler CPU per request; per-round ratios "
                  + ", ".join(f"{r:.2f}" for r in ratios))


def device_paths(threads: int) -> list[Result]:
    """The GPU-readiness entries: static vs dynamic KV cache, preprocessing off the scheduler thread."""
    from services.visionlanguage.tiny import build_tiny_kosmos2

    if not (MODEL_DIR / "config.json").exists():
        build_tiny_kosmos2(MODEL_DIR, "bench")
    return [_static_cache(threads), _preprocess_offload(threads)]


def run() -> list[Result]:
    import torch

    from services.core.client import channel
    from services.visionlanguage.runner import Kosmos2Runner
    from services.visionlanguage.tiny import build_tiny_kosmos2
    from unfragile.visionlanguage.v1 import visionlanguage_pb2 as pb
    from unfragile.visionlanguage.v1 import visionlanguage_pb2_grpc as pb_grpc

    if not (MODEL_DIR / "config.json").exists():
        build_tiny_kosmos2(MODEL_DIR, "bench")
    # One torch thread per two cores: the scheduler, gRPC and client threads need the rest
    # (and on a shared 2-core box, 2 spinning OpenMP threads are far slower than 1).
    threads = max(1, (os.cpu_count() or 2) // 2)
    torch.set_num_threads(threads)
    imgs = noise_images(420)
    results: list[Result] = []
    # Latency and serving-efficiency ratios: server and baseline on the same torch threads.
    runner = Kosmos2Runner(MODEL_DIR, torch.device("cpu"), torch.float32, threads=threads)
    params = runner.parameters
    inproc = _InProcess(runner)
    with _vl_server(threads) as address, channel(address) as ch:
        stub = pb_grpc.VisionLanguageStub(ch)
        for i in range(2):  # warm both paths
            inproc.caption([imgs[i]])
            stub.Caption(_request(pb, imgs[i]), timeout=600)
        results.append(_latency(stub, pb, inproc, imgs[2:], 14))
        results.append(_ttft(stub, pb, inproc, imgs[30:], 12))
        results.append(_efficiency(stub, pb, inproc, imgs, threads))
    # Scaling with concurrency: a batch is compute-bound, so this server uses every core.
    tp_threads = os.cpu_count() or 2
    torch.set_num_threads(tp_threads)
    try:
        with _vl_server(tp_threads) as address, channel(address) as ch:
            results.append(_scaling(pb_grpc.VisionLanguageStub(ch), pb, inproc, imgs, tp_threads))
    finally:
        torch.set_num_threads(threads)
    results.append(_cache_ttft({"port": 0, "metrics_port": -1, "model": str(MODEL_DIR), "threads": threads},
                               imgs[186:], 8))
    results.extend(_int8(MODEL_DIR, threads, imgs[180:], 5))
    results.append(_embed_throughput(os.cpu_count() or 2))
    note = (f"bench Kosmos-2 {params / 1e6:.1f} M params, {threads} torch thread(s) unless said otherwise; "
            f"served completions {min(TOKEN_COUNTS)}-{max(TOKEN_COUNTS)} tokens")
    for r in results:
        r.notes = f"{r.notes}; {note}"
    return results + _noted(device_paths(threads), threads)


def _noted(results: list[Result], threads: int) -> list[Result]:
    for r in results:
        r.notes += f"; bench Kosmos-2 (23.7 M params), {threads} torch thread(s)"
    return results


if __name__ == "__main__" and sys.argv[1:] == ["device"]:
    import torch

    from benchmarks.run import merge

    n = max(1, (os.cpu_count() or 2) // 2)
    torch.set_num_threads(n)
    fresh = _noted(device_paths(n), n)
    for r in fresh:
        print(f"  {r.name} = {r.value:.4g} (target {r.target}, {'met' if r.met else 'NOT met'}): {r.notes}",
              file=sys.stderr)
    merge(fresh, set())
