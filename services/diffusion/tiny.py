"""Tiny, randomly initialised diffusion checkpoints of each family, built offline.

No weights can be downloaded here, so tests, the demo and the benchmarks run on *real*
diffusers pipelines whose weights are seeded noise: ``StableDiffusionPipeline`` (UNet,
four-block ``AutoencoderKL`` so the VAE scale factor is 8 like real SD, CLIP text encoder),
``StableDiffusionXLPipeline`` (two CLIP text encoders of different widths, a UNet with
``text_time`` added conditioning), ``StableDiffusion3Pipeline`` (MMDiT transformer with
qk RMS-norm, 16-channel VAE with shift/scale factors, CLIP-L, CLIP-G and T5 encoders) and
``FluxPipeline`` (FLUX.1 transformer with double- and single-stream blocks and rotary
positions, CLIP pooled + T5 sequence conditioning, 16-channel VAE; [dev] embeds the
guidance scale, [schnell] does not and uses a fixed-shift schedule).
They are saved in the diffusers folder layout and the server loads them back with
``from_pretrained`` exactly like a real checkpoint (``singlefile.py`` writes the original
single-file layout of each too). The SD folder also holds a separate 9-channel inpainting
UNet in ``unet_inpaint/``, as real inpaint checkpoints have.

Determinism matters (``models build-tiny`` writes the same bytes every run): every module is
created right after ``torch.manual_seed``, tokenizers come from hand-written vocabularies
(a byte-level BPE for CLIP, a Unigram list for T5; training one is not reproducible across
processes), and everything is saved as safetensors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from services.core import clip_bpe

# Words that get whole-word BPE merges / Unigram pieces, so test prompts tokenize to a few ids.
_WORDS = (
    "a", "an", "the", "of", "in", "on", "with", "and", "photo", "painting", "style", "cat", "dog",
    "red", "blue", "green", "sky", "snow", "snowman", "man", "woman", "tree", "house", "sea", "sun",
)

PRESETS: dict[str, dict[str, Any]] = {
    # 64x64 images, ~0.1 s for 4 steps on 2 CPU cores.
    "tiny": {"unet_channels": (32, 64), "vae_channels": (16, 16, 32, 32), "text_hidden": 32, "sample": 64,
             "flux_blocks": (1, 2)},
    # A little wider, for benchmarks that want the denoiser to dominate the cost (FLUX.1: double- and
    # single-stream blocks; the real ones have 19 and 38).
    "bench": {"unet_channels": (64, 128), "vae_channels": (32, 32, 64, 64), "text_hidden": 64, "sample": 64,
              "flux_blocks": (2, 4)},
}


def build_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP-style byte-level BPE: 256 bytes, 256 end-of-word bytes, merges of the words above, specials."""
    return clip_bpe.vocab_and_merges(_WORDS)


def build_tokenizer() -> Any:
    from transformers import CLIPTokenizer

    vocab, merges = build_vocab_and_merges()
    # merges as (left, right) tuples: what the tokenizers BPE model takes (the stubs say strings)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)  # type: ignore[arg-type]


def build_t5_tokenizer() -> Any:
    """A T5 (SentencePiece Unigram) tokenizer from a hand-written vocabulary: ids 0-2 are T5's specials."""
    from transformers import T5TokenizerFast  # type: ignore[attr-defined]  # exported lazily, not in the stubs

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    pieces += [(f"▁{w}", -1.0 - i / 100) for i, w in enumerate(_WORDS)]
    symbols = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'-"
    pieces += [(c, -5.0 - i / 100) for i, c in enumerate(symbols)]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=128)


def _preset(preset: str) -> dict[str, Any]:
    from services.diffusion.modelload import prepare_libraries

    prepare_libraries()
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[preset]


def _seeded(seed: int, make: Any) -> Any:
    import torch

    torch.manual_seed(seed)
    return make()


def _vae(p: dict[str, Any], latent_channels: int, **extra: Any) -> Any:
    from diffusers import AutoencoderKL

    vc = p["vae_channels"]
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * len(vc),
        up_block_types=("UpDecoderBlock2D",) * len(vc), block_out_channels=vc, latent_channels=latent_channels,
        layers_per_block=1, norm_num_groups=min(16, vc[0]), sample_size=p["sample"], **extra)


def _clip(tokenizer: Any, hidden: int, with_projection: bool) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=hidden,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def _unet_config(p: dict[str, Any], in_channels: int, cross: int, **extra: Any) -> dict[str, Any]:
    ch = p["unet_channels"]
    return dict(
        sample_size=p["sample"] // 8, in_channels=in_channels, out_channels=4, layers_per_block=1,
        block_out_channels=ch, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=cross, attention_head_dim=8,
        norm_num_groups=min(32, ch[0]), **extra)


