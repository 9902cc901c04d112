"""The engine with a fake runner: batching, priorities, positions, bounds, OOM, interleaving.

The runner is replaced (style rule 3) so these tests control exactly when each batch
may proceed, and can assert which requests shared a UNet batch without any timing.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from PIL import Image

from common.errors import Cancelled, ResourceExhausted, UnfragileError
from services.core.cancel import CancelToken
from services.diffusion.engine import Engine, EngineConfig, GenJob, Interrupted
from services.diffusion.events import ResultEvent, StatusEvent
from services.diffusion.jobs import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, JobRegistry
from services.diffusion.types import GenerateRequest, GenerationParams
from tests.diffusion.conftest import StubRunner


class OutOfMemoryError(RuntimeError):
    """Named like torch.OutOfMemoryError, which the engine recognises by name."""


class FakeRunner(StubRunner):
    def __init__(self, log: list[str] | None = None) -> None:
        self.batches: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.hold = threading.Event()  # batches containing prompt "a" wait on it every step
        self.hold.set()
        self.log = log if log is not None else []

    def preview(self, latents: Any, mode: str) -> list[Image.Image]:
        return [Image.new("RGB", (8, 8))] * len(latents)

    def run(self, items: Any, on_step: Any) -> list[list[Image.Image]]:
        prompts = [it.request.params.prompt for it in items]
        self.batches.append(prompts)
        self.log.append("gen:" + ",".join(prompts))
        if "oom" in prompts:
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        steps = items[0].request.params.steps
        n = sum(len(it.seeds) for it in items)
        for step in range(1, steps + 1):
            self.gate.wait(10)
            if "a" in prompts:
                self.hold.wait(10)
            if on_step(step, steps, [0] * n):
                raise Interrupted()
        return [[Image.new("RGB", (8, 8), (i, 0, 0)) for i in range(len(it.seeds))] for it in items]


def req(prompt: str, steps: int = 2, priority: int = 0, num_images: int = 1) -> GenerateRequest:
    return GenerateRequest("txt2img", GenerationParams(prompt=prompt, width=64, height=64, steps=steps, seed=1,
                                                       priority=priority, num_images=num_images))


@pytest.fixture()
def engine() -> Any:
    runner = FakeRunner()
    eng = Engine(runner, EngineConfig(max_queue=4, max_batch_images=4), JobRegistry())
    eng.start()
    yield eng
    runner.gate.set()
    eng.stop()


def drain(eng: Engine, job: GenJob) -> list[Any]:
    out: list[Any] = []
    try:
        for ev in eng.events(job):
            out.append(ev)
    except UnfragileError as exc:
        out.append(exc)
    return out


def wait_running(job: GenJob) -> None:
    for snap in job.watch(poll_s=0.05):
        if snap.state == RUNNING:
            return


def test_compatible_queued_requests_share_one_batch(engine: Engine) -> None:
    engine.runner.gate.clear()
    blocker = engine.submit(req("blocker"), CancelToken())
    wait_running(blocker)
    jobs = [engine.submit(req(p), CancelToken()) for p in ("x", "y", "z")]
    other = engine.submit(req("w", steps=3), CancelToken())  # different steps: not compatible
    engine.runner.gate.set()
    results = [drain(engine, j)[-1] for j in [blocker, *jobs, other]]
    assert engine.runner.batches == [["blocker"], ["x", "y", "z"], ["w"]]
    assert [r.batch_images for r in results] == [1, 3, 3, 3, 1]
    assert all(isinstance(r, ResultEvent) for r in results)


def test_batch_respects_max_images(engine: Engine) -> None:
    engine.runner.gate.clear()
    blocker = engine.submit(req("blocker"), CancelToken())
    wait_running(blocker)
    jobs = [engine.submit(req(p, num_images=2), CancelToken()) for p in ("a", "b", "c")]
    engine.runner.gate.set()
    for j in [blocker, *jobs]:
        drain(engine, j)
    assert engine.runner.batches == [["blocker"], ["a", "b"], ["c"]]


def test_priority_and_queue_positions(engine: Engine) -> None:
    engine.runner.gate.clear()
    blocker = engine.submit(req("blocker"), CancelToken())
    wait_running(blocker)
    low = engine.submit(req("low", steps=3), CancelToken())
    high = engine.submit(req("high", steps=4, priority=5), CancelToken())
    engine.runner.gate.set()
    low_events = drain(engine, low)
    drain(engine, high)
    drain(engine, blocker)
    assert engine.runner.batches == [["blocker"], ["high"], ["low"]]
    positions = [e.position for e in low_events if isinstance(e, StatusEvent) and e.state == QUEUED]
    assert positions == [1, 2, 1]  # queued first, pushed back by "high", then next


def test_queue_full_is_resource_exhausted_with_retry_hint(engine: Engine) -> None:
    engine.runner.gate.clear()
    blocker = engine.submit(req("blocker"), CancelToken())
    wait_running(blocker)
    waiting = [engine.submit(req(f"q{i}", steps=1 + i), CancelToken()) for i in range(4)]
    with pytest.raises(ResourceExhausted) as info:
        engine.submit(req("one too many"), CancelToken())
    assert "queue is full" in info.value.message and info.value.retry_after_s > 0
    assert dict(info.value.trailing_metadata())["retry-after-ms"]
    # cancelling a queued job frees its slot at once
    waiting[0].token.cancel("test")
    assert waiting[0].snapshot.state == CANCELLED
    engine.submit(req("fits now"), CancelToken())
    engine.runner.gate.set()


def test_out_of_memory_fails_only_that_request(engine: Engine) -> None:
    engine.runner.gate.clear()
    blocker = engine.submit(req("blocker"), CancelToken())
    wait_running(blocker)
    jobs = {p: engine.submit(req(p), CancelToken()) for p in ("ok1", "oom", "ok2")}
    engine.runner.gate.set()
    outcomes = {p: drain(engine, j)[-1] for p, j in jobs.items()}
    assert isinstance(outcomes["ok1"], ResultEvent) and isinstance(outcomes["ok2"], ResultEvent)
    assert isinstance(outcomes["oom"], ResourceExhausted) and "out of memory" in outcomes["oom"].message
    assert jobs["oom"].snapshot.state == FAILED and jobs["ok1"].snapshot.state == SUCCEEDED
    assert engine.runner.batches[1] == ["ok1", "oom", "ok2"]  # tried together, then alone
    assert isinstance(drain(engine, engine.submit(req("after"), CancelToken()))[-1], ResultEvent)


def test_cancel_one_job_of_a_batch_keeps_the_others(engine: Engine) -> None:
    engine.runner.gate.clear()
    engine.runner.hold.clear()
    blocker = engine.submit(req("blocker"), CancelToken())
    wait_running(blocker)
    a, b = engine.submit(req("a", steps=5), CancelToken()), engine.submit(req("b", steps=5), CancelToken())
    engine.runner.gate.set()
    drain(engine, blocker)
    wait_running(a)
    a.token.cancel("test")
    engine.runner.hold.set()
    assert isinstance(drain(engine, a)[-1], Cancelled)
    assert isinstance(drain(engine, b)[-1], ResultEvent)
    assert a.snapshot.state == CANCELLED and a.snapshot.step < 5


class FakeTrainer:
    def __init__(self, log: list[str], steps: int) -> None:
        self.log, self.left = log, steps

    def has_work(self) -> bool:
        return self.left > 0

    def step(self) -> None:
        self.left -= 1
        self.log.append("train")


def test_training_never_holds_the_queue_for_more_than_one_step() -> None:
    log: list[str] = []
    runner = FakeRunner(log)
    eng = Engine(runner, EngineConfig(max_queue=8, max_batch_images=1), JobRegistry())
    runner.gate.clear()
    eng.start()
    try:
        first = eng.submit(req("g0"), CancelToken())
        wait_running(first)
        jobs = [first] + [eng.submit(req(f"g{i}"), CancelToken()) for i in range(1, 4)]
        eng.attach_trainer(FakeTrainer(log, steps=50))
        runner.gate.set()
        for j in jobs:
            drain(eng, j)
        gens = [i for i, e in enumerate(log) if e.startswith("gen")]
        for a, b in zip(gens, gens[1:]):
            assert b - a <= 2, log  # at most one training step between queued generation batches
        import time

        deadline = time.monotonic() + 10
        while eng._trainer.has_work() and time.monotonic() < deadline:  # training continues when idle
            time.sleep(0.01)
        assert log.count("train") == 50
    finally:
        eng.stop()
