"""What a GPU run depends on, checked on the CPU where the mechanism is the same.

Running out of memory (a CUDA ``OutOfMemoryError`` raised from inside the model call), the
memory-derived limits, the static KV cache and torch.compile against today's token streams,
greedy rows that never copy their logits, preprocessing off the scheduler thread, SDPA with
eager attention only for AttentionMap, fp16 weight files, and int8 refused before loading.
"""

from __future__ import annotations

import shutil
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
from PIL import Image
from prometheus_client import REGISTRY

from common.errors import InvalidArgument
from services.core.client import channel as make_channel
from services.core.server import RunningServer, start_server
from services.visionlanguage.app import Settings, build_service
from services.visionlanguage.batch import PrefillItem, StepOutput
from services.visionlanguage.memory import derive_limits, kv_bytes_per_position
from services.visionlanguage.runner import Kosmos2Runner
from services.visionlanguage.types import ImageInput
from tests.vl.vlhelpers import caption_request, png, rpc_code
from unfragile.visionlanguage.v1 import visionlanguage_pb2 as pb
from unfragile.visionlanguage.v1 import visionlanguage_pb2_grpc as pb_grpc

GiB, MiB = 2**30, 2**20


# ---- running out of memory --------------------------------------------------------------------------------
class OutOfMemoryRunner(Kosmos2Runner):
    """The real runner; its text model raises CUDA's out-of-memory error for batches over ``rows[stage]``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rows = {"prefill": 99, "decode": 99}
        self.held: list[weakref.ref[torch.Tensor]] = []  # what each failing call held when it failed
        self.model.text_model.register_forward_pre_hook(self._check, with_kwargs=True)

    def _check(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        ids = kwargs["input_ids"]
        stage = "decode" if ids.shape[1] == 1 else "prefill"
        if ids.shape[0] > self.rows[stage]:
            workspace = torch.empty(1 << 16)
            self.held.append(weakref.ref(workspace))
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 2.00 GiB (simulated: "
                                         f"{ids.shape[0]} rows in {stage})")


@pytest.fixture
def oom(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[RunningServer, OutOfMemoryRunner,
                                                                              list[bool]]]:
    holder: dict[str, OutOfMemoryRunner] = {}
    frees: list[bool] = []  # per torch.cuda.empty_cache call: were the failed calls' tensors gone?
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: frees.append(all(r() is None for r in holder["r"].held)))

    def factory() -> OutOfMemoryRunner:
        holder["r"] = OutOfMemoryRunner(tiny_model, torch.device("cpu"), torch.float32)
        return holder["r"]

    settings = Settings(port=0, metrics_port=-1, model=str(tiny_model), max_batch_size=4, max_queue_delay_ms=2000,
                        feature_cache_size=0, prefix_cache_size=0)
    srv = start_server(settings, build_service(settings, runner_factory=factory))
    yield srv, holder["r"], frees
    srv.stop(0)


def _together(stub: pb_grpc.VisionLanguageStub, reqs: list[pb.CaptionRequest]) -> list[tuple[Any, Any]]:
    """(response or None, (code, details)) of each request, all sent at once."""
    barrier = threading.Barrier(len(reqs))
    out: list[tuple[Any, Any]] = [(None, None)] * len(reqs)

    def call(i: int) -> None:
        barrier.wait()
        try:
            out[i] = (stub.Caption(reqs[i], timeout=60), (grpc.StatusCode.OK, ""))
        except grpc.RpcError as err:
            out[i] = (None, (err.code(), err.details()))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(reqs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    return out


def test_out_of_memory_fails_what_it_hit_frees_memory_and_runs_the_rest_smaller(oom) -> None:
    srv, runner, frees = oom
    reqs = [caption_request(png(noise=20 + 7 * i, color=(40 * i, 90, 200)),
                            sampling=pb.SamplingParams(max_new_tokens=6)) for i in range(4)]
    engine = srv.service.servicer.engine
    with make_channel(srv.address) as ch:
        stub = pb_grpc.VisionLanguageStub(ch)
        alone = [list(stub.Caption(r, timeout=30).token_ids) for r in reqs]
        before = REGISTRY.get_sample_value("unfragile_vl_out_of_memory_total", {"stage": "decode"}) or 0.0

        # A decode step of 4 rows runs out of memory: the 2 newest leave with RESOURCE_EXHAUSTED, the step is
        # retried with the other 2, which finish with the tokens they get alone.
        runner.rows = {"prefill": 99, "decode": 2}
        got = _together(stub, reqs)
        failed = [status for resp, status in got if resp is None]
        assert len(failed) == 2 and all(code == grpc.StatusCode.RESOURCE_EXHAUSTED for code, _ in failed), got
        assert all("ran out of device memory" in details for _, details in failed)
        for (resp, _), ids in zip(got, alone):
            if resp is not None:
                assert list(resp.token_ids) == ids
        assert engine.limit.value == 2
        assert REGISTRY.get_sample_value("unfragile_vl_out_of_memory_total", {"stage": "decode"}) == before + 1

        # Prefills of 2 rows run out of memory now: each is split, the rest waits and runs at the lower limit.
        runner.rows = {"prefill": 1, "decode": 99}
        got = _together(stub, reqs)
        assert [list(resp.token_ids) for resp, _ in got] == alone, [status for _, status in got]
        assert engine.limit.value == 1

        # A request that does not fit even alone fails by itself; the server keeps serving.
        runner.rows = {"prefill": 0, "decode": 99}
        code, details = rpc_code(stub.Caption, reqs[0], timeout=30)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
        runner.rows = {"prefill": 99, "decode": 99}
        assert list(stub.Caption(reqs[0], timeout=30).token_ids) == alone[0]
    deadline = time.monotonic() + 10
    while engine.stats() != {"running": 0, "waiting": 0}:  # the last sequence leaves after its answer is posted
        assert time.monotonic() < deadline, engine.stats()
        time.sleep(0.01)
    # Memory was given back after every failure, each time after the failed call's tensors were gone.
    assert len(frees) >= 3 and all(frees), frees


def test_limits_fit_the_free_memory() -> None:
    per = kv_bytes_per_position(layers=24, hidden=2048, element_size=2)  # the real Kosmos-2 in float16
    assert per == 192 * 1024
    # an 80 GB card after loading: 37.5 GiB for the cache / 384 MiB per sequence = 100, capped at 64
    big = derive_limits(75 * GiB, per, context=2048, fraction=0.5, gpu=True, prefix_cache_size=32)
    assert (big.max_batch_size, big.prefix_cache_size) == (64, 32) and "capped at 64" in big.note
    # a 16 GB card: 12 GiB free -> 6 GiB / 384 MiB = 16 sequences
    assert derive_limits(12 * GiB, per, 2048, 0.5, gpu=True, prefix_cache_size=32).max_batch_size == 16
    # almost nothing free: one sequence; the prefix cache shrinks to a tenth of the free memory (67 positions each)
    small = derive_limits(200 * MiB, per, 2048, 0.5, gpu=True, prefix_cache_size=32)
    assert (small.max_batch_size, small.prefix_cache_size) == (1, 1) and "lowered from 32 to 1" in small.note
    # a CPU stops at 16; a configured limit is kept as it is
    assert derive_limits(20 * GiB, 4096, 2048, 0.5, gpu=False, prefix_cache_size=32).max_batch_size == 16
    assert derive_limits(1 * GiB, per, 2048, 0.5, gpu=True, max_batch_size=48).max_batch_size == 48


def test_the_default_batch_limit_is_derived_at_start(stub, server: RunningServer) -> None:
    from services.visionlanguage.engine import Engine
    from services.visionlanguage.settings import EngineConfig

    runner = server.service.servicer.engine.runner
    engine = Engine(runner, EngineConfig())
    try:
        assert engine.config.max_batch_size == 16  # the tiny model fits many times over: the CPU cap
        assert "max_batch_size 16" in engine.info().details["memory_limits"]
    finally:
        engine.close()


# ---- decode: static KV cache, compile, greedy rows ----------------------------------------------------------
IMAGES = [Image.new("RGB", (64, 64), (30 * i, 200 - 40 * i, 90)) for i in range(4)]
PROMPTS = ["<grounding>An image of", "Question: what is the man holding in his hand? Answer:",
           "<grounding>Describe this image in detail:", "a"]


def _continuous_batch(runner: Kosmos2Runner, steps: int) -> list[list[int]]:
    """Greedy tokens of 4 prompts: two start, two join at step 5, one leaves at step 20 (merge, select, growth)."""
    feats = runner.image_features([ImageInput.from_pil(im) for im in IMAGES])
    items = [PrefillItem(runner.prompt_ids(p), f) for p, f in zip(PROMPTS, feats)]
    batch, out = runner.prefill(items[:2])
    toks: list[list[int]] = [[] for _ in items]
    rows = [0, 1]
    for step in range(steps):
        nxt = out.greedy()
        if step == 5:
            joined, first = runner.prefill(items[2:])
            batch = runner.merge(batch, joined)
            nxt, rows = nxt + first.greedy(), rows + [2, 3]
        if step == 20:
            batch = runner.select(batch, [0, 2, 3])
            nxt, rows = [nxt[0], nxt[2], nxt[3]], [rows[0], rows[2], rows[3]]
        for row, tok in zip(rows, nxt):
            toks[row].append(tok)
        out = runner.decode(batch, nxt)
    return toks


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_static_cache_gives_the_dynamic_caches_tokens(tiny_model: Path, attn: str) -> None:
    runs = {kv: _continuous_batch(Kosmos2Runner(tiny_model, torch.device("cpu"), torch.float32, kv_cache=kv,
                                                attn_implementation=attn), steps=70) for kv in ("dynamic", "static")}
    assert runs["static"] == runs["dynamic"]
    assert [len(t) for t in runs["static"]] == [70, 20, 65, 65]


def test_static_cache_writes_in_place_and_grows_by_blocks(tiny_model: Path) -> None:
    runner = Kosmos2Runner(tiny_model, torch.device("cpu"), torch.float32)
    feats = runner.image_features([ImageInput.from_pil(IMAGES[0])])
    batch, out = runner.prefill([PrefillItem(runner.prompt_ids(PROMPTS[0]), feats[0])])
    n = batch.length
    out = runner.decode(batch, out.greedy())  # the first step moves the prefill into a block-sized buffer
    assert (batch.length, batch.capacity) == (n + 1, (n // 64 + 1) * 64)
    buffer = batch.keys[0].data_ptr()
    for _ in range(batch.capacity - batch.length):
        out = runner.decode(batch, out.greedy())
        assert batch.keys[0].data_ptr() == buffer  # written in place, no copy per step
    runner.decode(batch, out.greedy())
    assert batch.capacity == (n // 64 + 2) * 64 and batch.keys[0].data_ptr() != buffer


def test_compiled_decode_gives_the_same_tokens(tiny_model: Path) -> None:
    plain = Kosmos2Runner(tiny_model, torch.device("cpu"), torch.float32)
    # torch.compile's "eager" backend traces the decode step with dynamo without generating code (fast on a CPU)
    traced = Kosmos2Runner(tiny_model, torch.device("cpu"), torch.float32, compile="eager")
    assert traced.info().details["compile"] == "eager"
    assert _continuous_batch(traced, steps=12) == _continuous_batch(plain, steps=12)
    with pytest.raises(InvalidArgument, match="kv_cache='static'"):
        Kosmos2Runner(tiny_model, torch.device("cpu"), torch.float32, kv_cache="dynamic", compile="inductor")


class _Ops(torch.utils._python_dispatch.TorchDispatchMode):
    """Records each aten op and the shape it produced."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        self.ops.append((func.overloadpacket.__name__, tuple(out.shape) if isinstance(out, torch.Tensor) else ()))
        return out


