"""Diffusion benchmarks (issue 4), all ratios measured in one run on one machine.

A tiny Stable Diffusion checkpoint (the ``bench`` preset of services/diffusion/tiny.py,
64x64 images) is built into a temporary folder and served in-process over real gRPC
on port 0:

- ``diffusion.served_over_inprocess.images_per_s``: images/s of sequential TextToImage
  calls over gRPC (stream consumed to the final PNGs) divided by images/s of calling
  the same pipeline object in-process with the same parameters (PIL output). Calls are
  interleaved so machine load drifts hit both equally. Target >= 0.9.
- ``diffusion.batching.throughput_4_clients``: images/s with 4 concurrent clients on a
  server with cross-request batching, divided by the same load on a server with
  batching off. Target >= 1.5.
- ``diffusion.previews.every_step_over_none``: median end-to-end time of a request
  with an approx preview after every step divided by the same request without
  previews. Target <= 1.10.
- ``diffusion.finetune.steps_per_s``: LoRA training steps/s (rank 4, batch of 4, 64x64)
  measured by the job's own progress events. Absolute; target >= 1 on 2 CPU cores.
- ``diffusion.finetune.adapter_over_unet_size``: size of the saved safetensors adapter
  divided by the base UNet weights file. Target <= 0.05 (absolute size in notes).
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import Result

PREFIX = "diffusion."
STEPS = 8
SIZE = 64


def _params(pb: Any, seed: int, **kw: Any) -> Any:
    return pb.GenerationParams(prompt="a photo of a red cat", width=SIZE, height=SIZE, steps=STEPS, seed=seed, **kw)


def _served_call(stub: Any, pb: Any, seed: int, **kw: Any) -> Any:
    result = None
    for ev in stub.TextToImage(pb.TextToImageRequest(params=_params(pb, seed, **kw)), timeout=600):
        if ev.WhichOneof("event") == "result":
            result = ev.result
    assert result is not None and result.images
    return result


def _served_vs_inprocess(stub: Any, pb: Any, runner: Any, n: int) -> Result:
    import torch

    def inproc(seed: int) -> None:
        runner.activate(())
        runner.pipe(prompt=["a photo of a red cat"], negative_prompt=[""], height=SIZE, width=SIZE,
                    num_inference_steps=STEPS, guidance_scale=7.5,
                    generator=[torch.Generator("cpu").manual_seed(seed)], output_type="pil")

    for seed in range(3):  # warm both paths
        inproc(seed)
        _served_call(stub, pb, seed)
    t_in, t_srv = [], []
    for i in range(n):
        t = time.perf_counter()
        inproc(100 + i)
        t_in.append(time.perf_counter() - t)
        t = time.perf_counter()
        _served_call(stub, pb, 100 + i)
        t_srv.append(time.perf_counter() - t)
    ips_in, ips_srv = 1 / statistics.median(t_in), 1 / statistics.median(t_srv)
    return Result("diffusion.served_over_inprocess.images_per_s", ips_srv / ips_in, 0.9, "higher", "ratio",
                  "in-process StableDiffusionPipeline images/s, same params",
                  f"{SIZE}x{SIZE}, {STEPS} DDIM steps, concurrency 1, {n} calls each: served {ips_srv:.2f} img/s, "
                  f"in-process {ips_in:.2f} img/s")


def _throughput(stub: Any, pb: Any, clients: int, per_client: int) -> tuple[float, float]:
    """(images/s, mean batch size seen) with ``clients`` threads each sending requests in a row."""
    batches: list[int] = []
    lock = threading.Lock()

    def worker(c: int) -> None:
        for i in range(per_client):
            res = _served_call(stub, pb, 1000 * c + i)
            with lock:
                batches.append(res.batch_images)

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - t
    return clients * per_client / elapsed, statistics.mean(batches)


def _previews(stub: Any, pb: Any, n: int) -> Result:
    for seed in range(2):
        _served_call(stub, pb, seed, preview_every=1)
        _served_call(stub, pb, seed)
    with_p, without = [], []
    for i in range(n):
        t = time.perf_counter()
        _served_call(stub, pb, i, preview_every=1)
        with_p.append(time.perf_counter() - t)
        t = time.perf_counter()
        _served_call(stub, pb, i)
        without.append(time.perf_counter() - t)
    ratio = statistics.median(with_p) / statistics.median(without)
    return Result("diffusion.previews.every_step_over_none", ratio, 1.10, "lower", "ratio",
                  "median end-to-end time of the same request without previews",
                  f"approx (latent->RGB) preview after each of {STEPS} steps; medians "
                  f"{statistics.median(with_p) * 1000:.0f} ms vs {statistics.median(without) * 1000:.0f} ms, n={n}")


def _finetune(stub: Any, pb: Any, cpb: Any, adapters_dir: Path, model_dir: Path, steps: int) -> list[Result]:
    import io

    from PIL import Image

    examples = []
    for i, colour in enumerate([(220, 20, 20), (20, 20, 220), (20, 200, 20), (200, 200, 20)]):
        buf = io.BytesIO()
        Image.new("RGB", (SIZE, SIZE), colour).save(buf, format="PNG")
        examples.append(pb.TrainingExample(image=cpb.Image(data=buf.getvalue()), caption=f"a red cat {i}"))
    resp = stub.StartFineTune(pb.StartFineTuneRequest(adapter_name="bench", examples=examples, steps=steps, rank=4,
                                                      overwrite=True), timeout=60)
    first: tuple[int, float] | None = None
    last: tuple[int, float] = (0, 0.0)
    state = 0
    for ev in stub.WatchJob(pb.WatchJobRequest(job_id=resp.job_id), timeout=1200):
        state = ev.status.state
        if ev.step:
            now = time.perf_counter()
            if first is None:
                first = (ev.step, now)
            last = (ev.step, now)
    assert state == cpb.JOB_STATE_SUCCEEDED and first is not None
    steps_per_s = (last[0] - first[0]) / (last[1] - first[1])
    adapter = adapters_dir / "bench" / "pytorch_lora_weights.safetensors"
    unet = model_dir / "unet" / "diffusion_pytorch_model.safetensors"
    size, unet_size = adapter.stat().st_size, unet.stat().st_size
    return [
        Result("diffusion.finetune.steps_per_s", steps_per_s, 1.0, "higher", "steps/s", "absolute",
               f"LoRA rank 4, batch 4, {SIZE}x{SIZE}, {steps} steps, measured from WatchJob progress"),
        Result("diffusion.finetune.adapter_over_unet_size", size / unet_size, 0.05, "lower", "ratio",
               "base UNet safetensors size",
               f"adapter {size / 1024:.1f} KiB (safetensors), UNet {unet_size / 1024 / 1024:.1f} MiB"),
    ]


def run() -> list[Result]:
    from services.core.client import channel
    from services.core.server import start_server
    from services.diffusion.app import Settings, build_service
    from services.diffusion.tiny import build_tiny_sd
    from unfragile.common.v1 import common_pb2 as cpb
    from unfragile.diffusion.v1 import diffusion_pb2 as pb
    from unfragile.diffusion.v1 import diffusion_pb2_grpc as pb_grpc

    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-diffusion-") as tmp:
        model = build_tiny_sd(Path(tmp) / "tiny-sd-bench", preset="bench")
        adapters = Path(tmp) / "adapters"

        def serve(batching: bool) -> Any:
            settings = Settings(port=0, metrics_port=-1, model=str(model), adapters_dir=adapters, batching=batching,
                                max_batch_images=8)
            return start_server(settings, build_service(settings))

        batched = serve(True)
        try:
            with channel(batched.address) as ch:
                stub = pb_grpc.DiffusionStub(ch)
                runner = batched.service.servicer.engine.runner
                results.append(_served_vs_inprocess(stub, pb, runner, n=15))
                results.append(_previews(stub, pb, n=10))
                _throughput(stub, pb, 4, 1)  # warm-up
                ips_b, mean_batch = _throughput(stub, pb, 4, 8)
                results.extend(_finetune(stub, pb, cpb, adapters, model, steps=30))
        finally:
            batched.stop(0)
        unbatched = serve(False)
        try:
            with channel(unbatched.address) as ch:
                stub = pb_grpc.DiffusionStub(ch)
                _throughput(stub, pb, 4, 1)
                ips_u, _ = _throughput(stub, pb, 4, 8)
        finally:
            unbatched.stop(0)
        results.append(Result(
            "diffusion.batching.throughput_4_clients", ips_b / ips_u, 1.5, "higher", "ratio",
            "images/s of the same load with batching off",
            f"4 clients x 8 requests, {SIZE}x{SIZE}, {STEPS} steps: batched {ips_b:.2f} img/s (mean batch "
            f"{mean_batch:.1f} images), unbatched {ips_u:.2f} img/s"))
    return results


if __name__ == "__main__":  # pragma: no cover
    for r in run():
        print(f"{r.name} = {r.value:.4g} (target {r.target}, {'met' if r.met else 'NOT met'}) {r.notes}")