def _save(pipe: Any, out: Path) -> None:
    """``save_pretrained`` in safetensors (``Any``: diffusers' pipeline classes are not typed)."""
    pipe.save_pretrained(out, safe_serialization=True)


def _finish(out: Path, family: str, preset: str) -> Path:
    (out / "unfragile_tiny.json").write_text(
        json.dumps({"family": family, "preset": preset, "builder": __name__}, indent=2) + "\n")
    return out


def build_tiny_sd(out: Path, preset: str = "tiny") -> Path:
    """A tiny SD 1.x checkpoint (diffusers layout + ``unet_inpaint/``) in ``out``; same bytes every run."""
    p, out = _preset(preset), Path(out)  # first: prepares the libraries
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    unet = _seeded(0, lambda: UNet2DConditionModel(**_unet_config(p, 4, p["text_hidden"])))
    vae = _seeded(1, lambda: _vae(p, 4))
    text_encoder = _seeded(2, lambda: _clip(tokenizer, p["text_hidden"], with_projection=False))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False)
    _save(pipe, out)
    inpaint = _seeded(3, lambda: UNet2DConditionModel(**_unet_config(p, 9, p["text_hidden"])))
    inpaint.save_pretrained(out / "unet_inpaint", safe_serialization=True)
    return _finish(out, "sd", preset)


def _sdxl_parts(p: dict[str, Any]) -> dict[str, Any]:
    """Text encoders of different widths (like CLIP-L 768 / OpenCLIP bigG 1280), VAE, scheduler."""
    from diffusers import EulerDiscreteScheduler

    tokenizer = build_tokenizer()
    hidden, hidden_2 = p["text_hidden"], p["text_hidden"] * 3 // 2
    return dict(
        tokenizer=tokenizer, tokenizer_2=tokenizer,
        text_encoder=_seeded(2, lambda: _clip(tokenizer, hidden, with_projection=False)),
        text_encoder_2=_seeded(4, lambda: _clip(tokenizer, hidden_2, with_projection=True)),
        vae=_seeded(1, lambda: _vae(p, 4, scaling_factor=0.13025)),
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                         steps_offset=1, timestep_spacing="leading"))


def build_tiny_sdxl(out: Path, preset: str = "tiny") -> Path:
    """A tiny SDXL base checkpoint in ``out``: two text encoders, ``add_time_ids`` conditioning."""
    p, out = _preset(preset), Path(out)  # first: prepares the libraries
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    out.mkdir(parents=True, exist_ok=True)
    parts = _sdxl_parts(p)
    hidden_2 = parts["text_encoder_2"].config.hidden_size
    unet = _seeded(0, lambda: UNet2DConditionModel(**_unet_config(
        p, 4, p["text_hidden"] + hidden_2, use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + hidden_2)))
    _save(StableDiffusionXLPipeline(unet=unet, add_watermarker=False, **parts), out)
    return _finish(out, "sdxl", preset)


def build_tiny_sdxl_refiner(out: Path, preset: str = "tiny") -> Path:
    """A tiny SDXL refiner (second text encoder only, aesthetic-score conditioning) matching the tiny base."""
    p, out = _preset(preset), Path(out)  # first: prepares the libraries
    from diffusers import StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel
    out.mkdir(parents=True, exist_ok=True)
    parts = _sdxl_parts(p)
    hidden_2 = parts["text_encoder_2"].config.hidden_size
    unet = _seeded(5, lambda: UNet2DConditionModel(**_unet_config(
        p, 4, hidden_2, use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=5 * 8 + hidden_2)))
    pipe = StableDiffusionXLImg2ImgPipeline(
        unet=unet, vae=parts["vae"], text_encoder=None, tokenizer=None, text_encoder_2=parts["text_encoder_2"],
        tokenizer_2=parts["tokenizer_2"], scheduler=parts["scheduler"], requires_aesthetics_score=True,
        add_watermarker=False)
    _save(pipe, out)
    return _finish(out, "sdxl-refiner", preset)


def _t5(tokenizer: Any, d_model: int) -> Any:
    from transformers import T5Config, T5EncoderModel

    config: Any = T5Config  # decoder_start_token_id goes through **kwargs (typed configs list the rest)
    return T5EncoderModel(config(
        vocab_size=len(tokenizer), d_model=d_model, d_kv=16, d_ff=d_model * 2, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=32, feed_forward_proj="gated-gelu",
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=0))


