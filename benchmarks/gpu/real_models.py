"""Random-weight Kosmos-2 and Stable Diffusion 1.5 at the real checkpoints' sizes, built offline.

The real architecture classes (``Kosmos2ForConditionalGeneration``; ``UNet2DConditionModel``,
``AutoencoderKL``, ``CLIPTextModel`` in a ``StableDiffusionPipeline``) are built with the
published configs' values, seeded, cast to the serving dtype and saved in Hugging Face /
diffusers format, so ``unfragile serve --model DIR`` loads them through the same
``from_pretrained`` path as the real checkpoints. The tokenizers are the ones
``services/*/tiny.py`` write in code, padded with unused pieces to the real vocabulary sizes
(Kosmos-2: 65037, CLIP: 49408) so the embedding matrices have the real shapes.

- ``KOSMOS2_REAL``: text decoder 2048 wide x 24 layers (FFN 8192, 32 heads), vocabulary 65037;
  vision ViT-L/14 (1024 x 24, 16 heads, 224 px); 64 latent queries: 1.66 B parameters.
- ``SD15_REAL``: UNet 320/640/1280/1280 (2 layers per block, cross-attention 768), CLIP text
  768 x 12, VAE 128/256/512/512: 1.07 B parameters.
- ``*_QUICK``: the same architectures scaled down (CPU smoke runs of the GPU check).

Built on the target device (seconds on a GPU), then cast, so the same seed gives the same
weights on the same device and library versions.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

KOSMOS2_SEED = 20231106
SD_SEED = 1500
MARKER = "unfragile_build.json"


@dataclass(frozen=True)
class Kosmos2Sizes:
    text_embed_dim: int
    text_layers: int
    text_ffn_dim: int
    text_heads: int
    vocab_size: int
    vision_hidden: int
    vision_layers: int
    vision_intermediate: int
    vision_heads: int
    latent_queries: int = 64
    max_positions: int = 2048
    init_std: float = 0.02


@dataclass(frozen=True)
class SDSizes:
    unet_channels: tuple[int, ...]
    unet_layers_per_block: int
    text_hidden: int  # CLIP text width = the UNet's cross-attention width
    text_layers: int
    text_heads: int
    text_intermediate: int
    text_vocab: int
    vae_channels: tuple[int, ...]
    vae_layers_per_block: int
    sample: int  # native image side in pixels


# microsoft/kosmos-2-patch14-224's config.json
KOSMOS2_REAL = Kosmos2Sizes(text_embed_dim=2048, text_layers=24, text_ffn_dim=8192, text_heads=32, vocab_size=65037,
                            vision_hidden=1024, vision_layers=24, vision_intermediate=4096, vision_heads=16)
KOSMOS2_QUICK = Kosmos2Sizes(text_embed_dim=64, text_layers=2, text_ffn_dim=128, text_heads=4, vocab_size=4096,
                             vision_hidden=32, vision_layers=2, vision_intermediate=64, vision_heads=2,
                             max_positions=512)
# runwayml/stable-diffusion-v1-5's unet/, text_encoder/ and vae/ configs
SD15_REAL = SDSizes(unet_channels=(320, 640, 1280, 1280), unet_layers_per_block=2, text_hidden=768, text_layers=12,
                    text_heads=12, text_intermediate=3072, text_vocab=49408, vae_channels=(128, 256, 512, 512),
                    vae_layers_per_block=2, sample=512)
SD15_QUICK = SDSizes(unet_channels=(32, 32, 64, 64), unet_layers_per_block=1, text_hidden=32, text_layers=2,
                     text_heads=4, text_intermediate=64, text_vocab=1024, vae_channels=(32, 32, 32, 32),
                     vae_layers_per_block=1, sample=64)


@dataclass
class Built:
    """What a build produced: the folder, its parameter count, and how long building took."""

    path: Path
    parameters: int
    seconds: float
    reused: bool


def _unused(n: int) -> list[str]:
    return [f"<unused_{i}>" for i in range(n)]


def kosmos2_processor(vocab_size: int) -> Any:
    """The tiny model's Kosmos2Processor with its vocabulary padded so ``len(tokenizer) == vocab_size``."""
    from services.visionlanguage.tiny import build_processor, build_vocab

    base = build_vocab()
    added = len(build_processor(base).tokenizer) - len(base)  # <grounding>, <patch_index_*>, ...
    fill = vocab_size - len(base) - added
    if fill < 0:
        raise ValueError(f"vocab_size {vocab_size} is below the {len(base) + added} tokens the processor needs")
    processor = build_processor(base + [(p, -100.0) for p in _unused(fill)])
    assert len(processor.tokenizer) == vocab_size, (len(processor.tokenizer), vocab_size)
    return processor


