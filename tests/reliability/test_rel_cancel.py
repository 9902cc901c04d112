"""Cancellation and deadlines free the slot within one step.

Guarantee: when a client cancels a stream, its deadline passes, or CancelJob is called,
the server stops the work at the next decode / denoise / training step and the
running-requests gauge drops; the slot is then used by the next request.

How "within one step" is measured honestly: the model's step function is wrapped (the
runner is a replaceable component) to log when each step *starts* and with how many
sequences; a step is slowed to ``STEP_S`` so a step is long compared with the time a
cancellation takes to reach the server. We then count steps that started after the
cancel/deadline and still carried the cancelled work: at most one (the step already
being prepared when the cancel arrived) plus one for the cancel's own travel time.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import grpc
import pytest

from tests.reliability.relhelpers import metric, noisy_png, png, wait_until

STEP_S = 0.03
MAX_STEPS_AFTER_CANCEL = 2


class StepLog:
    """Wraps a step function: sleeps STEP_S, logs (start time, batch size)."""

    def __init__(self) -> None:
        self.steps: list[tuple[float, int]] = []
        self.lock = threading.Lock()

    def after(self, t: float, min_batch: int = 1) -> int:
        with self.lock:
            return sum(1 for start, n in self.steps if start >= t and n >= min_batch)

    def record(self, n: int) -> None:
        with self.lock:
            self.steps.append((time.monotonic(), n))
        time.sleep(STEP_S)


# ----------------------------------------------------------------------------- VisionLanguage
@pytest.fixture(scope="module")
def vl(servers, models_dir) -> dict[str, Any]:
    from unfragile.visionlanguage.v1 import visionlanguage_pb2_grpc as pb_grpc

    srv = servers.vl(models_dir, max_batch_size=1, max_queue_size=8)
    engine = srv.service.servicer.engine
    log = StepLog()
    real_decode = engine.runner.decode

    def decode(batch: Any, tokens: list[int], with_attention: bool = False) -> Any:
        log.record(len(tokens))
        return real_decode(batch, tokens, with_attention=with_attention)

    engine.runner.decode = decode  # instance attribute: only this server's runner is slowed
    return {"srv": srv, "stub": pb_grpc.VisionLanguageStub(servers.channel(srv)), "log": log}


def _caption(max_new: int, seed: int = 1) -> Any:
    from unfragile.common.v1 import common_pb2
    from unfragile.visionlanguage.v1 import visionlanguage_pb2 as pb

    return pb.CaptionRequest(image=common_pb2.Image(data=png()), mode=pb.CAPTION_MODE_PROMPT, prompt="a photo of",
                             grounding=False, sampling=pb.SamplingParams(max_new_tokens=max_new, seed=seed,
                                                                         stop=["\u2603"]))


def _vl_idle() -> bool:
    return metric("unfragile_vl_num_requests_running") == 0 and metric("unfragile_vl_num_requests_waiting") == 0


def test_vl_cancelled_stream_frees_its_slot_for_the_waiting_request(vl) -> None:
    stub, log = vl["stub"], vl["log"]
    cancelled0 = metric("unfragile_vl_request_success_total", {"finish_reason": "cancelled"})
    a = stub.StreamCaption(_caption(250), timeout=60)
    got = 0
    for chunk in a:
        got += len(chunk.token_ids)
        if got >= 3:
            break
    assert metric("unfragile_vl_num_requests_running") == 1
    # B waits behind A (batch size 1): it must get A's slot once A is cancelled.
    b_chunks: list[Any] = []
    b_queued = threading.Event()

    def run_b() -> None:
        for c in stub.StreamCaption(_caption(4, seed=2), timeout=60):
            b_chunks.append(c)
            if c.queue_position >= 1:
                b_queued.set()

    b = threading.Thread(target=run_b)
    b.start()
    assert b_queued.wait(10), "B is told its queue position while A holds the only slot"
    t_cancel = time.monotonic()
    a.cancel()
    b.join(30)
    assert b_chunks and b_chunks[-1].HasField("final")
    assert wait_until(_vl_idle, 10)
    # A's sequence was in at most MAX_STEPS_AFTER_CANCEL steps that started after the cancel:
    # B's 4-token run accounts for up to 4 more, so count from the log of A's run only.
    a_steps_after = log.after(t_cancel) - (len(b_chunks[-1].final.token_ids) - 1)
    assert a_steps_after <= MAX_STEPS_AFTER_CANCEL, log.steps[-12:]
    assert metric("unfragile_vl_request_success_total", {"finish_reason": "cancelled"}) == cancelled0 + 1
    print(f"RELIABILITY cancel vl-stream: steps_after_cancel={max(a_steps_after, 0)} tokens_before_cancel={got}")


@pytest.mark.parametrize("streaming", [False, True])
def test_vl_expired_deadline_stops_generation_and_frees_the_slot(vl, streaming) -> None:
    stub, log = vl["stub"], vl["log"]
    timeout = 0.5
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        if streaming:
            list(stub.StreamCaption(_caption(250, seed=3), timeout=timeout))
        else:
            stub.Caption(_caption(250, seed=3), timeout=timeout)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert wait_until(_vl_idle, 10)
    after = log.after(t0 + timeout)
    assert after <= MAX_STEPS_AFTER_CANCEL, log.steps[-12:]
    # and the slot is really free: a short request runs at once
    assert stub.Caption(_caption(3, seed=4), timeout=30).token_ids
    print(f"RELIABILITY cancel vl-deadline streaming={streaming}: steps_after_deadline={after}")


# ----------------------------------------------------------------------------- Diffusion
@pytest.fixture(scope="module")
def diffusion(servers, models_dir, tmp_path_factory) -> dict[str, Any]:
    from unfragile.diffusion.v1 import diffusion_pb2_grpc as pb_grpc

    srv = servers.diffusion(models_dir, tmp_path_factory.mktemp("adapters"), max_batch_images=1)
    backend_engine = srv.service.servicer.engine
    log = StepLog()
    real_run = backend_engine.runner.run

    def run(items: Any, on_step: Any) -> Any:
        def step(i: int, total: int, latents: Any) -> bool:
            log.record(len(items))
            return on_step(i, total, latents)

        return real_run(items, step)

    backend_engine.runner.run = run
    finetuner = srv.service.servicer.finetuner
    real_train = finetuner.step

    def train_step() -> None:
        if finetuner._current is not None:  # a training step (not the job's start-up)
            log.record(-1)
        real_train()

    finetuner.step = train_step
    return {"srv": srv, "stub": pb_grpc.DiffusionStub(servers.channel(srv)), "log": log}


def _t2i(steps: int, seed: int = 1) -> Any:
    from unfragile.diffusion.v1 import diffusion_pb2 as pb

    return pb.TextToImageRequest(params=pb.GenerationParams(prompt="a cat", width=64, height=64, steps=steps,
                                                            seed=seed))


def _diffusion_idle() -> bool:
    return metric("unfragile_diffusion_num_requests_running") == 0 and \
        metric("unfragile_diffusion_num_requests_waiting") == 0


def _progress_until(call: Any, n: int) -> str:
    job_id = ""
    for ev in call:
        job_id = ev.job_id
        if ev.WhichOneof("event") == "progress" and ev.progress.step >= n:
            return job_id
    raise AssertionError("stream ended before the wanted step")


def test_diffusion_client_cancel_stops_denoising_within_a_step(diffusion) -> None:
    stub, log = diffusion["stub"], diffusion["log"]
    call = stub.TextToImage(_t2i(150), timeout=120)
    _progress_until(call, 3)
    assert metric("unfragile_diffusion_num_requests_running") == 1
    t_cancel = time.monotonic()
    call.cancel()
    assert wait_until(_diffusion_idle, 10)
    after = log.after(t_cancel)
    assert after <= MAX_STEPS_AFTER_CANCEL, log.steps[-10:]
    print(f"RELIABILITY cancel diffusion-stream: steps_after_cancel={after}")


def test_diffusion_cancel_job_by_id_from_another_client(diffusion) -> None:
    from unfragile.common.v1 import common_pb2 as cpb
    from unfragile.diffusion.v1 import diffusion_pb2 as pb

    stub, log = diffusion["stub"], diffusion["log"]
    call = stub.TextToImage(_t2i(150, seed=2), timeout=120)
    job_id = _progress_until(call, 2)
    t_cancel = time.monotonic()
    resp = stub.CancelJob(pb.CancelJobRequest(job_id=job_id), timeout=30)
    assert resp.status.state == cpb.JOB_STATE_CANCELLED
    with pytest.raises(grpc.RpcError) as err:
        list(call)
    assert err.value.code() == grpc.StatusCode.CANCELLED
    assert "CancelJob" in err.value.details()
    assert wait_until(_diffusion_idle, 10)
    assert log.after(t_cancel) <= MAX_STEPS_AFTER_CANCEL


def test_diffusion_deadline_frees_the_slot(diffusion) -> None:
    stub, log = diffusion["stub"], diffusion["log"]
    timeout = 1.0
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        list(stub.TextToImage(_t2i(150, seed=3), timeout=timeout))
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert wait_until(_diffusion_idle, 10)
    after = log.after(t0 + timeout)
    assert after <= MAX_STEPS_AFTER_CANCEL, log.steps[-10:]
    events = list(stub.TextToImage(_t2i(2, seed=4), timeout=60))  # the slot serves the next request
    assert events[-1].WhichOneof("event") == "result"
    print(f"RELIABILITY cancel diffusion-deadline: steps_after_deadline={after}")


def test_finetune_job_cancel_stops_training_within_a_step(diffusion) -> None:
    from unfragile.common.v1 import common_pb2 as cpb
    from unfragile.diffusion.v1 import diffusion_pb2 as pb

    stub, log = diffusion["stub"], diffusion["log"]
    examples = [pb.TrainingExample(image=cpb.Image(data=noisy_png((64, 64))), caption="noise")]
    start = stub.StartFineTune(pb.StartFineTuneRequest(adapter_name="to-cancel", examples=examples, steps=3000,
                                                       seed=1), timeout=30)
    # The gauge is process-wide and other test servers in this process set it too: read the
    # baseline once this server has published its own counts (StartFineTune does).
    cancelled0 = metric("unfragile_diffusion_finetune_jobs", {"state": "cancelled"})
    watch = stub.WatchJob(pb.WatchJobRequest(job_id=start.job_id), timeout=120)
    for ev in watch:
        if ev.step >= 3:
            break
    assert metric("unfragile_diffusion_finetune_jobs", {"state": "running"}) == 1
    t_cancel = time.monotonic()
    resp = stub.CancelJob(pb.CancelJobRequest(job_id=start.job_id), timeout=30)
    assert resp.status.state == cpb.JOB_STATE_CANCELLED
    after = sum(1 for t, n in log.steps if t >= t_cancel and n == -1)
    assert after <= MAX_STEPS_AFTER_CANCEL
    final = list(stub.WatchJob(pb.WatchJobRequest(job_id=start.job_id), timeout=10))
    assert final[-1].status.state == cpb.JOB_STATE_CANCELLED and final[-1].step < 3000
    assert metric("unfragile_diffusion_finetune_jobs", {"state": "running"}) == 0
    assert metric("unfragile_diffusion_finetune_jobs", {"state": "cancelled"}) == cancelled0 + 1
    names = [a.name for a in stub.ListAdapters(pb.ListAdaptersRequest(), timeout=10).adapters]
    assert "to-cancel" not in names  # a cancelled job leaves no adapter behind
    print(f"RELIABILITY cancel finetune: training_steps_after_cancel={after} steps_done={final[-1].step}")
