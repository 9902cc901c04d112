"""unfragile side by side with LitServe and PyTriton serving the same models (``make bench-peers``).

The peers are the real packages, each in its own virtual environment under ``.peers/``
(built on first use from pinned requirements: benchmarks/peers/venvs.py). Every server
runs in its own process and loads the same bench model folders through
``from_pretrained``: Kosmos-2 ``.models/tiny-kosmos2-bench`` and Stable Diffusion
``.models/tiny-sd-bench`` (built if missing). All sides get the same torch intra-op
thread count (``THREADS``: one per two cores, so each server keeps cores for its HTTP or
gRPC front end and the load generator), the same batching knobs (Kosmos-2: at most 16
per batch, 2 ms queue window; SD: 4 images, 25 ms), the same requests (images, prompts,
greedy decoding, seeds) from one load generator (benchmarks/peers/clients.py), in
interleaved rounds (side order rotates), and every value is the median of per-round
ratios with the raw figures and their spread in the notes.

Same work is checked, not assumed: every caption the peers return is compared token for
token with unfragile's answer to the identical request (bench model; the bench model's
greedy captions hardly depend on the image, so the tiny Kosmos-2, whose captions do, is
checked too, batched), and every image pixel for pixel (same seed; tolerance
``PIXEL_TOLERANCE`` levels, since batch composition changes float sums). A peer whose
answers differ gets its entries marked void.

Entries (unfragile / peer): ``peer.vl.{litserve,pytriton}.throughput_16`` (req/s, 16
clients; targets 1.2 and 1.0), ``peer.vl.{litserve,pytriton}.p50_1`` (latency, 1 client;
targets 1.0 and 1.05), ``peer.vl.litserve.mixed_throughput_16`` (8- and 64-token captions
interleaved, 16 clients; target 1.5), ``peer.vl.litserve_openai.chat_p50_1`` (chat completion
latency through the official ``openai`` SDK: unfragile's OpenAI-compatible frontend against
LitServe's own ``OpenAISpec``, 1 client, alternating calls; target 1.0; what LitServe's spec
could not do is in its notes and benchmarks/peers/openai_chat.py),
``peer.diffusion.{litserve,pytriton}.throughput_4`` (images/s, 4 clients; target 1.0).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.bench_vl import noise_images
from benchmarks.common import Result
from benchmarks.peers import clients as cl
from benchmarks.peers import openai_chat, venvs
from benchmarks.peers import report as rp
from benchmarks.peers import servers as sv

PREFIX = "peer."
THREADS = max(1, (os.cpu_count() or 2) // 2)
MODELS = venvs.ROOT / ".models"
VL_MODEL, CHECK_MODEL, SD_MODEL = MODELS / "tiny-kosmos2-bench", MODELS / "tiny-kosmos2", MODELS / "tiny-sd-bench"
VL_BATCH, VL_DELAY_MS = 16, 2.0  # unfragile's VisionLanguage defaults
SD_BATCH, SD_DELAY_MS = 4, 25.0  # the diffusion benchmark's batching window
NEW_TOKENS, MIXED = 24, (8, 64)
ROUNDS, ONE_CLIENT, PER_CLIENT, PER_CLIENT_MIXED = 3, 5, 2, 4
SD_STEPS, SD_SIZE, SD_GUIDANCE, SD_ROUNDS, SD_CLIENTS, SD_PER_CLIENT = 8, 64, 7.5, 4, 4, 4
PIXEL_TOLERANCE = 2  # of 255 levels
VL_SERVICE = "unfragile.visionlanguage.v1.VisionLanguage"
SD_SERVICE = "unfragile.diffusion.v1.Diffusion"


def _log(msg: str) -> None:
    print(f"  [peers] {msg}", file=sys.stderr, flush=True)


def _ensure_models() -> None:
    from services.diffusion.tiny import build_tiny_sd
    from services.visionlanguage.tiny import build_tiny_kosmos2

    if not (VL_MODEL / "config.json").exists():
        build_tiny_kosmos2(VL_MODEL, "bench")
    if not (CHECK_MODEL / "config.json").exists():
        build_tiny_kosmos2(CHECK_MODEL, "tiny")
    if not (SD_MODEL / "model_index.json").exists():
        build_tiny_sd(SD_MODEL, preset="bench")


Groups = dict[str, list[sv.Server]]  # side name -> its server processes


def _vl_settings() -> dict[str, object]:
    """unfragile VisionLanguage's settings beside the peers (caches off: every request is new work)."""
    return {"threads": THREADS, "max_batch_size": VL_BATCH, "max_queue_delay_ms": VL_DELAY_MS,
            "feature_cache_size": 0, "prefix_cache_size": 0, "log_level": "WARNING"}