def clip_tokenizer(vocab_size: int) -> Any:
    """The tiny model's byte-level CLIP tokenizer padded to ``vocab_size``; the two specials stay last, as in CLIP."""
    from transformers import CLIPTokenizer

    from services.diffusion.tiny import build_vocab_and_merges

    vocab, merges = build_vocab_and_merges()
    specials = ["<|startoftext|>", "<|endoftext|>"]
    pieces = [t for t in sorted(vocab, key=vocab.__getitem__) if t not in specials]
    if vocab_size < len(pieces) + 2:
        raise ValueError(f"text_vocab {vocab_size} is below the tokenizer's {len(pieces) + 2} tokens")
    pieces += _unused(vocab_size - len(pieces) - 2)
    make: Any = CLIPTokenizer  # its annotation says list[str] merges; pairs are what it takes
    tokenizer = make(vocab={t: i for i, t in enumerate(pieces + specials)}, merges=merges, model_max_length=77)
    assert len(tokenizer) == vocab_size, (len(tokenizer), vocab_size)
    return tokenizer


def _reuse(out: Path, spec: dict[str, Any]) -> Built | None:
    """The earlier build in ``out`` when it was made from exactly ``spec``; else clear ``out`` for a new one.

    Only a folder this module built (it has the marker) is cleared: stale shards of another
    build must not be loaded with the new ones. Any other non-empty folder is refused.
    """
    marker = out / MARKER
    if marker.exists():
        saved = json.loads(marker.read_text())
        if saved.get("spec") == spec:
            return Built(out, int(saved["parameters"]), 0.0, True)
        shutil.rmtree(out)
    elif out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty and was not built by {__name__}; choose another --work folder")
    return None


def _finish(out: Path, spec: dict[str, Any], parameters: int, started: float) -> Built:
    (out / MARKER).write_text(json.dumps({"spec": spec, "parameters": parameters, "builder": __name__}, indent=2)
                              + "\n")
    return Built(out, parameters, time.perf_counter() - started, False)


