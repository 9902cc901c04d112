"""int8 quantization, ONNX export of the image path, and the `unfragile vl` client commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from typer.testing import CliRunner

from services.cli import app
from services.core.client import channel as make_channel
from services.visionlanguage.onnx_export import ImageFeatureModule
from tests.vl.vlhelpers import caption_request, png, start
from unfragile.common.v1 import common_pb2
from unfragile.visionlanguage.v1 import visionlanguage_pb2 as pb
from unfragile.visionlanguage.v1 import visionlanguage_pb2_grpc as pb_grpc


def test_int8_quantized_server_serves(tiny_model: Path) -> None:
    srv = start(tiny_model, quantize="int8")
    try:
        engine = srv.service.servicer.engine
        linears = [m for m in engine.runner.model.modules() if isinstance(m, torch.nn.Linear)]
        qlinears = [m for m in engine.runner.model.modules() if "quantized" in type(m).__module__]
        assert qlinears and not linears  # every nn.Linear was swapped for a dynamic int8 one
        with make_channel(srv.address) as ch:
            stub = pb_grpc.VisionLanguageStub(ch)
            info = stub.ModelInfo(common_pb2.ModelInfoRequest(), timeout=10)
            assert info.quantization == "int8" and info.parameters > 100_000
            a = stub.Caption(caption_request(sampling=pb.SamplingParams(max_new_tokens=5)), timeout=30)
            b = stub.Caption(caption_request(sampling=pb.SamplingParams(max_new_tokens=5)), timeout=30)
            assert len(a.token_ids) == 5 and a.token_ids == b.token_ids
    finally:
        srv.stop(0)


def test_export_onnx_matches_torch(tiny_model: Path, tmp_path: Path) -> None:
    import onnxruntime as ort
    from transformers import Kosmos2ForConditionalGeneration

    out = tmp_path / "vision.onnx"
    res = CliRunner().invoke(app, ["vl", "export-onnx", "--model", str(tiny_model), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.stat().st_size > 0
    x = np.random.RandomState(0).randn(2, 3, 224, 224).astype(np.float32)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"pixel_values": x})[0]
    model = Kosmos2ForConditionalGeneration.from_pretrained(tiny_model, attn_implementation="eager").eval()
    with torch.inference_mode():
        want = ImageFeatureModule(model)(torch.from_numpy(x)).numpy()
    assert got.shape == want.shape == (2, 64, 64)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_cli_caption_and_info(server, tmp_path: Path) -> None:
    img = tmp_path / "red.png"
    img.write_bytes(png())
    runner = CliRunner()
    res = runner.invoke(app, ["vl", "caption", str(img), "--target", server.address, "--max-new-tokens", "4",
                              "--json"])
    assert res.exit_code == 0, res.output
    body = json.loads(res.stdout)
    assert body["prompt"] == "<grounding>An image of" and len(body["tokenIds"]) == 4
    res = runner.invoke(app, ["vl", "caption", str(img), "--target", server.address, "--max-new-tokens", "4",
                              "--stream", "--temperature", "1", "--seed", "3"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["vl", "info", "--target", server.address])
    assert res.exit_code == 0 and "Kosmos2ForConditionalGeneration" in res.stdout
    res = runner.invoke(app, ["vl", "caption", str(img), "--target", server.address, "--language", "xx"])
    assert res.exit_code == 1 and "INVALID_ARGUMENT" in res.output


def test_bfloat16_server_serves(tiny_model: Path) -> None:
    srv = start(tiny_model, dtype="bfloat16")
    try:
        with make_channel(srv.address) as ch:
            stub = pb_grpc.VisionLanguageStub(ch)
            assert stub.ModelInfo(common_pb2.ModelInfoRequest(), timeout=10).dtype == "bfloat16"
            req = caption_request(sampling=pb.SamplingParams(max_new_tokens=4, temperature=1.0, seed=1))
            a, b = stub.Caption(req, timeout=30), stub.Caption(req, timeout=30)
            assert len(a.token_ids) == 4 and a.token_ids == b.token_ids
            emb = stub.Embed(pb.EmbedRequest(texts=["a cat"]), timeout=30)
            assert abs(sum(v * v for v in emb.text_embeddings[0].values) - 1) < 1e-3
    finally:
        srv.stop(0)
