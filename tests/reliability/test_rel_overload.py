"""Overload: 10x the queue capacity of concurrent requests against each model service.

Guarantee (TGI/vLLM-style bounded queue): excess requests are refused with
RESOURCE_EXHAUSTED and a ``retry-after-ms`` hint *before* the accepted work finishes;
every accepted request completes with exactly the result it would have had alone; the
process memory stays bounded; the service is healthy and serving afterwards.

The figures printed with the ``RELIABILITY`` prefix are the ones recorded in
docs/RELIABILITY.md (run with ``-s`` to see them).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc

from services.core.client import health_status
from tests.reliability.relhelpers import SERVICE_NAMES, metric, png, retry_after_ms, rss_bytes, wait_until

QUEUE = 4
CLIENTS = 10 * QUEUE
RSS_GROWTH_LIMIT = 300 * 1024 * 1024  # generous: the point is "bounded", not "small"


def _storm(call: Callable[[], Any]) -> list[dict[str, Any]]:
    """CLIENTS threads released together; each records its outcome and timings."""
    barrier = threading.Barrier(CLIENTS)
    out: list[dict[str, Any]] = [{} for _ in range(CLIENTS)]

    def one(i: int) -> None:
        barrier.wait()
        t0 = time.monotonic()
        try:
            out[i].update(code=grpc.StatusCode.OK, result=call())
        except grpc.RpcError as err:
            out[i].update(code=err.code(), details=err.details(), retry=retry_after_ms(err))
        out[i].update(start=t0, end=time.monotonic())

    threads = [threading.Thread(target=one, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return out


def _check_storm(name: str, out: list[dict[str, Any]], expected: Any, rejected_metric_delta: float) -> None:
    ok = [o for o in out if o["code"] == grpc.StatusCode.OK]
    rejected = [o for o in out if o["code"] == grpc.StatusCode.RESOURCE_EXHAUSTED]
    other = [(o["code"], o.get("details")) for o in out if o not in ok and o not in rejected]
    assert not other, f"only OK or RESOURCE_EXHAUSTED expected under overload, got {other}"
    assert len(ok) >= QUEUE, "at least a full queue of requests must be accepted"
    assert rejected, f"{CLIENTS} concurrent requests against a queue of {QUEUE} must refuse some"
    for o in ok:  # accepted work is correct: identical to the same request run alone
        assert o["result"] == expected
    for o in rejected:
        assert "queue is full" in o["details"] and "retry" in o["details"]
        assert o["retry"] is not None and o["retry"] > 0
    # Fast rejection: every refusal came back before the accepted work was done.
    last_ok = max(o["end"] for o in ok)
    assert all(o["end"] < last_ok for o in rejected)
    lat_rej = [o["end"] - o["start"] for o in rejected]
    lat_ok = [o["end"] - o["start"] for o in ok]
    assert statistics.median(lat_rej) < statistics.median(lat_ok)
    assert rejected_metric_delta == len(rejected)
    print(f"RELIABILITY overload {name}: clients={CLIENTS} queue={QUEUE} accepted={len(ok)} "
          f"rejected={len(rejected)} rejected_p50_ms={statistics.median(lat_rej) * 1000:.1f} "
          f"rejected_max_ms={max(lat_rej) * 1000:.1f} accepted_p50_ms={statistics.median(lat_ok) * 1000:.1f} "
          f"accepted_max_ms={max(lat_ok) * 1000:.1f} retry_after_ms={sorted({o['retry'] for o in rejected})[:3]}")


def _rss_check(name: str, before: int) -> None:
    after = rss_bytes()
    growth = after - before
    print(f"RELIABILITY overload {name}: rss_before_mb={before / 2**20:.0f} rss_after_mb={after / 2**20:.0f} "
          f"growth_mb={growth / 2**20:.1f}")
    assert growth < RSS_GROWTH_LIMIT


def test_visionlanguage_overload_rejects_fast_and_stays_correct(servers, models_dir) -> None:
    from unfragile.common.v1 import common_pb2
    from unfragile.visionlanguage.v1 import visionlanguage_pb2 as pb
    from unfragile.visionlanguage.v1 import visionlanguage_pb2_grpc as pb_grpc

    srv = servers.vl(models_dir, max_batch_size=1, max_queue_size=QUEUE, max_workers=CLIENTS + 8)
    stub = pb_grpc.VisionLanguageStub(servers.channel(srv))
    req = pb.CaptionRequest(image=common_pb2.Image(data=png()),
                            sampling=pb.SamplingParams(max_new_tokens=64, seed=11))
    alone = stub.Caption(req, timeout=60)
    expected = (alone.text, tuple(alone.token_ids))
    before, rejected0 = rss_bytes(), metric("unfragile_vl_requests_rejected_total")

    def call() -> Any:
        r = stub.Caption(req, timeout=120)
        return (r.text, tuple(r.token_ids))

    out = _storm(call)
    _check_storm("visionlanguage", out, expected, metric("unfragile_vl_requests_rejected_total") - rejected0)
    _rss_check("visionlanguage", before)
    assert health_status(srv.address, SERVICE_NAMES["visionlanguage"]) == "SERVING"
    again = stub.Caption(req, timeout=60)
    assert (again.text, tuple(again.token_ids)) == expected
    assert wait_until(lambda: metric("unfragile_vl_num_requests_running") == 0
                      and metric("unfragile_vl_num_requests_waiting") == 0, timeout=10)


def test_diffusion_overload_rejects_fast_and_stays_correct(servers, models_dir, tmp_path) -> None:
    from unfragile.diffusion.v1 import diffusion_pb2 as pb
    from unfragile.diffusion.v1 import diffusion_pb2_grpc as pb_grpc

    srv = servers.diffusion(models_dir, tmp_path / "adapters", max_queue=QUEUE, max_batch_images=1,
                            max_workers=CLIENTS + 8)
    stub = pb_grpc.DiffusionStub(servers.channel(srv))
    req = pb.TextToImageRequest(params=pb.GenerationParams(prompt="a lighthouse", width=64, height=64, steps=4,
                                                           seed=5))

    def call() -> Any:
        events = list(stub.TextToImage(req, timeout=120))
        kinds = [e.WhichOneof("event") for e in events]
        assert kinds[-1] == "result" and kinds.count("progress") == 4
        return events[-1].result.images[0].image.data

    expected = call()
    before = rss_bytes()
    rejected0 = metric("unfragile_grpc_requests_total", {"service": "diffusion", "method": "TextToImage",
                                                         "code": "RESOURCE_EXHAUSTED"})
    out = _storm(call)
    rejected1 = metric("unfragile_grpc_requests_total", {"service": "diffusion", "method": "TextToImage",
                                                         "code": "RESOURCE_EXHAUSTED"})
    _check_storm("diffusion", out, expected, rejected1 - rejected0)
    _rss_check("diffusion", before)
    assert health_status(srv.address, SERVICE_NAMES["diffusion"]) == "SERVING"
    assert call() == expected
    assert metric("unfragile_diffusion_num_requests_waiting") == 0
    assert metric("unfragile_diffusion_num_requests_running") == 0
