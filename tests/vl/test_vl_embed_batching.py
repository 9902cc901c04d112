"""Concurrent Embed and Similarity requests share one model batch and get the vectors they get alone.

The runner is the real one; it only records the size of each embedding call and can
hold the scheduler inside one (a gate), so that the requests sent meanwhile are all
waiting in the queue when it opens: then they must leave it as one batch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch

from services.core.client import channel as make_channel
from services.core.server import RunningServer, start_server
from services.visionlanguage.app import Settings, build_service
from services.visionlanguage.batch import ImageFeatures
from services.visionlanguage.runner import Kosmos2Runner
from tests.vl.vlhelpers import image_pb, png, rpc_code
from unfragile.visionlanguage.v1 import visionlanguage_pb2 as pb
from unfragile.visionlanguage.v1 import visionlanguage_pb2_grpc as pb_grpc


class GatedRunner(Kosmos2Runner):
    """The real runner; records the rows of each embedding call, then waits at ``gate`` while it is closed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.gate.set()
        self.inside = threading.Event()
        self.image_calls: list[int] = []
        self.text_calls: list[int] = []

    def _hold(self) -> None:
        self.inside.set()
        assert self.gate.wait(30), "the test never opened the gate"

    def embed_images(self, feats: list[ImageFeatures]) -> torch.Tensor:
        self.image_calls.append(len(feats))
        self._hold()
        return super().embed_images(feats)

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        self.text_calls.append(len(texts))
        self._hold()
        return super().embed_texts(texts)


@pytest.fixture(scope="module")
def gated(tiny_model: Path) -> Iterator[tuple[RunningServer, pb_grpc.VisionLanguageStub, GatedRunner]]:
    holder: dict[str, GatedRunner] = {}

    def factory() -> GatedRunner:
        holder["r"] = GatedRunner(tiny_model, torch.device("cpu"), torch.float32)
        return holder["r"]

    settings = Settings(port=0, metrics_port=-1, model=str(tiny_model), max_embed_batch_size=12,
                        feature_cache_size=0)
    srv = start_server(settings, build_service(settings, runner_factory=factory))
    ch = make_channel(srv.address)
    yield srv, pb_grpc.VisionLanguageStub(ch), holder["r"]
    ch.close()
    srv.stop(0)


def _wait(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


def _held_then_together(srv: RunningServer, stub: pb_grpc.VisionLanguageStub, runner: GatedRunner,
                        calls: list[Callable[[], Any]]) -> list[Any]:
    """Hold the scheduler inside a text Embed, send ``calls`` concurrently, wait until all are queued, release.

    Afterwards the runner's call lists hold only the calls made for ``calls``.
    """
    engine = srv.service.servicer.engine
    assert engine is not None
    runner.gate.clear()
    runner.inside.clear()
    with ThreadPoolExecutor(len(calls) + 1) as pool:
        blocker = pool.submit(lambda: stub.Embed(pb.EmbedRequest(texts=["hold the scheduler"]), timeout=30))
        assert runner.inside.wait(20)
        futures = [pool.submit(c) for c in calls]
        _wait(lambda: engine.stats()["waiting"] == len(calls))
        runner.image_calls.clear()
        runner.text_calls.clear()
        runner.gate.set()
        blocker.result(timeout=30)
        return [f.result(timeout=30) for f in futures]


def _vec(e: pb.Embedding) -> np.ndarray:
    return np.array(e.values, dtype=np.float32)


def _vectors(resp: pb.EmbedResponse) -> list[np.ndarray]:
    return [_vec(e) for e in resp.image_embeddings] + [_vec(e) for e in resp.text_embeddings]


def test_concurrent_embeds_share_one_batch_and_equal_their_alone_vectors(gated) -> None:
    srv, stub, runner = gated
    reqs = [pb.EmbedRequest(images=[image_pb(png(noise=10 + i, color=(40 * i, 90, 200)))], texts=[f"a dog {i}"])
            for i in range(3)]
    reqs += [pb.EmbedRequest(texts=["кошка 图片", "two red cars on a long street"]),
             pb.EmbedRequest(images=[image_pb(png((90, 60), noise=70)), image_pb(png(noise=11))])]
    alone = [_vectors(stub.Embed(r, timeout=30)) for r in reqs]
    together = _held_then_together(srv, stub, runner, [lambda r=r: stub.Embed(r, timeout=30) for r in reqs])
    # all five requests (10 items) fit the limit of 12: their images go in one call, their texts in another
    assert runner.image_calls == [5] and runner.text_calls == [5]
    for got, ref in zip(together, alone):
        vecs = _vectors(got)
        assert len(vecs) == len(ref)
        for a, b in zip(vecs, ref):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    # the same batch again gives bit-identical vectors (deterministic where the work is the same)
    again = _held_then_together(srv, stub, runner, [lambda r=r: stub.Embed(r, timeout=30) for r in reqs])
    for a, b in zip(again, together):
        assert all(np.array_equal(x, y) for x, y in zip(_vectors(a), _vectors(b)))


def test_the_batch_limit_splits_the_queue(gated) -> None:
    srv, stub, runner = gated
    reqs = [pb.EmbedRequest(texts=[f"text {i} {j}" for j in range(5)]) for i in range(3)]  # 5 items each, limit 12
    out = _held_then_together(srv, stub, runner, [lambda r=r: stub.Embed(r, timeout=30) for r in reqs])
    assert runner.text_calls == [10, 5]
    assert all(len(r.text_embeddings) == 5 for r in out)


def test_similarity_and_embed_combine_and_agree(gated) -> None:
    srv, stub, runner = gated
    img = [image_pb(png(noise=33)), image_pb(png((70, 50), color=(0, 150, 0), noise=5))]
    texts = ["a snowman", "a green field"]
    sim_alone = stub.Similarity(pb.SimilarityRequest(images=img, texts=texts), timeout=30)
    calls = [lambda: stub.Similarity(pb.SimilarityRequest(images=img, texts=texts), timeout=30),
             lambda: stub.Embed(pb.EmbedRequest(images=img, texts=texts), timeout=30)]
    sim, emb = _held_then_together(srv, stub, runner, calls)
    assert runner.image_calls == [4] and runner.text_calls == [4]
    np.testing.assert_allclose(sim.cosine, sim_alone.cosine, atol=1e-5, rtol=0)
    cos = [float(_vec(i) @ _vec(t)) for i in emb.image_embeddings for t in emb.text_embeddings]
    np.testing.assert_allclose(sim.cosine, cos, atol=1e-5, rtol=0)


def test_a_bad_request_fails_alone_and_the_rest_of_its_batch_succeeds(gated) -> None:
    srv, stub, runner = gated
    too_long = " ".join(["a"] * 1500)  # under the 4000-character limit, over the 512-token context
    good = pb.EmbedRequest(texts=["a red square"])
    ref = _vectors(stub.Embed(good, timeout=30))
    calls = [lambda: stub.Embed(good, timeout=30),
             lambda: rpc_code(stub.Embed, pb.EmbedRequest(texts=[too_long]), timeout=30),
             lambda: stub.Embed(good, timeout=30)]
    first, bad, last = _held_then_together(srv, stub, runner, calls)
    assert bad[0] == grpc.StatusCode.INVALID_ARGUMENT and "over the model context" in bad[1]
    for resp in (first, last):
        np.testing.assert_allclose(_vectors(resp)[0], ref[0], atol=1e-5, rtol=0)