def _seq(runner: Kosmos2Runner, sampling: Any) -> Any:
    from services.core.cancel import CancelToken
    from services.visionlanguage.events import Job
    from services.visionlanguage.sequence import Seq

    pids = runner.prompt_ids("An image of")
    return Seq(Job(CancelToken()), 0, ImageInput.from_pil(IMAGES[0]), "An image of", pids, sampling,
               sampling.seed or 0, "")


def test_greedy_rows_copy_only_token_ids(tiny_model: Path) -> None:
    from services.visionlanguage.sequence import next_tokens
    from services.visionlanguage.types import Sampling

    runner = Kosmos2Runner(tiny_model, torch.device("cpu"), torch.float32)
    logits = torch.randn(4, 5000).to(torch.bfloat16)  # bf16 makes the float32 copy a visible op on a CPU
    seqs = [_seq(runner, Sampling(max_new_tokens=4)) for _ in range(4)]
    with _Ops() as greedy_ops:
        toks = next_tokens(seqs, StepOutput(logits))
    assert toks == logits.float().argmax(-1).tolist()
    assert [name for name, _ in greedy_ops.ops] == ["argmax"]  # no copy of any logits row
    seqs[1] = _seq(runner, Sampling(max_new_tokens=4, temperature=1.0, seed=3))
    with _Ops() as mixed_ops:
        next_tokens(seqs, StepOutput(logits))
    copies = [shape for name, shape in mixed_ops.ops if name == "_to_copy"]
    assert copies == [(1, 5000)]  # only the sampling row's logits become float32 CPU logits


