"""Streaming, continuous batching, backpressure and cancellation over real gRPC."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from prometheus_client import REGISTRY

from services.core.client import channel as make_channel
from tests.vl.vlhelpers import caption_request, png, rpc_code, start
from unfragile.visionlanguage.v1 import visionlanguage_pb2 as pb
from unfragile.visionlanguage.v1 import visionlanguage_pb2_grpc as pb_grpc


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def sampled(max_new: int, seed: int, **kw: object) -> pb.SamplingParams:
    return pb.SamplingParams(max_new_tokens=max_new, temperature=1.0, seed=seed, **kw)  # type: ignore[arg-type]


def test_stream_concatenation_equals_unary(stub) -> None:
    req = caption_request(png(noise=50), sampling=sampled(24, 11))
    unary = stub.Caption(req, timeout=30)
    chunks = list(stub.StreamCaption(req, timeout=30))
    final = chunks[-1].final
    assert all(not c.HasField("final") for c in chunks[:-1])
    assert "".join(c.delta for c in chunks) == unary.completion == final.completion
    assert [t for c in chunks for t in c.token_ids] == list(unary.token_ids) == list(final.token_ids)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert final.text == unary.text and final.raw_text == unary.raw_text
    assert final.finish_reason == unary.finish_reason
    assert final.timings.first_token_ms > 0 and final.timings.total_ms >= final.timings.first_token_ms
    assert len([c for c in chunks if c.token_ids]) >= 2  # really streamed, token by token


def test_stop_sequence_cuts_text_in_stream_and_unary(stub) -> None:
    base = caption_request(png(noise=50), sampling=sampled(24, 11))
    full = stub.Caption(base, timeout=30)
    # pick a stop string from the middle of the generated raw text
    gen_raw = full.raw_text[len("<grounding> An image of"):]
    stop = gen_raw[len(gen_raw) // 2: len(gen_raw) // 2 + 3]
    req = caption_request(png(noise=50), sampling=sampled(24, 11, stop=[stop]))
    cut = stub.Caption(req, timeout=30)
    assert cut.finish_reason == pb.FINISH_REASON_STOP_SEQUENCE
    assert stop not in cut.raw_text[len("<grounding> An image of"):]
    assert full.raw_text.startswith(cut.raw_text)
    streamed = "".join(c.delta for c in stub.StreamCaption(req, timeout=30))
    assert streamed == cut.completion


def test_concurrent_batched_requests_equal_unbatched(stub, server) -> None:
    reqs = [
        caption_request(png(noise=10 * (i + 1), color=(20 * i, 90, 200 - 20 * i)), mode=mode, prompt=prompt,
                        sampling=[sampled(8 + 3 * i, 100 + i), sampled(8 + 3 * i, 100 + i, top_k=20),
                                  sampled(8 + 3 * i, 100 + i, top_p=0.9), pb.SamplingParams(max_new_tokens=8)][i % 4])
        for i, (mode, prompt) in enumerate([
            (pb.CAPTION_MODE_BRIEF, ""), (pb.CAPTION_MODE_DETAILED, ""),
            (pb.CAPTION_MODE_QUESTION, "what is the man holding in his hand"), (pb.CAPTION_MODE_BRIEF, ""),
            (pb.CAPTION_MODE_PROMPT, "<grounding><phrase> a dog</phrase>"), (pb.CAPTION_MODE_DETAILED, ""),
        ])
    ]
    alone = [stub.Caption(r, timeout=30) for r in reqs]
    multi_before = metric("unfragile_vl_batch_size_count") - metric("unfragile_vl_batch_size_bucket", le="1.0")
    barrier = threading.Barrier(len(reqs))

    def call(r: pb.CaptionRequest) -> pb.CaptionResponse:
        barrier.wait()
        return stub.Caption(r, timeout=60)

    with ThreadPoolExecutor(len(reqs)) as pool:
        together = list(pool.map(call, reqs))
    multi_after = metric("unfragile_vl_batch_size_count") - metric("unfragile_vl_batch_size_bucket", le="1.0")
    assert multi_after > multi_before, "no decode step ran with more than one sequence"
    for a, b in zip(alone, together):
        assert list(a.token_ids) == list(b.token_ids)
        assert a.raw_text == b.raw_text


def test_image_feature_cache_hits(stub) -> None:
    data = png((80, 80), noise=77)
    hits = metric("unfragile_vl_image_feature_cache_total", result="hit")
    misses = metric("unfragile_vl_image_feature_cache_total", result="miss")
    prefix_hits = metric("unfragile_vl_prefix_cache_total", result="hit")
    s = pb.SamplingParams(max_new_tokens=3)
    a = stub.Caption(caption_request(data, sampling=s), timeout=30)
    b = stub.Caption(caption_request(data, sampling=s), timeout=30)
    assert a.token_ids == b.token_ids
    assert metric("unfragile_vl_image_feature_cache_total", result="miss") == misses + 1
    assert metric("unfragile_vl_image_feature_cache_total", result="hit") == hits + 1
    assert metric("unfragile_vl_prefix_cache_total", result="hit") == prefix_hits + 1


@pytest.fixture()
def one_slot(tiny_model):
    srv = start(tiny_model, max_batch_size=1, max_queue_size=2, max_queue_delay_ms=0, max_new_tokens_limit=400)
    ch = make_channel(srv.address)
    yield srv, pb_grpc.VisionLanguageStub(ch)
    ch.close()
    srv.stop(0)


def _wait(cond, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return False


def test_cancel_frees_the_batch_slot(one_slot) -> None:
    srv, stub = one_slot
    engine = srv.service.servicer.engine
    long = caption_request(sampling=pb.SamplingParams(max_new_tokens=400))
    cancelled_before = metric("unfragile_vl_request_success_total", finish_reason="cancelled")
    call = stub.StreamCaption(long, timeout=60)
    got = 0
    for chunk in call:
        got += len(chunk.token_ids)
        if got >= 2:
            break
    assert engine.stats()["running"] == 1
    call.cancel()
    assert _wait(lambda: engine.stats()["running"] == 0), "cancelled stream still holds its slot"
    assert metric("unfragile_vl_request_success_total", finish_reason="cancelled") == cancelled_before + 1
    # the single slot serves the next request
    short = stub.Caption(caption_request(sampling=pb.SamplingParams(max_new_tokens=3)), timeout=30)
    assert len(short.token_ids) == 3


def test_deadline_stops_generation(one_slot) -> None:
    srv, stub = one_slot
    engine = srv.service.servicer.engine
    code, _ = rpc_code(stub.Caption, caption_request(sampling=pb.SamplingParams(max_new_tokens=400)), timeout=0.05)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert _wait(lambda: engine.stats()["running"] == 0 and engine.stats()["waiting"] == 0)


def test_queue_position_then_backpressure_with_retry_hint(one_slot) -> None:
    srv, stub = one_slot
    engine = srv.service.servicer.engine
    first = stub.StreamCaption(caption_request(sampling=pb.SamplingParams(max_new_tokens=400)), timeout=60)
    next(first)  # running, holds the only slot
    second = stub.StreamCaption(caption_request(sampling=pb.SamplingParams(max_new_tokens=2)), timeout=60)
    chunk = next(second)
    assert chunk.queue_position == 1
    third = stub.StreamCaption(caption_request(sampling=pb.SamplingParams(max_new_tokens=2)), timeout=60)
    assert next(third).queue_position == 2
    assert _wait(lambda: engine.stats()["waiting"] == 2)
    with pytest.raises(grpc.RpcError) as err:
        stub.Caption(caption_request(sampling=pb.SamplingParams(max_new_tokens=2)), timeout=10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "queue is full" in err.value.details()
    hint = dict(err.value.trailing_metadata())["retry-after-ms"]
    assert int(hint) > 0
    first.cancel()
    rest = list(second)
    assert rest[-1].final.usage.completion_tokens == 2
    assert [c.queue_position for c in rest if c.queue_position] == [] or rest[0].queue_position in (0, 1)
    assert list(third)[-1].HasField("final")


def test_cancel_while_queued_leaves_the_queue(one_slot) -> None:
    srv, stub = one_slot
    engine = srv.service.servicer.engine
    first = stub.StreamCaption(caption_request(sampling=pb.SamplingParams(max_new_tokens=400)), timeout=60)
    next(first)
    waiting = stub.StreamCaption(caption_request(sampling=pb.SamplingParams(max_new_tokens=2)), timeout=60)
    assert next(waiting).queue_position == 1
    waiting.cancel()
    assert _wait(lambda: engine.stats()["waiting"] == 0), "cancelled request still queued"
    assert engine.stats()["running"] == 1
    first.cancel()
    assert _wait(lambda: engine.stats()["running"] == 0)
