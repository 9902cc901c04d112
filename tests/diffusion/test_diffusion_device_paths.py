"""What a GPU run depends on, checked on the CPU where the mechanism is the same.

The tiny SDXL checkpoint is served in float16 here (the dtype of a GPU deployment; a CPU runs
it, slowly): its VAE config says ``force_upcast`` like the real one, so the dtype each VAE
call runs in can be observed. Also: an out-of-memory batch retried only after its handler's
frames are gone, SD 3's T5 kept in float32 where it must be, fp16 weight files, LoRA training
memory and precision settings.
"""

from __future__ import annotations

import shutil
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from common.errors import ResourceExhausted
from services.core.cancel import CancelToken
from services.diffusion import training
from services.diffusion import vae as vae_calls
from services.diffusion.engine import BatchItem, Engine, EngineConfig
from services.diffusion.jobs import FAILED, SUCCEEDED, JobRegistry
from services.diffusion.modelload import load_pipelines
from services.diffusion.runner import DiffusersRunner
from services.diffusion.settings import LoadConfig
from services.diffusion.types import FineTuneRequest, GenerateRequest, GenerationParams, TrainingExample
from tests.diffusion.conftest import StubRunner


@pytest.fixture(scope="module")
def sdxl16(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> DiffusersRunner:
    runner = DiffusersRunner(str(tiny_models["sdxl"]), torch.device("cpu"), torch.float16,
                             tmp_path_factory.mktemp("adapters"))
    runner.load()
    return runner


@pytest.fixture
def vae_dtypes(sdxl16: DiffusersRunner) -> Iterator[dict[str, list[torch.dtype]]]:
    """The dtype the VAE's encoder and decoder run in, per call."""
    seen: dict[str, list[torch.dtype]] = {"encoder": [], "decoder": []}
    vae = sdxl16.pipe.vae
    hooks = [getattr(vae, part).conv_in.register_forward_pre_hook(
        lambda mod, args, part=part: seen[part].append(args[0].dtype)) for part in seen]
    yield seen
    for h in hooks:
        h.remove()


def _txt2img(runner: DiffusersRunner, seed: int = 1) -> list[list[Image.Image]]:
    req = runner.prepare(GenerateRequest("txt2img", GenerationParams(prompt="a red cat", width=64, height=64,
                                                                     steps=2, seed=seed)))
    return runner.run([BatchItem(req, [seed])], lambda step, total, latents: False)


def test_vae_calls_honour_force_upcast_and_keep_the_vae_dtype(sdxl16: DiffusersRunner, vae_dtypes) -> None:
    vae = sdxl16.pipe.vae
    assert vae.dtype == torch.float16 and vae.config.force_upcast
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)).half()
    preview = sdxl16.preview(latents, "vae")
    assert vae_dtypes["decoder"] == [torch.float32] and preview[0].size == (64, 64)
    encoded = sdxl16.encode_latents([Image.new("RGB", (64, 64), (200, 30, 30))])
    assert vae_dtypes["encoder"] == [torch.float32]
    assert encoded.dtype == torch.float16 and bool(torch.isfinite(encoded).all())
    ft = FineTuneRequest("upcast", [TrainingExample(Image.new("RGB", (64, 64), (10, 200, 10)), "a green tree")])
    run = training.LoraTrainingRun(sdxl16, ft, ft.examples, "train_upcast")  # LoRA training latents
    run.discard()
    assert vae_dtypes["encoder"] == [torch.float32, torch.float32]
    assert vae.dtype == torch.float16
    # without force_upcast the same calls run in the VAE's own dtype
    vae.register_to_config(force_upcast=False)
    try:
        sdxl16.encode_latents([Image.new("RGB", (64, 64), (200, 30, 30))])
        sdxl16.preview(latents, "vae")
    finally:
        vae.register_to_config(force_upcast=True)
    assert vae_dtypes["encoder"][-1] == vae_dtypes["decoder"][-1] == torch.float16


