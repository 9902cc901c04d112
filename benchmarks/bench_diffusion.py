"""Diffusion benchmarks, all ratios measured in one run on one machine.

For each family (SD 1.x, SDXL, SD 3) a tiny checkpoint (the ``bench`` preset of
services/diffusion/tiny.py, 64x64 images) is built into a temporary folder and served
over real gRPC by ``unfragile serve diffusion`` in its own process; the in-process
baselines load the same folder in this process. The SD 1.x entries keep their names; the SDXL and
SD 3 ones carry the family: ``diffusion.sdxl.…`` and ``diffusion.sd3.…``.

- ``diffusion.served_over_inprocess.images_per_s``: images/s of sequential TextToImage
  calls over gRPC (stream consumed to the final PNGs) divided by images/s of calling
  the same pipeline in-process with the same parameters (PIL output). Calls are
  interleaved and the value is the median of back-to-back pair ratios, so machine-load
  drift cancels. Target >= 0.9.
- ``diffusion.batching.throughput_4_clients``: images/s with 4 concurrent clients on a
  server with cross-request batching, divided by the same load on a server with
  batching off; both servers run side by side and rounds alternate between them (median
  of per-round ratios), so machine-load drift cancels. Target >= 1.5. The note gives the
  in-process ceiling: 4 single pipeline calls divided by one call of 4.
- ``diffusion.previews.every_step_over_none``: end-to-end time of a request with an
  approx preview after every step divided by the same request without previews (median
  of back-to-back pair ratios). Target <= 1.10.
- ``diffusion.finetune.steps_per_s``: LoRA training steps/s (rank 4, batch of 4, 64x64)
  measured by the job's own progress events. Absolute; target >= 1 on 2 CPU cores.
- ``diffusion.finetune.adapter_over_unet_size``: size of the saved safetensors adapter
  divided by the base UNet weights file. Target <= 0.05 (absolute size in notes).

FLUX.1 ([dev], ``diffusion.flux.…``) gets the same three serving ratios; the controlled-generation
figures (``diffusion.control.…``) are in diffusion_control.py. ``python -m
benchmarks.bench_diffusion flux control`` re-measures some parts only (``sd`` is the SD 1.x one).
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import Result, served

PREFIX = "diffusion."
STEPS = 8
SIZE = 64
THREADS = 1


def _prompt(seed: int) -> str:
    """Every request its own prompt (as from different users); the negative prompt stays the default ""."""
    return f"a photo of a red cat, take {seed}"


def _params(pb: Any, seed: int, **kw: Any) -> Any:
    return pb.GenerationParams(prompt=_prompt(seed), width=SIZE, height=SIZE, steps=STEPS, seed=seed, **kw)


def _name(family: str, metric: str) -> str:
    return f"{PREFIX}{metric}" if family == "sd" else f"{PREFIX}{family}.{metric}"


def _served_call(stub: Any, pb: Any, seed: int, **kw: Any) -> Any:
    result = None
    for ev in stub.TextToImage(pb.TextToImageRequest(params=_params(pb, seed, **kw)), timeout=600):
        if ev.WhichOneof("event") == "result":
            result = ev.result
    assert result is not None and result.images
    return result


def _inprocess(runner: Any, seeds: list[int], pipe: Any = None, **extra: Any) -> None:
    """One pipeline call for ``seeds`` in this process: the requests' prompts, the default negative and
    guidance (FLUX.1: no negative side, its embedded guidance); ``pipe``/``extra``: a controlled pipeline."""
    import torch

    family = runner.family
    same: dict[str, Any] = {"max_sequence_length": runner.load_config.t5_max_tokens} if family.key in (
        "sd3", "flux") else {}
    if family.negative_prompt:
        same["negative_prompt"] = [""] * len(seeds)
    runner.activate(())
    (pipe or runner.pipe)(prompt=[_prompt(s) for s in seeds], height=SIZE, width=SIZE, num_inference_steps=STEPS,
                          guidance_scale=runner.default_guidance(),
                          generator=[torch.Generator("cpu").manual_seed(s) for s in seeds], output_type="pil",
                          **same, **extra)


def _inprocess_batch_gain(runner: Any, rounds: int = 3, **inproc_kw: Any) -> float:
    """What batching can win at all here: 4 single pipeline calls ÷ one call of 4 (best of ``rounds``)."""
    gains = []
    for r in range(rounds):
        seeds = [500 + 4 * r + k for k in range(4)]
        t = time.perf_counter()
        for seed in seeds:
            _inprocess(runner, [seed], **inproc_kw)
        single = time.perf_counter() - t
        t = time.perf_counter()
        _inprocess(runner, seeds, **inproc_kw)
        gains.append(single / (time.perf_counter() - t))
    return max(gains)


def _served_vs_inprocess(stub: Any, pb: Any, runner: Any, n: int, family: str, name: str = "",
                         served_kw: dict[str, Any] | None = None, inproc_kw: dict[str, Any] | None = None) -> Result:
    def inproc(seed: int) -> None:
        _inprocess(runner, [seed], **(inproc_kw or {}))

    def served(seed: int) -> None:
        _served_call(stub, pb, seed, **(served_kw or {}))

    for seed in range(3):  # warm both paths
        inproc(seed)
        served(seed)
    t_in, t_srv = [], []

    def timed(fn: Any, seed: int) -> float:
        t = time.perf_counter()
        fn(seed)
        return time.perf_counter() - t

    for i in range(n):  # alternate which side goes first, so order effects cancel too
        if i % 2:
            t_srv.append(timed(served, 100 + i))
            t_in.append(timed(inproc, 100 + i))
        else:
            t_in.append(timed(inproc, 100 + i))
            t_srv.append(timed(served, 100 + i))
    ips_in, ips_srv = 1 / statistics.median(t_in), 1 / statistics.median(t_srv)
    # median of per-pair ratios: each pair ran back to back, so machine-load drift cancels out
    ratio = statistics.median(a / b for a, b in zip(t_in, t_srv))
    return Result(name or _name(family, "served_over_inprocess.images_per_s"), ratio, 0.9, "higher", "ratio",
                  f"in-process {type(runner.pipe).__name__} images/s, same params (median of back-to-back pairs)",
                  f"{SIZE}x{SIZE}, {STEPS} {runner.family.default_scheduler} steps, concurrency 1, {n} pairs: "
                  f"served {ips_srv:.2f} img/s, "
                  f"in-process {ips_in:.2f} img/s (medians)")


def _throughput(stub: Any, pb: Any, clients: int, per_client: int, **kw: Any) -> tuple[float, float]:
    """(images/s, mean batch size seen) with ``clients`` threads each sending requests in a row."""
    batches: list[int] = []
    lock = threading.Lock()

    def worker(c: int) -> None:
        for i in range(per_client):
            res = _served_call(stub, pb, 1000 * c + i, **kw)
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


QUEUE_DELAY_MS = 25.0  # the batching server's max_queue_delay_ms (a fraction of one request's time)


def _batching(stub_b: Any, stub_u: Any, pb: Any, runner: Any, rounds: int, family: str, name: str = "",
              inproc_kw: dict[str, Any] | None = None, **kw: Any) -> Result:
    """Alternate rounds on the batching and the non-batching server; median of per-round ratios."""
    _throughput(stub_b, pb, 4, 1, **kw)  # warm-up
    _throughput(stub_u, pb, 4, 1, **kw)
    ceiling = _inprocess_batch_gain(runner, **(inproc_kw or {}))
    ratios, ips_b, ips_u, batch = [], [], [], []
    for _ in range(rounds):
        b, mean_batch = _throughput(stub_b, pb, 4, 4, **kw)
        u, _ = _throughput(stub_u, pb, 4, 4, **kw)
        ratios.append(b / u)
        ips_b.append(b)
        ips_u.append(u)
        batch.append(mean_batch)
    return Result(
        name or _name(family, "batching.throughput_4_clients"), statistics.median(ratios), 1.5, "higher", "ratio",
        "images/s of the same load on a server with batching off (median of alternating rounds)",
        f"4 clients x 4 requests per round, {rounds} rounds, {SIZE}x{SIZE}, {STEPS} steps, "
        f"max_queue_delay_ms {QUEUE_DELAY_MS:g}, max_batch_images 4: batched "
        f"{statistics.median(ips_b):.2f} img/s (mean batch {statistics.mean(batch):.1f} images), unbatched "
        f"{statistics.median(ips_u):.2f} img/s; in-process ceiling (4 single pipeline calls / one call of 4) "
        f"{ceiling:.2f}")


def _previews(stub: Any, pb: Any, n: int, family: str) -> Result:
    for seed in range(2):
        _served_call(stub, pb, seed, preview_every=1)
        _served_call(stub, pb, seed)
    with_p, without = [], []

    def timed(**kw: Any) -> float:
        t = time.perf_counter()
        _served_call(stub, pb, i, **kw)
        return time.perf_counter() - t

    for i in range(n):  # alternate which goes first
        if i % 2:
            without.append(timed())
            with_p.append(timed(preview_every=1))
        else:
            with_p.append(timed(preview_every=1))
            without.append(timed())
    ratio = statistics.median(a / b for a, b in zip(with_p, without))
    return Result(_name(family, "previews.every_step_over_none"), ratio, 1.10, "lower", "ratio",
                  "end-to-end time of the same request without previews (median of back-to-back pairs)",
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


# SD 3 prompts get 77 T5 tokens (ComfyUI's padding for short prompts) instead of diffusers' 256:
# with 256, the 333 context tokens dominate every step of the tiny model on one CPU thread and
# batching has nothing left to share (measured ~1.1x); the note of each SD 3 entry says so.
SD3_T5_TOKENS = 77


def _family(family: str, tmp: Path, threads: int) -> list[Result]:
    """Serving ratios for one family (and, for SD 1.x, the fine-tuning figures).

    Each server runs in its own process, as deployed, so the load generator's threads do not
    share its GIL; the in-process baseline loads the same folder in this process, the way the
    server builds its runner (same device, dtype and load settings)."""
    from services.core.client import channel
    from services.core.settings import section
    from services.diffusion.app import Settings
    from services.diffusion.runner import DiffusersRunner
    from services.diffusion.settings import LoadConfig
    from services.diffusion.tiny import build_tiny
    from unfragile.common.v1 import common_pb2 as cpb
    from unfragile.diffusion.v1 import diffusion_pb2 as pb
    from unfragile.diffusion.v1 import diffusion_pb2_grpc as pb_grpc

    model = build_tiny(family, tmp / f"tiny-{family}-bench", preset="bench")
    adapters = tmp / f"adapters-{family}"
    sets: dict[str, Any] = {"adapters_dir": adapters, "max_batch_images": 8, "torch_threads": threads,
                            "t5_max_tokens": SD3_T5_TOKENS}
    settings = Settings.model_validate({"port": 0, "metrics_port": -1, "model": str(model)} | sets)
    device, dtype = settings.resolve_device_dtype()
    runner = DiffusersRunner(settings.model_path(), device, dtype, settings.adapters_path(),
                             section(settings, LoadConfig))
    runner.load()

    # Default settings for single-client figures; the batching comparison gives the batching
    # server a short queue delay so concurrent requests fill its UNet batch, and a batch limit
    # equal to the clients' concurrency (as the peers' max_batch_size): with a limit above it,
    # every batch waits out the whole window for a request that cannot come (Triton's dynamic
    # batcher does the same; its preferred_batch_size plays this part).
    results: list[Result] = []
    with (served("diffusion", model, sets) as default,
          served("diffusion", model, sets | {"max_queue_delay_ms": QUEUE_DELAY_MS, "max_batch_images": 4}) as batched,
          served("diffusion", model, sets | {"batching": False}) as unbatched,
          channel(default) as ch_d, channel(batched) as ch_b, channel(unbatched) as ch_u):
        stub_d = pb_grpc.DiffusionStub(ch_d)
        stub_b, stub_u = pb_grpc.DiffusionStub(ch_b), pb_grpc.DiffusionStub(ch_u)
        results.append(_served_vs_inprocess(stub_d, pb, runner, 31, family))
        results.append(_previews(stub_d, pb, 31, family))
        results.append(_batching(stub_b, stub_u, pb, runner, 8, family))
        if family == "sd":
            results.extend(_finetune(stub_d, pb, cpb, adapters, model, steps=30))
    runner.close()
    for r in results:
        r.notes += f"; bench preset tiny {family}, {threads} torch thread(s), each server in its own process"
        if family in ("sd3", "flux"):
            r.notes += f", t5_max_tokens {SD3_T5_TOKENS}"
    return results


def run(parts: tuple[str, ...] = ("sd", "sdxl", "sd3", "flux", "control")) -> list[Result]:
    import torch

    # One intra-op thread everywhere (served worker and in-process baseline alike): on a shared
    # 2-core box two OpenMP threads spin against other processes and steps get ~20x slower.
    torch.set_num_threads(THREADS)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-diffusion-") as tmp:
        for part in parts:
            if part == "control":
                from benchmarks.diffusion_control import controls

                results.extend(controls(Path(tmp), THREADS))
            else:
                results.extend(_family(part, Path(tmp), THREADS))
    return results


if __name__ == "__main__":  # pragma: no cover
    # ``python -m benchmarks.bench_diffusion flux control``: re-measure those parts only and merge
    # them into results.json (``make bench`` runs every part).
    import sys

    from benchmarks.run import merge

    parts = tuple(sys.argv[1:]) or ("sd", "sdxl", "sd3", "flux", "control")
    fresh = run(parts)
    for r in fresh:
        print(f"{r.name} = {r.value:.4g} (target {r.target}, {'met' if r.met else 'NOT met'}) {r.notes}")
    merge(fresh, {PREFIX if p == "sd" else f"{PREFIX}{p}." for p in parts})
