"""Grounded output through the whole served path, with the model's tokens scripted.

A random model never writes a meaningful <phrase>/<object> string, so these tests
replace only the next-token logits of the real runner with a known Kosmos-2 output
and check that the server returns exactly the reference entities and pixel boxes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from services.core.client import channel as make_channel
from services.core.server import start_server
from services.visionlanguage.app import Settings, build_service
from services.visionlanguage.batch import DecodeBatch, StepOutput
from services.visionlanguage.runner import Kosmos2Runner
from tests.vl.vlhelpers import ScriptedRunner, caption_request, png
from unfragile.visionlanguage.v1 import visionlanguage_pb2 as pb
from unfragile.visionlanguage.v1 import visionlanguage_pb2_grpc as pb_grpc

GEN = ("<phrase> a snowman</phrase><object><patch_index_0044><patch_index_0863></object> warming himself by"
       "<phrase> a fire</phrase><object><patch_index_0005><patch_index_0911></object>.")
PHRASE_GEN = "<object><patch_index_0044><patch_index_0863></object>"


@pytest.fixture(scope="module")
def scripted(tiny_model: Path) -> Iterator[tuple[pb_grpc.VisionLanguageStub, ScriptedRunner]]:
    holder: dict[str, ScriptedRunner] = {}

    def factory() -> ScriptedRunner:
        holder["r"] = ScriptedRunner(tiny_model, torch.device("cpu"), torch.float32)
        return holder["r"]

    settings = Settings(port=0, metrics_port=-1, model=str(tiny_model), max_batch_size=1)
    srv = start_server(settings, build_service(settings, runner_factory=factory))
    ch = make_channel(srv.address)
    yield pb_grpc.VisionLanguageStub(ch), holder["r"]
    ch.close()
    srv.stop(0)


def test_grounded_caption_entities_and_pixel_boxes(scripted) -> None:
    stub, runner = scripted
    runner.set_script(GEN)
    resp = stub.Caption(caption_request(png((300, 200)), sampling=pb.SamplingParams(max_new_tokens=40)), timeout=30)
    assert resp.finish_reason == pb.FINISH_REASON_EOS
    assert resp.text == "An image of a snowman warming himself by a fire ."
    assert resp.completion == "a snowman warming himself by a fire ."
    assert [(e.phrase, resp.text[e.start:e.end]) for e in resp.entities] == [("a snowman", "a snowman"),
                                                                           ("a fire", "a fire")]
    b = resp.entities[0].boxes[0]
    assert (b.x_min, b.y_min, b.x_max, b.y_max) == (0.390625, 0.046875, 0.984375, 0.828125)
    assert (b.x_min_px, b.y_min_px, b.x_max_px, b.y_max_px) == pytest.approx((117.1875, 9.375, 295.3125, 165.625))
    chunks = list(stub.StreamCaption(caption_request(png((300, 200)), sampling=pb.SamplingParams(max_new_tokens=40)),
                                     timeout=30))
    assert "".join(c.delta for c in chunks) == resp.completion
    assert list(chunks[-1].final.entities) == list(resp.entities)


def test_phrase_grounding_returns_a_box_per_phrase(scripted) -> None:
    stub, runner = scripted
    runner.set_script(PHRASE_GEN)
    resp = stub.Caption(caption_request(png((64, 64)), mode=pb.CAPTION_MODE_PHRASES, phrases=["a snowman", "a fire"],
                                        sampling=pb.SamplingParams(max_new_tokens=8)), timeout=30)
    assert resp.text == "a snowman\na fire"
    assert [(e.phrase, e.start, e.end) for e in resp.entities] == [("a snowman", 0, 9), ("a fire", 10, 16)]
    for e in resp.entities:
        b = e.boxes[0]
        assert (b.x_min, b.y_min, b.x_max, b.y_max) == (0.390625, 0.046875, 0.984375, 0.828125)
        assert b.x_max_px == pytest.approx(0.984375 * 64)


class FailingRunner(Kosmos2Runner):
    """The real runner, except that decoding fails while ``fail`` is set (a model crash)."""

    fail = False

    def decode(self, batch: DecodeBatch, tokens: list[int], with_attention: bool = False) -> StepOutput:
        if self.fail:
            raise RuntimeError("simulated kernel failure with a secret path /home/x")
        return super().decode(batch, tokens, with_attention)


def test_model_failure_is_internal_and_the_server_keeps_serving(tiny_model: Path) -> None:
    import grpc

    holder: dict[str, FailingRunner] = {}

    def factory() -> FailingRunner:
        holder["r"] = FailingRunner(tiny_model, torch.device("cpu"), torch.float32)
        return holder["r"]

    settings = Settings(port=0, metrics_port=-1, model=str(tiny_model))
    srv = start_server(settings, build_service(settings, runner_factory=factory))
    try:
        with make_channel(srv.address) as ch:
            stub = pb_grpc.VisionLanguageStub(ch)
            holder["r"].fail = True
            with pytest.raises(grpc.RpcError) as err:
                stub.Caption(caption_request(sampling=pb.SamplingParams(max_new_tokens=4)), timeout=30)
            assert err.value.code() == grpc.StatusCode.INTERNAL
            assert "secret" not in err.value.details()
            assert srv.service.servicer.engine.stats() == {"running": 0, "waiting": 0}
            holder["r"].fail = False
            ok = stub.Caption(caption_request(sampling=pb.SamplingParams(max_new_tokens=4)), timeout=30)
            assert len(ok.token_ids) == 4
    finally:
        srv.stop(0)