def build_tiny_sd3(out: Path, preset: str = "tiny") -> Path:
    """A tiny SD 3.5-style checkpoint in ``out``: MMDiT, 16 latent channels, CLIP-L + CLIP-G + T5."""
    p, out = _preset(preset), Path(out)  # first: prepares the libraries
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    out.mkdir(parents=True, exist_ok=True)
    clip_tok, t5_tok = build_tokenizer(), build_t5_tokenizer()
    hidden, hidden_g = p["text_hidden"], p["text_hidden"] * 3 // 2
    clip_l = _seeded(2, lambda: _clip(clip_tok, hidden, with_projection=True))
    with torch.no_grad():  # the SD 3 single-file layout stores no CLIP-L projection: diffusers assumes identity
        clip_l.text_projection.weight.copy_(torch.eye(hidden))
    clip_g = _seeded(4, lambda: _clip(clip_tok, hidden_g, with_projection=True))
    t5 = _seeded(6, lambda: _t5(t5_tok, 3 * hidden))
    inner = p["unet_channels"][0]
    transformer = _seeded(0, lambda: SD3Transformer2DModel(
        sample_size=p["sample"] // 8, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
        attention_head_dim=16, num_attention_heads=inner // 16, joint_attention_dim=3 * hidden,
        caption_projection_dim=inner, pooled_projection_dim=hidden + hidden_g, pos_embed_max_size=64,
        qk_norm="rms_norm"))
    vae = _seeded(1, lambda: _vae(p, 16, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
                                  use_post_quant_conv=False))
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=clip_l, tokenizer=clip_tok, text_encoder_2=clip_g, tokenizer_2=clip_tok,
        text_encoder_3=t5, tokenizer_3=t5_tok)
    _save(pipe, out)
    return _finish(out, "sd3", preset)


# The released FLUX.1 schedulers: [dev] shifts by resolution, [schnell] does not.
_FLUX_SCHEDULERS = {
    "dev": dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                max_image_seq_len=4096),
    "schnell": dict(shift=1.0, use_dynamic_shifting=False, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                    max_image_seq_len=4096),
}


def build_tiny_flux(out: Path, preset: str = "tiny", variant: str = "dev") -> Path:
    """A tiny FLUX.1 checkpoint in ``out``: [dev] (guidance embedding) or [schnell] (none, fixed shift)."""
    p, out = _preset(preset), Path(out)  # first: prepares the libraries
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    out.mkdir(parents=True, exist_ok=True)
    clip_tok, t5_tok = build_tokenizer(), build_t5_tokenizer()
    hidden = p["text_hidden"]
    clip = _seeded(2, lambda: _clip(clip_tok, hidden, with_projection=False))
    t5 = _seeded(6, lambda: _t5(t5_tok, 3 * hidden))
    inner = p["unet_channels"][0]
    transformer = _seeded(0, lambda: FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=p["flux_blocks"][0], num_single_layers=p["flux_blocks"][1],
        attention_head_dim=16, num_attention_heads=inner // 16, joint_attention_dim=3 * hidden,
        pooled_projection_dim=hidden,
        guidance_embeds=variant == "dev", axes_dims_rope=(4, 6, 6)))
    vae = _seeded(1, lambda: _vae(p, 16, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                                  use_post_quant_conv=False))
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**_FLUX_SCHEDULERS[variant]), vae=vae, text_encoder=clip,
        tokenizer=clip_tok, text_encoder_2=t5, tokenizer_2=t5_tok, transformer=transformer)
    _save(pipe, out)
    return _finish(out, "flux" if variant == "dev" else "flux-schnell", preset)


def build_tiny_flux_schnell(out: Path, preset: str = "tiny") -> Path:
    return build_tiny_flux(out, preset, variant="schnell")


BUILDERS = {"sd": build_tiny_sd, "sdxl": build_tiny_sdxl, "sd3": build_tiny_sd3, "flux": build_tiny_flux,
            "flux-schnell": build_tiny_flux_schnell}


def build_tiny(family: str, out: Path, preset: str = "tiny") -> Path:
    """The tiny checkpoint of ``family`` ("sd", "sdxl", "sd3", "flux" or "flux-schnell") in ``out``."""
    if family not in BUILDERS:
        raise ValueError(f"unknown family {family!r}; choose one of {sorted(BUILDERS)}")
    return BUILDERS[family](out, preset=preset)


def main() -> None:  # pragma: no cover - convenience entry point
    import sys

    family = sys.argv[2] if len(sys.argv) > 2 else "sd"
    print(build_tiny(family, Path(sys.argv[1] if len(sys.argv) > 1 else f".models/tiny-{family}")))


if __name__ == "__main__":  # pragma: no cover
    main()
