"""M4 over gRPC on the real tiny pipeline: cross-request batching equals unbatched runs."""

from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest

from services.core.client import channel
from tests.diffusion.conftest import decode, make_settings, params, result_of, start
from unfragile.common.v1 import common_pb2 as cpb
from unfragile.diffusion.v1 import diffusion_pb2 as pb
from unfragile.diffusion.v1 import diffusion_pb2_grpc as pb_grpc


def _pixels(img: pb.GeneratedImage) -> np.ndarray:
    return np.asarray(decode(img.image.data).convert("RGB"), dtype=np.int16)


def _start_blocker(stub) -> tuple[object, str]:
    stream = stub.TextToImage(pb.TextToImageRequest(params=params(steps=150, seed=99, width=256, height=256)),
                              timeout=120)
    for ev in stream:
        if ev.WhichOneof("event") == "progress":
            return stream, ev.job_id
    raise AssertionError("blocker never started")


def _concurrent(stub, requests: list[pb.TextToImageRequest]) -> list[list[pb.GenerateEvent]]:
    """Queue ``requests`` behind a running blocker, then release them all at once."""
    blocker, blocker_id = _start_blocker(stub)
    out: list[list[pb.GenerateEvent]] = [[] for _ in requests]
    queued = threading.Barrier(len(requests) + 1)

    def call(i: int) -> None:
        first = True
        for ev in stub.TextToImage(requests[i], timeout=120):
            out[i].append(ev)
            if first:
                first = False
                queued.wait(30)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    queued.wait(30)  # every request is in the queue
    stub.CancelJob(pb.CancelJobRequest(job_id=blocker_id), timeout=30)
    with pytest.raises(grpc.RpcError):
        list(blocker)
    for t in threads:
        t.join(120)
    return out


def test_concurrent_compatible_requests_batch_and_match_unbatched(stub) -> None:
    prompts = ["a red cat", "a blue dog", "snow on the sea"]
    reqs = [pb.TextToImageRequest(params=params(prompt=p, steps=3, seed=10 + i, scheduler="euler-a"))
            for i, p in enumerate(prompts)]
    batched = [result_of(evs) for evs in _concurrent(stub, reqs)]
    assert [r.batch_images for r in batched] == [3, 3, 3]
    for req, res in zip(reqs, batched):
        alone = result_of(list(stub.TextToImage(req, timeout=60)))
        assert alone.batch_images == 1
        diff = np.abs(_pixels(alone.images[0]) - _pixels(res.images[0]))
        assert diff.max() <= 2 and diff.mean() < 0.05  # float tolerance of a different batch size
        assert alone.images[0].seed == res.images[0].seed


def test_incompatible_requests_do_not_batch(stub) -> None:
    reqs = [pb.TextToImageRequest(params=params(steps=2)), pb.TextToImageRequest(params=params(steps=3)),
            pb.TextToImageRequest(params=params(steps=2, width=32))]
    assert [result_of(evs).batch_images for evs in _concurrent(stub, reqs)] == [1, 1, 1]


@pytest.fixture(scope="module")
def small_queue_server(tiny_sd, tmp_path_factory):
    running = start(make_settings(tiny_sd, tmp_path_factory.mktemp("adapters-q"), max_queue=1, batching=False))
    yield running
    running.stop(0)


def test_queue_full_over_grpc(small_queue_server) -> None:
    with channel(small_queue_server.address) as ch:
        stub = pb_grpc.DiffusionStub(ch)
        blocker, blocker_id = _start_blocker(stub)
        waiting = stub.TextToImage(pb.TextToImageRequest(params=params(steps=1)), timeout=120)
        first = next(waiting)
        assert first.status.state == cpb.JOB_STATE_QUEUED and first.status.queue_position == 1
        with pytest.raises(grpc.RpcError) as info:
            list(stub.TextToImage(pb.TextToImageRequest(params=params(steps=1)), timeout=30))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queue is full" in info.value.details()
        assert int(dict(info.value.trailing_metadata())["retry-after-ms"]) > 0
        stub.CancelJob(pb.CancelJobRequest(job_id=blocker_id), timeout=30)
        assert result_of(list(waiting)).images
        assert result_of(list(stub.TextToImage(pb.TextToImageRequest(params=params(steps=1)), timeout=60))).images


@pytest.fixture(scope="module")
def delayed_batch_server(tiny_sd, tmp_path_factory):
    running = start(make_settings(tiny_sd, tmp_path_factory.mktemp("adapters-d"), max_queue_delay_ms=3000))
    yield running
    running.stop(0)


def test_queue_delay_lets_a_later_request_join_the_batch(delayed_batch_server) -> None:
    """With an idle server, the first request waits (up to max_queue_delay_ms) for a
    compatible second one, and both run in one UNet batch; without the delay the first
    would run alone at once."""
    with channel(delayed_batch_server.address) as ch:
        stub = pb_grpc.DiffusionStub(ch)
        out: list[pb.GeneratedImages] = []
        first = threading.Thread(target=lambda: out.append(result_of(list(stub.TextToImage(
            pb.TextToImageRequest(params=params(steps=2, seed=1)), timeout=60)))))
        first.start()
        threading.Event().wait(0.3)  # well inside the 3 s window, far from its end
        second = result_of(list(stub.TextToImage(pb.TextToImageRequest(params=params(steps=2, seed=2)), timeout=60)))
        first.join(60)
        assert second.batch_images == 2 and out[0].batch_images == 2