def test_a_failed_decode_leaves_the_vae_in_its_dtype(sdxl16: DiffusersRunner, vae_dtypes,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    vae = sdxl16.pipe.vae
    real_decode = vae.decode
    failures = [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB (simulated)")]

    def decode(*args: Any, **kwargs: Any) -> Any:
        if failures:  # the pipeline has upcast the VAE to float32 for its decode by now
            raise failures.pop()
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(vae, "decode", decode)
    with pytest.raises(torch.OutOfMemoryError):
        _txt2img(sdxl16)
    assert vae.dtype == torch.float16
    assert _txt2img(sdxl16)[0][0].size == (64, 64)  # the next request works (it failed on dtypes before)
    assert vae_dtypes["decoder"] == [torch.float32] and vae.dtype == torch.float16


def test_slicing_and_tiling_follow_the_settings_and_the_size(sdxl16: DiffusersRunner) -> None:
    vae = sdxl16.pipe.vae
    vae_calls.set_memory(vae, 1024, 1024, slicing=True, tiling_pixels=1024 * 1024)
    assert vae.use_slicing and not vae.use_tiling
    vae_calls.set_memory(vae, 1536, 1024, slicing=False, tiling_pixels=1024 * 1024)
    assert not vae.use_slicing and vae.use_tiling
    vae_calls.set_memory(vae, 4096, 4096, slicing=True, tiling_pixels=0)  # 0 = never tile
    assert not vae.use_tiling
    # the runner applies them around every pipeline call (tiny images: tiles from 32x32 up)
    seen: list[bool] = []
    hook = vae.decoder.register_forward_pre_hook(lambda mod, args: seen.append(vae.use_tiling))
    try:
        sdxl16.load_config = LoadConfig(vae_tiling_pixels=32 * 32)
        _txt2img(sdxl16, seed=5)
        sdxl16.load_config = LoadConfig()
        _txt2img(sdxl16, seed=5)
    finally:
        hook.remove()
        sdxl16.load_config = LoadConfig()
    assert seen[0] is True and seen[-1] is False


# ---- LoRA training memory and precision -------------------------------------------------------------------
def test_training_batch_and_precision_per_family_and_device() -> None:
    assert training.training_batch("sdxl", 1024, examples=10) == 2
    assert training.training_batch("sd", 512, examples=10) == 4
    assert training.training_batch("sd", 768, examples=10) == 1
    assert training.training_batch("sdxl", 512, examples=3) == 3  # never more than the examples
    assert training.training_batch("sd", 64, examples=10) == training.MAX_BATCH
    assert training.precision(torch.float32, bf16_supported=True) == "float32"
    assert training.precision(torch.float16, bf16_supported=True) == "bf16-autocast"
    assert training.precision(torch.float16, bf16_supported=False) == "fp16-autocast+scaler"
    assert training.precision(torch.bfloat16, bf16_supported=True) == "bf16-autocast"


def _train(runner: DiffusersRunner, key: str, steps: int = 2) -> tuple[Any, list[float]]:
    ft = FineTuneRequest(key, [TrainingExample(Image.new("RGB", (64, 64), (200, 10, 10)), "a red cat"),
                               TrainingExample(Image.new("RGB", (64, 64), (10, 10, 200)), "a blue sky")])
    run = training.LoraTrainingRun(runner, ft, ft.examples, key)
    assert run.unet.is_gradient_checkpointing  # activations are recomputed in the backward pass
    before = [p.detach().clone() for p in run.params]
    losses = [run.step() for _ in range(steps)]
    assert any(not torch.equal(a, b) for a, b in zip(before, run.params)), "the LoRA weights did not move"
    run.discard()
    assert not run.unet.is_gradient_checkpointing
    return run, losses


def test_float16_training_without_bfloat16_uses_a_grad_scaler(sdxl16: DiffusersRunner,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(training, "bf16_supported", lambda device: False)
    run, losses = _train(sdxl16, "train_scaled")
    assert run.precision == "fp16-autocast+scaler" and run.scaler is not None
    assert all(torch.isfinite(torch.tensor(losses)))
    assert all(p.dtype == torch.float32 for p in run.params)


def test_bfloat16_training_runs_under_bfloat16_autocast(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    runner = DiffusersRunner(str(tiny_models["sd"]), torch.device("cpu"), torch.bfloat16, tmp_path)
    runner.load()
    run, losses = _train(runner, "train_bf16")
    assert run.precision == "bf16-autocast" and run.scaler is None
    assert all(torch.isfinite(torch.tensor(losses)))


# ---- out of memory -----------------------------------------------------------------------------------------
class OutOfMemoryRunner(StubRunner):
    """Runs any batch of more than one image into CUDA's out-of-memory error, holding a workspace when it does."""

    def __init__(self) -> None:
        self.held: list[weakref.ref[torch.Tensor]] = []
        self.batches: list[int] = []
        self.retried_after_release: list[bool] = []

    def run(self, items: Any, on_step: Any) -> list[list[Image.Image]]:
        images = sum(len(it.seeds) for it in items)
        self.batches.append(images)
        if images > 1:
            workspace = torch.empty(1 << 16)
            self.held.append(weakref.ref(workspace))
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 12.00 GiB (simulated)")
        self.retried_after_release.append(all(r() is None for r in self.held))
        if items[0].request.params.prompt == "too big":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 12.00 GiB (simulated)")
        return [[Image.new("RGB", (8, 8))] for _ in items]


def test_out_of_memory_batch_is_retried_after_its_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = OutOfMemoryRunner()
    frees: list[bool] = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: frees.append(all(r() is None for r in runner.held)))
    engine = Engine(runner, EngineConfig(max_batch_images=4, max_queue_delay_ms=500), JobRegistry())
    params = dict(width=64, height=64, steps=1, seed=1)
    jobs = [engine.submit(GenerateRequest("txt2img", GenerationParams(prompt=p, **params)), CancelToken())
            for p in ("a cat", "too big", "a dog")]
    engine.start()
    try:
        for job in (jobs[0], jobs[2]):
            list(engine.events(job))
        with pytest.raises(ResourceExhausted, match="out of memory") as failed:
            list(engine.events(jobs[1]))
    finally:
        engine.stop()
    assert runner.batches == [3, 1, 1, 1]  # together, then each alone
    assert [j.snapshot.state for j in jobs] == [SUCCEEDED, FAILED, SUCCEEDED]
    assert failed.value.retry_after_s > 0
    assert runner.retried_after_release == [True, True, True]  # the failed batch's tensors were gone
    assert len(frees) == 2 and all(frees), frees  # after the batch, and after the request alone


# ---- loading -----------------------------------------------------------------------------------------------
def test_sd3_pipelines_keep_t5_in_float32_where_it_must_be(tiny_models: dict[str, Path]) -> None:
    pipes = load_pipelines(str(tiny_models["sd3"]), LoadConfig(), torch.device("cpu"), torch.float16)
    t5 = pipes.txt2img.text_encoder_3
    for pipe in (pipes.txt2img, pipes.img2img, pipes.inpaint):
        assert pipe.text_encoder_3 is t5 and pipe.transformer is pipes.txt2img.transformer
    dtypes = {name: p.dtype for name, p in t5.named_parameters()}
    assert {d for n, d in dtypes.items() if n.endswith("wo.weight")} == {torch.float32}  # _keep_in_fp32_modules
    assert {d for n, d in dtypes.items() if not n.endswith("wo.weight")} == {torch.float16}
    assert pipes.txt2img.transformer.dtype == torch.float16
    encoded = pipes.img2img.encode_prompt(["a red cat"], prompt_2=None, prompt_3=None, device=torch.device("cpu"),
                                          num_images_per_prompt=1, do_classifier_free_guidance=False,
                                          max_sequence_length=32)
    assert bool(torch.isfinite(encoded[0]).all())


def test_float16_reads_fp16_weight_files_where_the_checkpoint_ships_them(tiny_models: dict[str, Path],
                                                                         tmp_path: Path) -> None:
    from diffusers import UNet2DConditionModel

    folder = Path(shutil.copytree(tiny_models["sd"], tmp_path / "sd"))
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    with torch.no_grad():
        unet.conv_out.bias.fill_(0.25)  # marks the fp16 file's weights
    unet.half().save_pretrained(folder / "unet", variant="fp16")  # only the UNet ships fp16 files
    half = load_pipelines(str(folder), LoadConfig(), torch.device("cpu"), torch.float16)
    assert bool((half.txt2img.unet.conv_out.bias == 0.25).all()) and half.txt2img.unet.dtype == torch.float16
    assert half.txt2img.text_encoder.dtype == torch.float16  # the other components: their one weight file
    full = load_pipelines(str(folder), LoadConfig(), torch.device("cpu"), torch.float32)
    assert not bool((full.txt2img.unet.conv_out.bias == 0.25).all())
