"""The GPU check: real-size Kosmos-2 and Stable Diffusion 1.5 served in fp16 over real gRPC.

``benchmarks/gpu_check.sh`` (``make bench-gpu``) sets up what is missing and runs this module.
It builds random-weight models at the real checkpoints' sizes (benchmarks/gpu/real_models.py),
serves each with ``unfragile serve <service> --model DIR --device cuda --dtype float16`` in its
own process, one at a time (ready when the gRPC health service says SERVING), drives it from
client threads over gRPC, and merges ``gpu.*`` entries into benchmarks/gpu/results.json and
RESULTS.md, with the card's name, driver and torch/CUDA versions as the device:

- ``gpu.vl.ttft_p50_ms.1_client`` / ``.32_clients``: StreamCaption time to the first token
  chunk, one call at a time / 32 calls started together.
- ``gpu.vl.tokens_per_s.1_client`` / ``.32_clients`` / ``.32_over_1_client``: generated
  tokens per second of greedy Caption calls, one client in a row vs 32 concurrent clients
  (continuous batching, max_batch_size 32).
- ``gpu.vl.batched_vs_unbatched.mismatch_rate``: share of requests whose greedy token stream
  differs between the unbatched (1 client) and the batched (32 clients) run of the same
  requests. fp16 kernels may round differently at other batch shapes; the rate is reported
  as measured.
- ``gpu.diffusion.images_per_s.1_client`` / ``.4_clients`` / ``.4_over_1_client``: 512x512,
  20 steps, cross-request UNet batching (max_batch_images 4, 25 ms queue delay).
- ``gpu.vl.peak_memory_mb``, ``gpu.diffusion.peak_memory_mb``: each server's peak, measured
  from outside the process (benchmarks/gpu/serving.py says how).
- ``gpu.check.wall_s``: the whole check (builds included), target under 8 minutes.

``--deadline-s`` bounds the run: past it (or on SIGTERM) the check stops measuring and writes
what it has, marked incomplete, and exits with 4. Results are written after each server's
measurements, so an external kill loses at most the server being measured.
``--device cpu --quick`` runs the same code with scaled-down models, fp32 and a few
requests (the test suite does, so the script cannot rot).
"""

from __future__ import annotations

import argparse
import math
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.bench_vl import _stream_ttft, noise_images
from benchmarks.common import Result, device_description
from benchmarks.gpu.real_models import KOSMOS2_QUICK, KOSMOS2_REAL, SD15_QUICK, SD15_REAL, build_kosmos2, build_sd
from benchmarks.gpu.serving import Server
from benchmarks.run import merge

PREFIX = "gpu."
RESULTS = Path(__file__).resolve().parent / "results.json"
WALL_TARGET_S = 480.0
MEMORY_TARGET_MB = 16384.0  # fits a 16 GB card


@dataclass(frozen=True)
class Plan:
    """Request counts and sizes of one run."""

    new_tokens: int
    vl_sequential: int  # 1-client Caption calls (also the unbatched side of the equality check)
    vl_clients: int
    vl_per_client: int
    ttft_n: int
    sd_side: int
    sd_steps: int
    sd_sequential: int
    sd_clients: int
    sd_per_client: int


FULL = Plan(new_tokens=32, vl_sequential=16, vl_clients=32, vl_per_client=2, ttft_n=8,
            sd_side=512, sd_steps=20, sd_sequential=4, sd_clients=4, sd_per_client=2)
QUICK = Plan(new_tokens=8, vl_sequential=4, vl_clients=32, vl_per_client=1, ttft_n=2,
             sd_side=64, sd_steps=4, sd_sequential=2, sd_clients=4, sd_per_client=1)


_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[gpu-check {time.perf_counter() - _T0:6.1f} s] {msg}", file=sys.stderr, flush=True)


class OutOfTime(Exception):
    """The deadline passed, or the process was asked to stop (SIGTERM)."""


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds if seconds > 0 else math.inf

    def left(self) -> float:
        return self.end - time.monotonic()

    def check(self, next_step: str) -> None:
        if self.left() <= 0:
            raise OutOfTime(f"out of time before {next_step}")


def _driver_version() -> str:
    if shutil.which("nvidia-smi") is None:
        return "unknown"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return "unknown"
    return out.strip().splitlines()[0] if out.strip() else "unknown"


