"""The GPU check runs end to end in its CPU mode, and its models have the real checkpoints' sizes.

``benchmarks/gpu_check.sh --device cpu --quick`` takes the same code path as on a GPU (build,
save, ``unfragile serve`` processes, gRPC load, results merge) with scaled-down models in fp32,
so the script cannot rot between GPU runs. It runs on a Python other than the suite's 3.11
when one with torch is present (GPU images commonly ship 3.12); here none is (see
``OTHER_PYTHON_SKIP``), so it runs on 3.11, and the script's own setup (a venv made with the
system site packages, torch installed only when asked) runs on the other Python up to where
torch is needed. The real-size configs are checked on the meta device (no memory, no
weights): the parameter counts the docs quote must be what gets built.
"""

from __future__ import annotations

import json
import math
import os
import shutil
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


OTHER_PYTHON_SKIP = (
    "no Python other than 3.11 with torch is installed here, and none can be: the only CPU build of torch "
    "this machine's package sources carry is for CPython 3.11 (torch-2.13.0+cpu cp311); for 3.12 the package "
    "index serves only the CUDA build, which pulls several GB of nvidia-* wheels (cuDNN, cuBLAS, NCCL). The "
    "smoke run uses 3.11; test_setup_on_another_python runs the script's setup on 3.12")


def _other_pythons() -> list[str]:
    """Interpreters of another minor version than this one (python3.12, python3.13, ...) that are installed."""
    found = []
    for minor in range(10, 16):
        name = f"python3.{minor}"
        if minor != sys.version_info.minor and (path := shutil.which(name)) is not None:
            if subprocess.run([path, "--version"], capture_output=True).returncode == 0:  # not a pyenv shim
                found.append(path)
            elif (pyenv := Path.home() / ".pyenv" / "versions").is_dir():
                found += [str(p) for p in sorted(pyenv.glob(f"3.{minor}.*/bin/{name}"))[-1:]]
    return found


def _has_torch(python: str) -> bool:
    return subprocess.run([python, "-c", "import torch, diffusers, grpc"], capture_output=True).returncode == 0


def _run_check(tmp_path: Path, results: Path, python: str = sys.executable) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": python}
    cmd = ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--quick",
           "--results", str(results), "--work", str(tmp_path / "work")]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=280)


def _smoke_python() -> str:
    ready = [p for p in _other_pythons() if _has_torch(p)]
    return ready[0] if ready else sys.executable


def test_gpu_check_runs_on_another_python_when_one_has_torch() -> None:
    if _smoke_python() == sys.executable:
        pytest.skip(OTHER_PYTHON_SKIP)


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

    proc = _run_check(tmp_path, results, _smoke_python())

    assert proc.returncode == 0, proc.stderr[-4000:]
    entries = {e["name"]: e for e in json.loads(results.read_text())}
    assert set(entries) == EXPECTED | {"vl.other"}
    for name in EXPECTED:
        e = entries[name]
        assert e["device"].startswith("cpu") and "(torch " in e["device"], e
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
    assert table.startswith("# GPU check results") and "torch 2." in table and "python 3." in table
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


def test_setup_on_another_python_makes_a_venv_over_its_site_packages_and_installs_no_torch_unasked(
        tmp_path: Path) -> None:
    others = _other_pythons()
    if not others:
        pytest.skip("no Python other than the suite's is installed")
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "INSTALL_TORCH", "VIRTUAL_ENV")}
    env |= {"PYTHON_BIN": others[0], "VENV": str(venv)}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--quick"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    if _has_torch(others[0]):
        pytest.skip(f"{others[0]} has torch: the smoke run above runs on it")
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "has no torch" in proc.stderr and "INSTALL_TORCH" in proc.stderr
    config = (venv / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = true" in config
    minor = subprocess.run([others[0], "-c", "import sys; print(sys.version_info.minor)"], capture_output=True,
                           text=True).stdout.strip()
    assert f"3.{minor}" in config
    assert not list(venv.glob("lib/python*/site-packages/torch")), "torch was installed without being asked"


def test_the_check_stops_at_its_deadline_and_writes_what_it_has(tmp_path: Path) -> None:
    from benchmarks.gpu.check import main

    results = tmp_path / "results.json"
    code = main(["--device", "cpu", "--quick", "--results", str(results), "--work", str(tmp_path / "work"),
                 "--deadline-s", "0.001"])
    assert code == 4
    entries = {e["name"]: e for e in json.loads(results.read_text())}
    assert list(entries) == ["gpu.check.wall_s"] and "INCOMPLETE run (out of time before serving" in \
        entries["gpu.check.wall_s"]["notes"]
    assert "**Incomplete**" in (tmp_path / "RESULTS.md").read_text()
