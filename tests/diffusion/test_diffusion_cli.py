"""The client commands against a real server (typer's CliRunner, real gRPC)."""

from __future__ import annotations

import typer
from PIL import Image
from typer.testing import CliRunner

from services.diffusion.cli import register
from tests.diffusion.conftest import decode


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def test_generate_saves_images(server, tmp_path) -> None:
    out = tmp_path / "cat.png"
    res = CliRunner().invoke(_app(), ["generate", "a red cat", "--out", str(out), "--target", server.address,
                                      "--steps", "2", "--width", "32", "--height", "32", "--seed", "5",
                                      "--num-images", "2", "--preview-every", "1",
                                      "--preview-dir", str(tmp_path / "prev")])
    assert res.exit_code == 0, res.output
    for i, seed in ((0, 5), (1, 6)):
        assert decode((tmp_path / f"cat-{i}.png").read_bytes()).size == (32, 32)
        assert f"seed={seed}" in res.output
    assert sorted(p.name for p in (tmp_path / "prev").iterdir()) == ["step001-0.png", "step001-1.png"]


def test_inpaint_style_and_errors(server, tmp_path) -> None:
    img, mask = tmp_path / "in.png", tmp_path / "mask.png"
    Image.new("RGB", (32, 32), (10, 20, 30)).save(img)
    Image.new("L", (32, 32), 255).save(mask)
    runner = CliRunner()
    res = runner.invoke(_app(), ["inpaint", str(img), str(mask), "a dog", "--out", str(tmp_path / "o.png"),
                                 "--steps", "2", "--target", server.address])
    assert res.exit_code == 0, res.output
    res = runner.invoke(_app(), ["style", str(img), str(img), "--out", str(tmp_path / "s.png"), "--steps", "2",
                                 "--target", server.address])
    assert res.exit_code == 0, res.output
    bad = runner.invoke(_app(), ["generate", "x", "--width", "33", "--target", server.address])
    assert bad.exit_code == 1 and "INVALID_ARGUMENT" in bad.output and "multiple of 8" in bad.output


def test_controlled_generation_and_the_control_model_list(family_servers, tmp_path) -> None:
    address = family_servers.address("sd")
    photo, ref, out = tmp_path / "photo.png", tmp_path / "ref.png", tmp_path / "cat.png"
    Image.new("RGB", (64, 64), (10, 20, 30)).save(photo)
    Image.new("RGB", (32, 32), (200, 20, 30)).save(ref)
    res = CliRunner().invoke(_app(), ["generate", "a red cat", "--out", str(out), "--target", address, "--steps",
                                      "2", "--seed", "5", "--control", f"sd-canny:{photo}:0.8:canny",
                                      "--control", f"sd-file:{photo}", "--control-maps", "--ip-adapter", "sd-ip",
                                      "--reference", str(ref)])
    assert res.exit_code == 0, res.output
    assert decode(out.read_bytes()).size == (64, 64)
    maps = [decode((tmp_path / f"cat-control-{j}.png").read_bytes()) for j in (0, 1)]
    assert maps[0].getextrema() == ((0, 0), (0, 0), (0, 0))  # no edges in a flat image
    assert maps[1].getpixel((5, 5)) == (10, 20, 30)  # "none": the image itself
    listed = CliRunner().invoke(_app(), ["controlnets", "--target", address])
    row = "sd-canny\tcontrolnet\tfamily=sd\tdiffusers folder\tControlNetModel\ttxt2img,img2img,inpaint"
    assert row in listed.output
    assert "preprocessors: none, canny, depth" in listed.output
    bad = CliRunner().invoke(_app(), ["generate", "x", "--control", "sd-canny", "--target", address])
    assert bad.exit_code != 0 and "NAME:IMAGE" in bad.output
    wrong = CliRunner().invoke(_app(), ["generate", "x", "--control", f"sdxl-canny:{photo}", "--target", address])
    assert wrong.exit_code == 1 and "FAILED_PRECONDITION" in wrong.output


def test_finetune_command(server, tmp_path) -> None:
    img = tmp_path / "a.png"
    Image.new("RGB", (64, 64), (200, 0, 0)).save(img)
    (tmp_path / "a.txt").write_text("a red square")
    res = CliRunner().invoke(_app(), ["finetune", "cli-adapter", "--image", str(img), "--steps", "2",
                                      "--target", server.address])
    assert res.exit_code == 0, res.output
    assert "SUCCEEDED" in res.output
    listed = CliRunner().invoke(_app(), ["adapters", "--target", server.address])
    assert "cli-adapter" in listed.output


def test_build_tiny_families_and_single_files_then_serve_one(tmp_path) -> None:
    """`unfragile models build-tiny --family sdxl --single-file` writes what `serve --model FILE` loads."""
    from services.cli import app
    from services.core.client import channel
    from unfragile.common.v1 import common_pb2 as cpb
    from unfragile.diffusion.v1 import diffusion_pb2_grpc as pb_grpc

    from .conftest import make_settings, start

    res = CliRunner().invoke(app, ["models", "build-tiny", "--out", str(tmp_path), "--family", "sdxl",
                                   "--single-file", "--controls"])
    assert res.exit_code == 0, res.output
    controls = tmp_path / "controls"
    assert (f"--set controlnet_dir={controls / 'controlnets'} --set ip_adapter_dir={controls / 'ip-adapters'} "
            f"--set depth_model={controls / 'depth'}") in res.output
    assert sorted(p.name for p in (controls / "controlnets").iterdir()) == ["sdxl-canny", "sdxl-file.safetensors",
                                                                            "sdxl-t2i"]
    file, configs = tmp_path / "tiny-sdxl.safetensors", tmp_path / "tiny-sdxl-config"
    assert f"single_file_config={configs}" in res.output and file.is_file()
    running = start(make_settings(file, tmp_path / "adapters", metrics_port=-1, single_file_config=configs))
    try:
        with channel(running.address) as ch:
            details = pb_grpc.DiffusionStub(ch).ModelInfo(cpb.ModelInfoRequest(), timeout=10).details
        assert (details["family"], details["format"], details["test_model"]) == ("sdxl", "single file", "true")
    finally:
        running.stop(0)
    bad = CliRunner().invoke(app, ["models", "build-tiny", "--out", str(tmp_path), "--family", "flux2"])
    assert bad.exit_code != 0 and "unknown family flux2" in bad.output