def _release(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def kosmos2_config(sizes: Kosmos2Sizes) -> Any:
    from transformers import Kosmos2Config

    return Kosmos2Config(
        text_config=dict(vocab_size=sizes.vocab_size, embed_dim=sizes.text_embed_dim, layers=sizes.text_layers,
                         ffn_dim=sizes.text_ffn_dim, attention_heads=sizes.text_heads,
                         max_position_embeddings=sizes.max_positions, init_std=sizes.init_std, dropout=0.0,
                         attention_dropout=0.0),
        vision_config=dict(hidden_size=sizes.vision_hidden, intermediate_size=sizes.vision_intermediate,
                           num_hidden_layers=sizes.vision_layers, num_attention_heads=sizes.vision_heads,
                           image_size=224, patch_size=14),
        latent_query_num=sizes.latent_queries,
    )


def build_kosmos2(out: Path, sizes: Kosmos2Sizes, device: str = "cpu", dtype: str = "float32",
                  seed: int = KOSMOS2_SEED) -> Built:
    """Write a seeded random-weight Kosmos-2 of ``sizes`` (model in ``dtype`` + processor) to ``out``."""
    import torch
    from transformers import Kosmos2ForConditionalGeneration

    out = Path(out)
    spec = {"model": "kosmos2", "sizes": asdict(sizes), "dtype": dtype, "seed": seed}
    if (done := _reuse(out, spec)) is not None:
        return done
    started = time.perf_counter()
    processor = kosmos2_processor(sizes.vocab_size)
    torch.manual_seed(seed)
    with torch.device(device):
        model = Kosmos2ForConditionalGeneration(kosmos2_config(sizes))
    model = model.to(getattr(torch, dtype)).eval()
    parameters = sum(p.numel() for p in model.parameters())
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    del model
    _release(device)
    return _finish(out, spec, parameters, started)


def _unet_config(s: SDSizes) -> dict[str, Any]:
    n = len(s.unet_channels)
    return dict(
        sample_size=s.sample // 8, in_channels=4, out_channels=4, layers_per_block=s.unet_layers_per_block,
        block_out_channels=s.unet_channels,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        cross_attention_dim=s.text_hidden, attention_head_dim=8, norm_num_groups=32,
    )


def sd_modules(s: SDSizes, tokenizer: Any, seed: int) -> tuple[Any, Any, Any]:
    """(unet, vae, text_encoder), each created right after its own seed, on the current default device."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**_unet_config(s))
    torch.manual_seed(seed + 1)
    n = len(s.vae_channels)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                        up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=s.vae_channels,
                        layers_per_block=s.vae_layers_per_block, latent_channels=4, norm_num_groups=32,
                        sample_size=s.sample)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=s.text_vocab, hidden_size=s.text_hidden, intermediate_size=s.text_intermediate,
        num_hidden_layers=s.text_layers, num_attention_heads=s.text_heads, max_position_embeddings=77,
        hidden_act="quick_gelu", projection_dim=s.text_hidden, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    return unet, vae, text_encoder


def build_sd(out: Path, sizes: SDSizes, device: str = "cpu", dtype: str = "float32", seed: int = SD_SEED) -> Built:
    """Write a seeded random-weight Stable Diffusion pipeline of ``sizes`` (diffusers layout) to ``out``."""
    import torch
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    out = Path(out)
    spec = {"model": "sd", "sizes": asdict(sizes), "dtype": dtype, "seed": seed}
    if (done := _reuse(out, spec)) is not None:
        return done
    started = time.perf_counter()
    tokenizer = clip_tokenizer(sizes.text_vocab)
    with torch.device(device):
        modules = [m.to(getattr(torch, dtype)).eval() for m in sd_modules(sizes, tokenizer, seed)]
    unet, vae, text_encoder = modules
    parameters = sum(p.numel() for m in modules for p in m.parameters())
    # SD 1.5's own scheduler config (the server builds the requested scheduler from it)
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                              set_alpha_to_one=False, steps_offset=1, num_train_timesteps=1000)
    pipe: Any = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   image_encoder=None, requires_safety_checker=False)
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out, safe_serialization=True)
    del pipe, modules, unet, vae, text_encoder
    _release(device)
    return _finish(out, spec, parameters, started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build random-weight Kosmos-2 and SD 1.5 at real (or --quick) sizes.")
    parser.add_argument("--out", type=Path, required=True, help="writes OUT/kosmos2 and OUT/sd15")
    parser.add_argument("--quick", action="store_true", help="scaled-down sizes of the same architectures")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args(argv)
    k = build_kosmos2(args.out / "kosmos2", KOSMOS2_QUICK if args.quick else KOSMOS2_REAL, args.device, args.dtype)
    s = build_sd(args.out / "sd15", SD15_QUICK if args.quick else SD15_REAL, args.device, args.dtype)
    for b in (k, s):
        print(f"{b.path}: {b.parameters / 1e6:.1f} M parameters, {b.seconds:.1f} s{' (reused)' if b.reused else ''}")


if __name__ == "__main__":  # pragma: no cover
    main()