def environment(device: str) -> dict[str, str]:
    """The card (or CPU), driver, torch, CUDA and Python versions the numbers were measured with."""
    import torch

    env = {"torch": str(torch.__version__), "python": platform.python_version()}
    if device.startswith("cuda"):
        dev = torch.device(device)
        memory = torch.cuda.get_device_properties(dev).total_memory / 2**30
        env |= {"card": str(torch.cuda.get_device_name(dev)), "driver": _driver_version(),
                "cuda": str(torch.version.cuda), "memory": f"{memory:.0f} GiB"}
    else:
        env["card"] = device_description()
    return env


def device_label(env: dict[str, str]) -> str:
    """``NVIDIA H100 80GB HBM3 (driver 550.54.15, torch 2.13.0+cu128, CUDA 12.8)``; CPUs name torch only."""
    if "driver" in env:
        return f"{env['card']} (driver {env['driver']}, torch {env['torch']}, CUDA {env['cuda']})"
    return f"{env['card']} (torch {env['torch']})"


def sync(device: str) -> None:
    """Wait for this process's queued GPU work (the builds) before reading the clock."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


# ---- VisionLanguage ------------------------------------------------------------------------------------
def _caption_request(data: bytes, new_tokens: int) -> Any:
    from unfragile.common.v1 import common_pb2
    from unfragile.visionlanguage.v1 import visionlanguage_pb2 as pb

    req = pb.CaptionRequest(image=common_pb2.Image(data=data))
    req.sampling.max_new_tokens = new_tokens  # temperature 0: greedy
    return req


def _vl_load(stub: Any, imgs: list[bytes], clients: int, per_client: int, new_tokens: int) -> tuple[float, list[Any]]:
    """(wall seconds, responses in image order): client c sends imgs[c*per_client + k] in a row."""
    responses: list[Any] = [None] * (clients * per_client)
    barrier = threading.Barrier(clients)

    def worker(c: int) -> None:
        barrier.wait()
        for k in range(per_client):
            i = c * per_client + k
            responses[i] = stub.Caption(_caption_request(imgs[i], new_tokens), timeout=600)

    t = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))
    return time.perf_counter() - t, responses


def _mismatch(alone: list[Any], together: list[Any]) -> tuple[float, str]:
    """Share of requests whose token streams differ, and a note on where they diverge."""
    differ, first_diff, agree, total = 0, [], 0, 0
    for a, b in zip(alone, together):
        x, y = list(a.token_ids), list(b.token_ids)
        same = [p == q for p, q in zip(x, y)]
        agree += sum(same)
        total += max(len(x), len(y))
        if x != y:
            differ += 1
            first_diff.append(same.index(False) if False in same else min(len(x), len(y)))
    where = f"; first divergence at token {sorted(first_diff)}" if first_diff else ""
    return differ / len(alone), (f"{differ}/{len(alone)} token streams differ, token agreement "
                                 f"{agree / max(total, 1):.3f}{where}")


def _concurrent_ttft(stub: Any, pb: Any, imgs: list[bytes]) -> list[float]:
    """Time to the first token of ``len(imgs)`` StreamCaption calls started together."""
    barrier = threading.Barrier(len(imgs))

    def one(data: bytes) -> float:
        barrier.wait()
        return _stream_ttft(stub, pb, data)

    with ThreadPoolExecutor(len(imgs)) as pool:
        return list(pool.map(one, imgs))


def measure_vl(stub: Any, plan: Plan, dtype: str) -> list[Result]:
    from unfragile.visionlanguage.v1 import visionlanguage_pb2 as pb

    k, c = plan.vl_sequential, plan.vl_clients
    imgs = noise_images(1 + c + plan.ttft_n + c + c * plan.vl_per_client)
    cut = [1, 1 + c, 1 + c + plan.ttft_n, 1 + 2 * c + plan.ttft_n]
    warm, warm_c, ttft_imgs, ttft_c_imgs, load_imgs = (imgs[a:b] for a, b in zip([0, *cut], [*cut, len(imgs)]))
    stub.Caption(_caption_request(warm[0], plan.new_tokens), timeout=600)
    _vl_load(stub, warm_c, c, 1, plan.new_tokens)  # warm the batched shapes too
    # StreamCaption calls are cancelled after their first token: generation length does not matter
    ttft1 = statistics.median(_stream_ttft(stub, pb, data) for data in ttft_imgs)
    ttft_c = _concurrent_ttft(stub, pb, ttft_c_imgs)
    wall1, alone = _vl_load(stub, load_imgs, 1, k, plan.new_tokens)
    wall_c, together = _vl_load(stub, load_imgs, c, plan.vl_per_client, plan.new_tokens)
    tok1 = sum(r.usage.completion_tokens for r in alone)
    tok_c = sum(r.usage.completion_tokens for r in together)
    tps1, tps_c = tok1 / wall1, tok_c / wall_c
    rate, how = _mismatch(alone, together[:k])
    return [
        Result("gpu.vl.ttft_p50_ms.1_client", ttft1 * 1000, 200.0, "lower", "ms", "absolute",
               f"StreamCaption, 1 client, time to the first chunk with a token, p50 of {plan.ttft_n} requests"),
        Result(f"gpu.vl.ttft_p50_ms.{c}_clients", statistics.median(ttft_c) * 1000, 1000.0, "lower", "ms",
               "absolute", f"{c} StreamCaption calls started together: p50 of their times to the first token, "
                           f"max {max(ttft_c) * 1000:.0f} ms"),
        Result("gpu.vl.tokens_per_s.1_client", tps1, 30.0, "higher", "tokens/s", "absolute",
               f"{k} greedy Caption calls in a row (max_new_tokens {plan.new_tokens}): {tok1} tokens in {wall1:.2f} s"),
        Result(f"gpu.vl.tokens_per_s.{c}_clients", tps_c, 240.0, "higher", "tokens/s", "absolute",
               f"{c} concurrent clients x {plan.vl_per_client} greedy Caption calls (max_new_tokens "
               f"{plan.new_tokens}): {tok_c} tokens in {wall_c:.2f} s"),
        Result(f"gpu.vl.tokens_per_s.{c}_over_1_client", tps_c / tps1 if tps1 else 0.0, 8.0, "higher", "ratio",
               "tokens/s of 1 client calling Caption in a row", f"{tps_c:.1f} vs {tps1:.1f} tokens/s"),
        Result("gpu.vl.batched_vs_unbatched.mismatch_rate", rate, 0.0, "lower", "fraction",
               "the same greedy requests run one at a time (1 client)",
               f"{dtype}: the first {k} requests alone vs inside the {c}-client run: {how}"),
    ]


# ---- Diffusion -------------------------------------------------------------------------------------------
def _sd_call(stub: Any, seed: int, plan: Plan) -> Any:
    from unfragile.diffusion.v1 import diffusion_pb2 as pb

    params = pb.GenerationParams(prompt="a photo of a red cat", width=plan.sd_side, height=plan.sd_side,
                                 steps=plan.sd_steps, seed=seed)
    result = None
    for ev in stub.TextToImage(pb.TextToImageRequest(params=params), timeout=600):
        if ev.WhichOneof("event") == "result":
            result = ev.result
    if result is None or not result.images:
        raise RuntimeError("TextToImage ended without a result")
    return result


def _sd_load(stub: Any, plan: Plan, clients: int, per_client: int, seed0: int) -> tuple[float, float]:
    """(images/s, mean UNet batch) of ``clients`` threads each sending ``per_client`` requests in a row."""
    batches: list[int] = []
    barrier = threading.Barrier(clients)

    def worker(c: int) -> None:
        barrier.wait()
        for i in range(per_client):
            batches.append(_sd_call(stub, seed0 + 1000 * c + i, plan).batch_images)

    t = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))
    return clients * per_client / (time.perf_counter() - t), statistics.mean(batches)


def measure_sd(stub: Any, plan: Plan) -> list[Result]:
    c = plan.sd_clients
    _sd_call(stub, 1, plan)
    _sd_load(stub, plan, c, 1, 10)  # warm the batched shapes too
    ips1, _ = _sd_load(stub, plan, 1, plan.sd_sequential, 100)
    ips_c, batch = _sd_load(stub, plan, c, plan.sd_per_client, 200)
    what = f"{plan.sd_side}x{plan.sd_side}, {plan.sd_steps} DDIM steps, guidance 7.5"
    return [
        Result("gpu.diffusion.images_per_s.1_client", ips1, 1.0, "higher", "images/s", "absolute",
               f"{what}: {plan.sd_sequential} TextToImage calls in a row"),
        Result(f"gpu.diffusion.images_per_s.{c}_clients", ips_c, 1.2, "higher", "images/s", "absolute",
               f"{what}: {c} concurrent clients x {plan.sd_per_client} calls, mean UNet batch {batch:.1f} images"),
        Result(f"gpu.diffusion.images_per_s.{c}_over_1_client", ips_c / ips1, 1.2, "higher", "ratio",
               "images/s of 1 client calling TextToImage in a row", f"{ips_c:.2f} vs {ips1:.2f} images/s"),
    ]


# ---- the run ---------------------------------------------------------------------------------------------
def _peak(server: Server, name: str, weights_mb: float) -> Result:
    return Result(name, server.peak_mb, MEMORY_TARGET_MB, "lower", "MiB", "absolute (fits a 16 GB card)",
                  f"{server.peak_method}; weights {weights_mb:.0f} MiB")


class Run:
    """The results of one check, written after each step so that a stopped run keeps what it measured."""

    def __init__(self, args: argparse.Namespace, env: dict[str, str]) -> None:
        self.args, self.env = args, env
        self.results: list[Result] = []
        self.incomplete = ""

    def add(self, fresh: list[Result], suffix: str = "") -> None:
        for r in fresh:
            r.notes += suffix
        self.results += fresh
        self.save()

    def save(self) -> None:
        size = "scaled-down (--quick)" if self.args.quick else "real-size"
        label = device_label(self.env)
        out = []
        for r in self.results:
            notes = f"{r.notes}; {size} random-weight models, {self.args.dtype}"
            if self.incomplete:
                notes += f"; INCOMPLETE run ({self.incomplete})"
            out.append(Result(r.name, r.value, r.target, r.better, r.unit, r.baseline, notes, r.void, label, r.date))
        write_results(self.args.results, out, self.env, self.incomplete)


def write_results(path: Path, fresh: list[Result], env: dict[str, str], incomplete: str) -> None:
    """Merge ``fresh`` into ``path`` (entries of other areas kept) and write RESULTS.md beside it."""
    merge(fresh, {PREFIX}, path)
    table = [line for line in (path.parent / "RESULTS.md").read_text().splitlines() if line.startswith("|")]
    facts = ", ".join(f"{k} {v}" for k, v in env.items())
    head = [
        "# GPU check results",
        "",
        "Written by `make bench-gpu` (benchmarks/gpu_check.sh; docs/gpu.md): real-size random-weight Kosmos-2 and",
        "Stable Diffusion 1.5 served over gRPC. Absolute targets are GPU targets; a CPU smoke run's numbers only",
        "show that the check runs.",
        "",
        f"Last run: {facts}.{' **Incomplete**: ' + incomplete + '.' if incomplete else ''}",
        "",
    ]
    (path.parent / "RESULTS.md").write_text("\n".join(head + table) + "\n")


def _serve_and_measure(args: argparse.Namespace, plan: Plan, work: Path, models: dict[str, Any], run: Run,
                       deadline: Deadline) -> None:
    from services.core.client import channel
    from unfragile.diffusion.v1 import diffusion_pb2_grpc
    from unfragile.visionlanguage.v1 import visionlanguage_pb2_grpc

    cpu = args.device == "cpu"
    threads = {"threads": 1} if cpu else {}
    vl_sets = {"max_batch_size": plan.vl_clients, "max_queue_size": 4 * plan.vl_clients, "feature_cache_size": 0,
               "prefix_cache_size": 0, "attn_implementation": args.attn, "log_level": "WARNING", **threads}
    vl = models["vl"]
    deadline.check("serving Kosmos-2")
    log(f"serving Kosmos-2 ({vl.parameters / 1e6:.1f} M parameters) on {args.device} in {args.dtype}")
    results: list[Result] = []
    with Server("visionlanguage", vl.path, args.device, args.dtype, vl_sets, work / "visionlanguage.log",
                start_timeout_s=min(600.0, deadline.left())) as srv:
        log(f"visionlanguage SERVING at {srv.address}; measuring")
        with channel(srv.address) as ch:
            results += measure_vl(visionlanguage_pb2_grpc.VisionLanguageStub(ch), plan, args.dtype)
    results.append(_peak(srv, "gpu.vl.peak_memory_mb", vl.parameters * _bytes(args.dtype) / 2**20))
    run.add(results, f"; Kosmos-2 attention {args.attn}")
    sd = models["sd"]
    sd_sets = {"max_batch_images": plan.sd_clients, "max_queue_delay_ms": 25, "batching": "true",
               "adapters_dir": str(work / "adapters"), "log_level": "WARNING",
               **({"torch_threads": 1} if cpu else {})}
    deadline.check("serving Stable Diffusion")
    log(f"serving Stable Diffusion ({sd.parameters / 1e6:.1f} M parameters) on {args.device} in {args.dtype}")
    results = []
    with Server("diffusion", sd.path, args.device, args.dtype, sd_sets, work / "diffusion.log",
                start_timeout_s=min(600.0, deadline.left())) as srv:
        log(f"diffusion SERVING at {srv.address}; measuring")
        with channel(srv.address) as ch:
            results += measure_sd(diffusion_pb2_grpc.DiffusionStub(ch), plan)
    results.append(_peak(srv, "gpu.diffusion.peak_memory_mb", sd.parameters * _bytes(args.dtype) / 2**20))
    run.add(results)


def _bytes(dtype: str) -> int:
    return 4 if dtype == "float32" else 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmarks/gpu_check.sh", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    p.add_argument("--dtype", default="", help="default float16 on cuda, float32 on cpu")
    p.add_argument("--quick", action="store_true", help="scaled-down models and a few requests (CPU smoke run)")
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="Kosmos-2 attention implementation")
    p.add_argument("--results", type=Path, default=RESULTS,
                   help="results JSON to merge into (RESULTS.md is written next to it)")
    p.add_argument("--work", type=Path, default=Path(".models/gpu-check"),
                   help="where the models are built (reused when already built the same way) and server logs go")
    p.add_argument("--deadline-s", type=float, default=0.0,
                   help="stop measuring after this many seconds and write what was measured (0 = no limit)")
    args = p.parse_args(argv)
    args.dtype = args.dtype or ("float32" if args.device == "cpu" else "float16")
    return args


def main(argv: list[str] | None = None) -> int:
    def stop(signum: int, frame: Any) -> None:
        raise OutOfTime("stopped by SIGTERM")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        return _check(parse_args(argv))
    finally:
        signal.signal(signal.SIGTERM, previous)


def _check(args: argparse.Namespace) -> int:
    import torch

    deadline = Deadline(args.deadline_s)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        log(f"torch {torch.__version__} sees no CUDA device; run with --device cpu --quick for the CPU smoke run")
        return 2
    plan = QUICK if args.quick else FULL
    env = environment(args.device)
    run = Run(args, env)
    log(f"device: {device_label(env)}; {'quick (scaled-down) models' if args.quick else 'real-size models'}"
        f"{f'; deadline {args.deadline_s:.0f} s' if args.deadline_s else ''}")
    built = ""
    try:
        t = time.perf_counter()
        models = {"vl": build_kosmos2(args.work / ("kosmos2-quick" if args.quick else "kosmos2"),
                                      KOSMOS2_QUICK if args.quick else KOSMOS2_REAL, args.device, args.dtype),
                  "sd": build_sd(args.work / ("sd15-quick" if args.quick else "sd15"),
                                 SD15_QUICK if args.quick else SD15_REAL, args.device, args.dtype)}
        sync(args.device)
        built = "; ".join(f"{k} {m.parameters / 1e6:.1f} M params "
                          f"{'reused' if m.reused else f'built in {m.seconds:.1f} s'}" for k, m in models.items())
        log(f"models ready in {time.perf_counter() - t:.1f} s: {built}")
        _serve_and_measure(args, plan, args.work, models, run, deadline)
    except OutOfTime as exc:
        run.incomplete = str(exc)
        log(f"INCOMPLETE: {exc}; writing what was measured")
    wall = time.perf_counter() - _T0
    run.add([Result("gpu.check.wall_s", wall, WALL_TARGET_S, "lower", "s", "absolute",
                    f"the whole check after installation: builds ({built or 'not finished'}), two server starts, "
                    f"all requests")])
    for r in run.results:
        log(f"{r.name} = {r.value:.4g} {r.unit} (target {r.target:g}, {'met' if r.met else 'NOT met'})")
    log(f"wrote {len(run.results)} entries to {args.results} in {wall:.0f} s")
    return 4 if run.incomplete else 0


if __name__ == "__main__":
    sys.exit(main())