def _start_vl(stack: contextlib.ExitStack) -> tuple[list[Any], Groups]:
    ours_settings = _vl_settings()
    ours, address = sv.start_unfragile("unfragile-vl", "visionlanguage", VL_MODEL, ours_settings)
    stack.callback(ours.stop)
    check, check_address = sv.start_unfragile("unfragile-vl-check", "visionlanguage", CHECK_MODEL, ours_settings)
    stack.callback(check.stop)
    lit, lit_port = sv.start_litserve("litserve-vl", "vl", VL_MODEL, THREADS, VL_BATCH, VL_DELAY_MS, CHECK_MODEL)
    stack.callback(lit.stop)
    tri, tri_port = sv.start_pytriton("pytriton-vl", "vl", VL_MODEL, THREADS, VL_BATCH, int(VL_DELAY_MS * 1000),
                                      CHECK_MODEL)
    stack.callback(tri.stop)
    deadline = time.monotonic() + sv.START_TIMEOUT_S
    sv.wait_grpc(ours, address, VL_SERVICE, deadline)
    sv.wait_grpc(check, check_address, VL_SERVICE, deadline)
    sv.wait_http(lit, f"http://127.0.0.1:{lit_port}/health", deadline)
    for model in ("kosmos2", "kosmos2_check"):
        sv.wait_http(tri, f"http://127.0.0.1:{tri_port}/v2/models/{model}/ready", deadline)
    ours_side = cl.UnfragileCaption(address, check_address)
    stack.callback(ours_side.close)
    groups = {"unfragile": [ours, check], "litserve": [lit], "pytriton": [tri]}
    return [ours_side, cl.LitServeCaption(lit_port), cl.TritonCaption(tri_port)], groups


def _vl_plans(rnd: int) -> dict[str, list[list[tuple[int, int]]]]:
    """Request keys (image index, max_new_tokens) per client; every (round, kind) uses its own images."""
    base = 100 * rnd
    mixed = base + ONE_CLIENT + 16 * PER_CLIENT
    return {
        "one": [[(base + k, NEW_TOKENS) for k in range(ONE_CLIENT)]],
        "sixteen": [[(base + ONE_CLIENT + c * PER_CLIENT + k, NEW_TOKENS) for k in range(PER_CLIENT)]
                    for c in range(16)],
        "mixed": [[(mixed + c * PER_CLIENT_MIXED + k, MIXED[(c + k) % 2]) for k in range(PER_CLIENT_MIXED)]
                  for c in range(16)],
    }


def _vl_rounds(sides: list[Any], groups: Groups,
               images: list[bytes]) -> tuple[dict[str, rp.Rounds], dict[str, dict[Any, list[int]]]]:
    kinds = {"one": rp.Rounds(), "sixteen": rp.Rounds(), "mixed": rp.Rounds()}
    answers: dict[str, dict[Any, list[int]]] = {s.name: {} for s in sides}
    for rnd in range(ROUNDS):
        order = sides[rnd % len(sides):] + sides[:rnd % len(sides)]
        for kind, plan in _vl_plans(rnd).items():
            for side in order:
                if kind == "mixed" and side.name == "pytriton":
                    continue  # the mixed-length entry compares with LitServe only
                with sv.alone(groups, side.name):
                    load = cl.run_load(_captions(side, images), plan)
                kinds[kind].add(side.name, load)
                answers[side.name].update(load.answers)
                _log(f"round {rnd + 1}/{ROUNDS} {kind:7s} {side.name:9s} {load.per_s:6.2f} req/s")
    return kinds, answers


def _captions(side: Any, images: list[bytes], check: bool = False) -> Callable[[tuple[int, int]], list[int]]:
    """A request key (image index, max_new_tokens) -> that caption's token ids from ``side``."""
    return lambda key: side.caption(images[key[0] % len(images)], key[1], check=check)


def _vl_check(sides: list[Any], groups: Groups, images: list[bytes]) -> dict[str, dict[Any, list[int]]]:
    """Captions of the tiny Kosmos-2 (image-dependent), 8 concurrent clients so the peers batch them."""
    plan = [[(i, 64), (8 + i, NEW_TOKENS)] for i in range(8)]
    out = {}
    for side in sides:
        with sv.alone(groups, side.name):
            out[side.name] = cl.run_load(_captions(side, images, check=True), plan).answers
    return out


def _vl_warm(sides: list[Any], groups: Groups, images: list[bytes]) -> None:
    for side in sides:
        with sv.alone(groups, side.name):
            side.caption(images[0], NEW_TOKENS)
            cl.run_load(_captions(side, images), [[(i, NEW_TOKENS)] for i in range(1, 17)])


