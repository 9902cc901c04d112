"""The GPU check runs end to end in its CPU mode, and its models have the real checkpoints' sizes.

``benchmarks/gpu_check.sh --device cpu --quick`` takes the same code path as on a GPU (build,
save, ``unfragile serve`` processes, gRPC load, results merge) with scaled-down models in fp32,
so the script cannot rot between GPU runs. The real-size configs are checked on the meta
device (no memory, no weights): the parameter counts the docs quote must be what gets built.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = {
    "gpu.check.wall_s",
    "gpu.vl.ttft_p50_ms.1_client",
    "gpu.vl.ttft_p50_ms.32_clients",
    "gpu.vl.tokens_per_s.1_client",
    "gpu.vl.tokens_per_s.32_clients",
    "gpu.vl.tokens_per_s.32_over_1_client",
    "gpu.vl.batched_vs_unbatched.mismatch_rate",
    "gpu.vl.peak_memory_mb",
    "gpu.diffusion.images_per_s.1_client",
    "gpu.diffusion.images_per_s.4_clients",
    "gpu.diffusion.images_per_s.4_over_1_client",
    "gpu.diffusion.peak_memory_mb",
}


def _run_check(tmp_path: Path, results: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable}
    cmd = ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--quick",
           "--results", str(results), "--work", str(tmp_path / "work")]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=280)


def test_gpu_check_cpu_quick_writes_every_entry_to_the_given_results_file(tmp_path: Path) -> None:
    committed = ROOT / "benchmarks" / "results.json"
    before = committed.read_bytes() if committed.exists() else None
    results = tmp_path / "out" / "results.json"
    results.parent.mkdir()
    # an entry of another area already there is kept; a stale gpu.* entry is replaced
    results.write_text(json.dumps([
        {"name": "vl.other", "value": 1.0, "target": 1.0, "better": "higher", "met": True, "unit": "ratio",
         "baseline": "x", "device": "d", "date": "t"},
        {"name": "gpu.vl.retired_entry", "value": 1.0, "target": 1.0, "better": "higher", "met": True,
         "unit": "ratio", "baseline": "x", "device": "d", "date": "t"},
    ]))

    proc = _run_check(tmp_path, results)

    assert proc.returncode == 0, proc.stderr[-4000:]
    entries = {e["name"]: e for e in json.loads(results.read_text())}
    assert set(entries) == EXPECTED | {"vl.other"}
    for name in EXPECTED:
        e = entries[name]
        assert e["device"].startswith("cpu"), e
        assert math.isfinite(e["value"]) and e["value"] >= 0, e
        assert "scaled-down (--quick)" in e["notes"] and "float32" in e["notes"], e
    for name in ("gpu.vl.tokens_per_s.1_client", "gpu.vl.tokens_per_s.32_clients",
                 "gpu.diffusion.images_per_s.1_client", "gpu.diffusion.images_per_s.4_clients",
                 "gpu.vl.peak_memory_mb", "gpu.diffusion.peak_memory_mb", "gpu.vl.ttft_p50_ms.1_client",
                 "gpu.vl.ttft_p50_ms.32_clients"):
        assert entries[name]["value"] > 0, entries[name]
    assert 0.0 <= entries["gpu.vl.batched_vs_unbatched.mismatch_rate"]["value"] <= 1.0
    assert "VmHWM" in entries["gpu.vl.peak_memory_mb"]["notes"]
    table = (results.parent / "RESULTS.md").read_text()
    assert all(f"| {name} |" in table for name in EXPECTED)
    assert (committed.read_bytes() if committed.exists() else None) == before, "benchmarks/results.json was touched"
    # the served folders are ordinary HF / diffusers checkpoints of the real architectures
    kosmos = json.loads((tmp_path / "work" / "kosmos2-quick" / "config.json").read_text())
    assert kosmos["architectures"] == ["Kosmos2ForConditionalGeneration"]
    assert kosmos["text_config"]["vocab_size"] == 4096
    index = json.loads((tmp_path / "work" / "sd15-quick" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]


def test_real_sizes_have_the_published_parameter_counts() -> None:
    import torch
    from transformers import Kosmos2ForConditionalGeneration

    from benchmarks.gpu.real_models import KOSMOS2_REAL, SD15_REAL, clip_tokenizer, kosmos2_config, sd_modules

    with torch.device("meta"):
        kosmos = Kosmos2ForConditionalGeneration(kosmos2_config(KOSMOS2_REAL))
        unet, vae, text = sd_modules(SD15_REAL, clip_tokenizer(SD15_REAL.text_vocab), seed=0)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731 - parameter count of a module
    assert round(count(kosmos) / 1e9, 2) == 1.66
    assert kosmos.get_input_embeddings().weight.shape == (65037, 2048)
    assert len(kosmos.text_model.model.layers) == 24
    assert len(kosmos.vision_model.model.encoder.layers) == 24
    assert getattr(kosmos.config.vision_config, "hidden_size") == 1024  # noqa: B009 - the attribute is typed as a union of config classes
    assert round(count(unet) / 1e6) == 860 and round(count(vae) / 1e6) == 84 and round(count(text) / 1e6) == 123
    assert round((count(unet) + count(vae) + count(text)) / 1e9, 2) == 1.07
    assert tuple(unet.config.block_out_channels) == (320, 640, 1280, 1280)
    assert unet.config.cross_attention_dim == 768 and text.config.hidden_size == 768
    assert tuple(vae.config.block_out_channels) == (128, 256, 512, 512)


def test_quick_builds_are_deterministic_and_reused(tmp_path: Path) -> None:
    from benchmarks.gpu.real_models import KOSMOS2_QUICK, build_kosmos2

    a = build_kosmos2(tmp_path / "a", KOSMOS2_QUICK)
    b = build_kosmos2(tmp_path / "b", KOSMOS2_QUICK)
    assert not a.reused and a.parameters == b.parameters
    for name in ("model.safetensors", "tokenizer.json"):
        assert (a.path / name).read_bytes() == (b.path / name).read_bytes(), name
    again = build_kosmos2(tmp_path / "a", KOSMOS2_QUICK)
    assert again.reused and again.parameters == a.parameters


def test_a_server_that_cannot_load_its_model_fails_fast_with_its_log(tmp_path: Path) -> None:
    from benchmarks.gpu.serving import Server

    missing = tmp_path / "no-such-model"
    server = Server("visionlanguage", missing, "cpu", "float32", {"log_level": "WARNING"}, tmp_path / "vl.log",
                    start_timeout_s=240)
    with pytest.raises(RuntimeError) as err:
        server.__enter__()
    message = str(err.value)
    assert "the process exited with code" in message
    assert str(missing) in message  # the server's own explanation, from its log
    assert server.proc is None
