"""What --model may point at: each family's folder or single file, and precise refusals at start-up.

A server never reports SERVING for a checkpoint it cannot run: an unsupported family, a
pickle file, a single file whose config describes another family all fail at start-up
with a message that names the problem.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from common.errors import ModelUnavailable
from services.core.client import channel
from tests.diffusion.conftest import (
    FAMILIES,
    SINGLE_FILE_FAMILIES,
    events_of,
    kinds,
    make_settings,
    params,
    result_of,
    start,
)
from unfragile.common.v1 import common_pb2 as cpb
from unfragile.diffusion.v1 import diffusion_pb2 as pb
from unfragile.diffusion.v1 import diffusion_pb2_grpc as pb_grpc


def _refused(model: Path, tmp_path: Path, **kw: object) -> str:
    with pytest.raises(ModelUnavailable) as info:
        start(make_settings(model, tmp_path / "adapters", metrics_port=-1, **kw))
    return info.value.message


def test_unsupported_families_fail_at_start_up_naming_them(tiny_models, tmp_path) -> None:
    flux = tmp_path / "flux2"
    flux.mkdir()
    (flux / "model_index.json").write_text(json.dumps({"_class_name": "Flux2Pipeline",
                                                       "transformer": ["diffusers", "Flux2Transformer2DModel"]}))
    assert "FLUX.2" in _refused(flux, tmp_path) and "Stable Diffusion XL" in _refused(flux, tmp_path)
    refiner = tmp_path / "refiner"
    shutil.copytree(tiny_models["sdxl"], refiner)
    index = json.loads((refiner / "model_index.json").read_text())
    (refiner / "model_index.json").write_text(json.dumps(index | {"text_encoder": [None, None]}))
    assert "SDXL refiner" in _refused(refiner, tmp_path)


def test_pickle_and_unknown_single_files_are_refused(tmp_path) -> None:
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not loaded")
    message = _refused(ckpt, tmp_path)
    assert "pickle" in message and ".safetensors" in message
    import torch
    from safetensors.torch import save_file

    odd = tmp_path / "odd.safetensors"
    save_file({"foo.weight": torch.zeros(2)}, str(odd))
    assert "not a checkpoint of a known Stable Diffusion layout" in _refused(odd, tmp_path)


def test_single_file_configs_come_from_the_setting_or_the_local_cache_only(single_files, tmp_path) -> None:
    file, _ = single_files["sdxl"]
    message = _refused(file, tmp_path, single_file_config=single_files["sd"][1])
    assert "Stable Diffusion XL" in message and "Stable Diffusion 1.x/2.x" in message
    message = _refused(file, tmp_path)  # no setting, and the released SDXL configs are not cached here
    assert "stabilityai/stable-diffusion-xl-base-1.0" in message and "single_file_config" in message


def test_sd3_without_t5(tiny_models, tmp_path) -> None:
    running = start(make_settings(tiny_models["sd3"], tmp_path / "adapters", metrics_port=-1, t5=False))
    try:
        with channel(running.address) as ch:
            stub = pb_grpc.DiffusionStub(ch)
            details = stub.ModelInfo(cpb.ModelInfoRequest(), timeout=10).details
            assert details["t5"] == "off" and "T5EncoderModel" not in details["text_encoders"]
            req = pb.TextToImageRequest(params=params(steps=2, seed=9))
            first = result_of(events_of(stub.TextToImage, req)).images[0].image.data
            assert result_of(events_of(stub.TextToImage, req)).images[0].image.data == first
    finally:
        running.stop(0)


def test_sdxl_refiner_runs_the_last_steps(tiny_models, tmp_path) -> None:
    from services.diffusion.tiny import build_tiny_sdxl_refiner

    refiner = build_tiny_sdxl_refiner(tmp_path / "tiny-sdxl-refiner")
    assert "Stable Diffusion XL only" in _refused(tiny_models["sd"], tmp_path, refiner=str(refiner))
    running = start(make_settings(tiny_models["sdxl"], tmp_path / "adapters", metrics_port=-1,
                                  refiner=str(refiner), refiner_fraction=0.5))
    try:
        with channel(running.address) as ch:
            stub = pb_grpc.DiffusionStub(ch)
            assert stub.ModelInfo(cpb.ModelInfoRequest(), timeout=10).details["refiner"] == str(refiner)
            events = events_of(stub.TextToImage, pb.TextToImageRequest(params=params(steps=4, preview_every=1)))
            assert [(p.step, p.total_steps) for p in kinds(events, "progress")] == [(s, 4) for s in (1, 2, 3, 4)]
            assert len(kinds(events, "preview")) == 3 and result_of(events).steps == 4
    finally:
        running.stop(0)


@pytest.mark.parametrize("family", FAMILIES[1:])
def test_tiny_builders_and_single_file_export_are_deterministic(tiny_models, family, tmp_path) -> None:
    from services.diffusion.singlefile import export_single_file
    from services.diffusion.tiny import build_tiny

    def digests(root: Path) -> dict[str, str]:
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    assert digests(build_tiny(family, tmp_path / "again")) == digests(tiny_models[family])
    if family not in SINGLE_FILE_FAMILIES:
        return
    a = export_single_file(tiny_models[family], tmp_path / "a.safetensors").read_bytes()
    assert export_single_file(tmp_path / "again", tmp_path / "b.safetensors").read_bytes() == a


def test_start_up_prints_no_library_warnings(single_files, tmp_path) -> None:
    """A fresh process building a tiny model, then loading an SDXL single file (from_single_file +
    from_pipe), prints nothing but its own line."""
    file, config = single_files["sdxl"]
    script = (
        "import logging, sys, torch\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "from services.diffusion.tiny import build_tiny\n"
        f"build_tiny('sd3', __import__('pathlib').Path({str(tmp_path / 'sd3')!r}))\n"
        "from services.diffusion.runner import DiffusersRunner\n"
        "from services.diffusion.settings import LoadConfig\n"
        f"r = DiffusersRunner({str(file)!r}, torch.device('cpu'), torch.float32, __import__('pathlib').Path("
        f"{str(tmp_path / 'adapters')!r}), LoadConfig(single_file_config={str(config)!r}))\n"
        "r.load()\nprint('loaded', r.family.key)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "loaded sdxl"
    assert proc.stderr.strip() == "", proc.stderr[-2000:]