def _vl_results(kinds: dict[str, rp.Rounds]) -> list[Result]:
    one, sixteen, mixed = kinds["one"], kinds["sixteen"], kinds["mixed"]
    out = []
    for peer, t_target, p_target in (("litserve", 1.2, 1.0), ("pytriton", 1.0, 1.05)):
        tp = rp.ratio_result(
            f"peer.vl.{peer}.throughput_16", t_target, "higher", sixteen.per_s("unfragile"), sixteen.per_s(peer), peer,
            f"{peer} req/s, same 16-client load (median of per-round ratios)", "req/s")
        tp.notes += f"; latency {rp.latency_summary(sixteen, ['unfragile', peer])}"
        out.append(tp)
        p50 = rp.ratio_result(
            f"peer.vl.{peer}.p50_1", p_target, "lower", [x * 1000 for x in one.p50s("unfragile")],
            [x * 1000 for x in one.p50s(peer)], peer, f"{peer} Caption p50 at 1 client (median of per-round ratios)",
            "ms p50", ".0f")
        p50.notes += f"; pooled: {rp.latency_summary(one, ['unfragile', peer])}"
        out.append(p50)
    mix = rp.ratio_result(
        "peer.vl.litserve.mixed_throughput_16", 1.5, "higher", mixed.per_s("unfragile"), mixed.per_s("litserve"),
        "litserve", "litserve req/s, same mixed 8/64-token load at 16 clients (median of per-round ratios)", "req/s")
    mix.notes += f"; latency {rp.latency_summary(mixed, ['unfragile', 'litserve'])}"
    out.append(mix)
    return out


def _vl_phase() -> list[Result]:
    images = noise_images(ROUNDS * 100 + 20)
    with contextlib.ExitStack() as stack:
        t = time.perf_counter()
        sides, groups = _start_vl(stack)
        _log(f"VisionLanguage servers up in {time.perf_counter() - t:.0f} s")
        check = _vl_check(sides, groups, images[-16:])
        _vl_warm(sides, groups, images[-20:])
        kinds, answers = _vl_rounds(sides, groups, images[:ROUNDS * 100])
    results = _vl_results(kinds)
    for peer in ("litserve", "pytriton"):
        n_check, bad_check = rp.token_mismatches(check, peer)
        n_bench, bad_bench = rp.token_mismatches(answers, peer)
        bad = bad_check + bad_bench
        note = (f"same work: {n_check + n_bench} identical requests ({n_check} tiny-model check captions, "
                f"{rp.distinct(check['unfragile'])} distinct; {n_bench} bench-model captions, "
                f"{rp.distinct(answers['unfragile'])} distinct), "
                + (f"{len(bad)} differ" if bad else "all equal token for token"))
        for r in results:
            if f".{peer}." in r.name:
                r.notes += f"; {note}"
                if bad:
                    r.void = f"{len(bad)} of {n_check + n_bench} captions differ from unfragile's, e.g. {bad[0]}"
    return results


def _openai_phase() -> list[Result]:
    """LitServe's OpenAISpec against unfragile's OpenAI-compatible frontend (benchmarks/peers/openai_chat.py)."""
    return openai_chat.phase(VL_MODEL, CHECK_MODEL, THREADS, VL_BATCH, VL_DELAY_MS, _vl_settings(), NEW_TOKENS, _log)


def _start_sd(stack: contextlib.ExitStack, adapters: Path) -> tuple[list[Any], Groups]:
    ours, address = sv.start_unfragile("unfragile-sd", "diffusion", SD_MODEL, {
        "torch_threads": THREADS, "max_batch_images": SD_BATCH, "max_queue_delay_ms": SD_DELAY_MS, "batching": True,
        "adapters_dir": adapters, "log_level": "WARNING"})
    stack.callback(ours.stop)
    lit, lit_port = sv.start_litserve("litserve-sd", "diffusion", SD_MODEL, THREADS, SD_BATCH, SD_DELAY_MS)
    stack.callback(lit.stop)
    tri, tri_port = sv.start_pytriton("pytriton-sd", "diffusion", SD_MODEL, THREADS, SD_BATCH, int(SD_DELAY_MS * 1000))
    stack.callback(tri.stop)
    deadline = time.monotonic() + sv.START_TIMEOUT_S
    sv.wait_grpc(ours, address, SD_SERVICE, deadline)
    sv.wait_http(lit, f"http://127.0.0.1:{lit_port}/health", deadline)
    sv.wait_http(tri, f"http://127.0.0.1:{tri_port}/v2/models/sd/ready", deadline)
    ours_side = cl.UnfragileImage(address)
    stack.callback(ours_side.close)
    groups = {"unfragile": [ours], "litserve": [lit], "pytriton": [tri]}
    return [ours_side, cl.LitServeImage(lit_port), cl.TritonImage(tri_port)], groups