# ---- preprocessing workers, attention implementations ----------------------------------------------------
class RecordingRunner(Kosmos2Runner):
    """The real runner; records the thread each preprocessing ran on and the attention each decode step used."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.preprocessed_on: list[str] = []
        self.attention: set[tuple[bool, str]] = set()  # (attention weights asked for, implementation) per call
        self.model.text_model.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        self.attention.add((bool(kwargs.get("output_attentions")), module.config._attn_implementation))

    def preprocess(self, images: list[ImageInput]) -> torch.Tensor:
        self.preprocessed_on.append(threading.current_thread().name)
        return super().preprocess(images)


def _recording_server(tiny_model: Path, workers: int) -> tuple[RunningServer, dict[str, RecordingRunner]]:
    holder: dict[str, RecordingRunner] = {}

    def factory() -> RecordingRunner:
        holder["r"] = RecordingRunner(tiny_model, torch.device("cpu"), torch.float32)
        return holder["r"]

    settings = Settings(port=0, metrics_port=-1, model=str(tiny_model), preprocess_workers=workers)
    return start_server(settings, build_service(settings, runner_factory=factory)), holder


def test_images_are_preprocessed_off_the_scheduler_thread(tiny_model: Path) -> None:
    reqs = [caption_request(png(noise=60 + i), sampling=pb.SamplingParams(max_new_tokens=5)) for i in range(3)]
    answers, threads = {}, {}
    for workers in (2, 0):
        srv, holder = _recording_server(tiny_model, workers)
        try:
            with make_channel(srv.address) as ch:
                stub = pb_grpc.VisionLanguageStub(ch)
                answers[workers] = [list(stub.Caption(r, timeout=30).token_ids) for r in reqs]
                resp = stub.AttentionMap(pb.AttentionMapRequest(caption=reqs[0]), timeout=60)
                assert list(resp.caption.token_ids) == answers[workers][0]
            threads[workers] = set(holder["r"].preprocessed_on)
            assert holder["r"].attention == {(False, "sdpa"), (True, "eager")}
        finally:
            srv.stop(0)
    assert answers[2] == answers[0]
    assert all(name.startswith("vl-preprocess") for name in threads[2]), threads
    assert threads[0] == {"vl-scheduler"}


# ---- loading ---------------------------------------------------------------------------------------------
def test_float16_reads_the_checkpoints_fp16_weight_files(tiny_model: Path, tmp_path: Path) -> None:
    from transformers import Kosmos2ForConditionalGeneration

    folder = Path(shutil.copytree(tiny_model, tmp_path / "kosmos2"))
    model = Kosmos2ForConditionalGeneration.from_pretrained(folder)
    with torch.no_grad():
        model.text_model.model.layer_norm.weight.fill_(0.5)  # marks the fp16 file's weights
    model.half().save_pretrained(folder, variant="fp16")
    assert (folder / "model.fp16.safetensors").is_file() and (folder / "model.safetensors").is_file()

    half = Kosmos2Runner(folder, torch.device("cpu"), torch.float16)
    weight = half.model.text_model.model.layer_norm.weight
    assert half.variant == "fp16" and half.info().details["weights_variant"] == "fp16"
    assert weight.dtype == torch.float16 and bool((weight == 0.5).all())
    full = Kosmos2Runner(folder, torch.device("cpu"), torch.float32)
    assert full.variant is None and not bool((full.model.text_model.model.layer_norm.weight == 0.5).all())


def test_int8_is_refused_before_loading(tmp_path: Path) -> None:
    # a path that would fail to load (ModelUnavailable) if loading came first
    with pytest.raises(InvalidArgument, match="int8 dynamic quantization runs on CPU only"):
        Kosmos2Runner(tmp_path / "no-such-model", torch.device("cuda"), torch.float16, quantize="int8")
    with pytest.raises(InvalidArgument, match="not supported"):
        Kosmos2Runner(tmp_path / "no-such-model", torch.device("cpu"), torch.float32, quantize="int4")
