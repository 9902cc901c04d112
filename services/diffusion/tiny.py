"""Build a tiny, randomly initialised Stable Diffusion checkpoint offline.

No weights can be downloaded here, so tests, the demo and the benchmarks run on a
*real* ``StableDiffusionPipeline`` (UNet2DConditionModel, AutoencoderKL with four
blocks so the VAE scale factor is 8 like real SD, CLIPTextModel, CLIPTokenizer) whose
weights are seeded noise. It is saved in the ordinary diffusers folder layout and the
server loads it back with ``from_pretrained`` exactly like a real checkpoint, plus a
separate 9-channel inpainting UNet in ``unet_inpaint/`` (real inpaint checkpoints have
such a UNet; it cannot share weights with the 4-channel one).

Determinism matters (the lead's ``models build-tiny`` must write the same bytes every
run): every module is created right after ``torch.manual_seed``, the tokenizer comes
from a hand-written byte-level vocab and merge list (training one is not reproducible
across processes), and everything is saved as safetensors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Words that get whole-word BPE merges, so prompts in tests tokenize to a few ids.
_WORDS = (
    "a", "an", "the", "of", "in", "on", "with", "and", "photo", "painting", "style", "cat", "dog",
    "red", "blue", "green", "sky", "snow", "snowman", "man", "woman", "tree", "house", "sea", "sun",
)

PRESETS: dict[str, dict[str, Any]] = {
    # 64x64 images, ~0.1 s for 4 steps on 2 CPU cores.
    "tiny": {"unet_channels": (32, 64), "vae_channels": (16, 16, 32, 32), "text_hidden": 32, "sample": 64},
    # A little wider, for benchmarks that want the UNet to dominate the cost.
    "bench": {"unet_channels": (64, 128), "vae_channels": (32, 32, 64, 64), "text_hidden": 64, "sample": 64},
}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode mapping."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def build_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP-style byte-level BPE: 256 bytes, 256 end-of-word bytes, merges, specials."""
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars]
    merges: list[tuple[str, str]] = []
    seen = set(tokens)
    for word in _WORDS:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:  # merge left to right: ((c a) t</w>)
            pair = (parts[0], parts[1])
            merged = pair[0] + pair[1]
            if pair not in merges:
                merges.append(pair)
            if merged not in seen:
                tokens.append(merged)
                seen.add(merged)
            parts = [merged] + parts[2:]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def build_tokenizer() -> Any:
    from transformers import CLIPTokenizer

    vocab, merges = build_vocab_and_merges()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def _unet_config(p: dict[str, Any], in_channels: int) -> dict[str, Any]:
    ch = p["unet_channels"]
    return dict(
        sample_size=p["sample"] // 8,
        in_channels=in_channels,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=ch,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=p["text_hidden"],
        attention_head_dim=8,
        norm_num_groups=min(32, ch[0]),
    )


def build_tiny_sd(out: Path, preset: str = "tiny") -> Path:
    """Write a tiny SD checkpoint (diffusers layout + ``unet_inpaint/``) to ``out``.

    Same bytes on every run. Returns ``out``.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    p = PRESETS[preset]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**_unet_config(p, 4))
    torch.manual_seed(1)
    vc = p["vae_channels"]
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(vc),
        up_block_types=("UpDecoderBlock2D",) * len(vc),
        block_out_channels=vc,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=min(16, vc[0]),
        sample_size=p["sample"],
    )
    torch.manual_seed(2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=p["text_hidden"],
            intermediate_size=p["text_hidden"] * 2,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=p["text_hidden"],
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    torch.manual_seed(3)
    UNet2DConditionModel(**_unet_config(p, 9)).save_pretrained(out / "unet_inpaint", safe_serialization=True)
    (out / "unfragile_tiny.json").write_text(json.dumps({"preset": preset, "builder": __name__}, indent=2) + "\n")
    return out


def main() -> None:  # pragma: no cover - convenience entry point
    import sys

    print(build_tiny_sd(Path(sys.argv[1] if len(sys.argv) > 1 else ".models/tiny-sd")))


if __name__ == "__main__":  # pragma: no cover
    main()