def _sd_rounds(sides: list[Any], groups: Groups) -> tuple[rp.Rounds, dict[str, dict[Any, bytes]]]:
    rounds = rp.Rounds()
    answers: dict[str, dict[Any, bytes]] = {s.name: {} for s in sides}
    for side in sides:  # warm-up: one alone (batch of 1 everywhere: bit-identical expected), then one full batch
        with sv.alone(groups, side.name):
            answers[side.name][1] = side.generate(1, SD_STEPS, SD_SIZE, SD_GUIDANCE)
            cl.run_load(_generate(side), [[2 + c] for c in range(SD_CLIENTS)])
    for rnd in range(SD_ROUNDS):
        order = sides[rnd % len(sides):] + sides[:rnd % len(sides)]
        plan = [[10_000 * (rnd + 1) + 100 * c + k for k in range(SD_PER_CLIENT)] for c in range(SD_CLIENTS)]
        for side in order:
            with sv.alone(groups, side.name):
                load = cl.run_load(_generate(side), plan)
            rounds.add(side.name, load)
            answers[side.name].update(load.answers)
            _log(f"round {rnd + 1}/{SD_ROUNDS} {side.name:9s} {load.per_s:6.2f} images/s")
    return rounds, answers


def _generate(side: Any) -> Callable[[int], bytes]:
    return lambda seed: side.generate(seed, SD_STEPS, SD_SIZE, SD_GUIDANCE)


def _sd_phase() -> list[Result]:
    with contextlib.ExitStack() as stack:
        adapters = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="peers-adapters-")))
        t = time.perf_counter()
        sides, groups = _start_sd(stack, adapters)
        _log(f"Diffusion servers up in {time.perf_counter() - t:.0f} s")
        rounds, answers = _sd_rounds(sides, groups)
    results = []
    for peer in ("litserve", "pytriton"):
        baseline = f"{peer} images/s, same 4-client load (median of per-round ratios)"
        r = rp.ratio_result(f"peer.diffusion.{peer}.throughput_4", 1.0, "higher", rounds.per_s("unfragile"),
                            rounds.per_s(peer), peer, baseline, "images/s")
        n, worst = rp.pixel_gap(answers, peer)
        r.notes += (f"; latency {rp.latency_summary(rounds, ['unfragile', peer])}; same work: {n} images of identical "
                    f"requests, largest pixel difference {worst} levels (tolerance {PIXEL_TOLERANCE})")
        if worst > PIXEL_TOLERANCE:
            r.void = f"images differ from unfragile's by up to {worst} levels (> {PIXEL_TOLERANCE})"
        results.append(r)
    return results


PHASES = ("vl", "openai", "sd")


def run(phases: tuple[str, ...] = PHASES) -> list[Result]:
    t = time.perf_counter()
    for name in venvs.NAMES if set(phases) - {"openai"} else ("litserve",):
        venvs.ensure(name)
    _ensure_models()
    _log(f"environments and models ready in {time.perf_counter() - t:.0f} s")
    run_phase = {"vl": _vl_phase, "openai": _openai_phase, "sd": _sd_phase}
    results = [r for phase in PHASES if phase in phases for r in run_phase[phase]()]
    rp.add_notes(results, lambda r: (
        f"{THREADS} torch thread(s) per server; Kosmos-2 bench, max batch {VL_BATCH}, {VL_DELAY_MS:g} ms window"
        if r.name == openai_chat.NAME else
        f"{THREADS} torch thread(s) per server; Kosmos-2 bench (greedy, {NEW_TOKENS} new tokens unless mixed), "
        f"max batch {VL_BATCH}, {VL_DELAY_MS:g} ms window; SD bench {SD_SIZE}x{SD_SIZE}, {SD_STEPS} DDIM steps, "
        f"max batch {SD_BATCH}, {SD_DELAY_MS:g} ms window; {ROUNDS} VL / {SD_ROUNDS} SD interleaved rounds"))
    _log(f"done in {time.perf_counter() - t:.0f} s")
    return results


if __name__ == "__main__":  # pragma: no cover
    # `python -m benchmarks.bench_peers [vl] [openai] [sd]`: the phases named (default all), their entries
    # written over the same names in results.json and RESULTS.md (the others are kept).
    from benchmarks.run import merge

    chosen = tuple(sys.argv[1:]) or PHASES
    if set(chosen) - set(PHASES):
        sys.exit(f"unknown phase(s) {', '.join(sorted(set(chosen) - set(PHASES)))}; choose from {', '.join(PHASES)}")
    fresh = run(chosen)
    for res in fresh:
        state = f"VOID {res.void}" if res.void else ("met" if res.met else "NOT met")
        print(f"{res.name} = {res.value:.4g} (target {res.target}, {state}) {res.notes}")
    merge(fresh, set())
