"""Build tiny, randomly initialised CLIP judges offline (the real ``CLIPModel`` architecture).

Tests and the demo need a judge model and no weights can be downloaded here: this writes
a real ``CLIPModel`` (text and vision towers with projections) with a small config,
seeded, plus a ``CLIPProcessor`` whose byte-level BPE tokenizer is built in code from a
hand-written vocabulary and merges (training one is not reproducible across processes)
and whose image processor is the PIL one (no torchvision needed). Saved with
``save_pretrained`` in safetensors, so the judge loads it back through the same
``from_pretrained`` path as a real checkpoint; the folder is marked as a random-weight
test model, so its scores never count.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.core import clip_bpe
from services.core.loading import mark_test_model

# Words that get whole-word merges, so probe prompts and captions tokenize to a few ids.
_WORDS = (
    "a", "an", "the", "of", "in", "on", "at", "with", "and", "by", "image", "photo", "picture", "red", "blue",
    "green", "white", "black", "cat", "dog", "dogs", "apple", "table", "snowman", "field", "sunset", "beach",
    "city", "street", "night", "bowl", "soup", "spoon", "lighthouse", "coast", "sofa", "mountain", "lake", "trees",
    "man", "woman", "person", "rocket", "horse", "cup", "coffee", "sky", "water",
)
PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"hidden": 32, "layers": 2, "heads": 4, "patch": 32},  # ~0.2 M parameters, 224 px in 7x7 patches
    "bench": {"hidden": 128, "layers": 4, "heads": 4, "patch": 16},
}
# Fixed: same bytes every build. Of the seeds tried, this one's random towers give positive, varied cosines
# on the probe images, so tests see non-zero CLIPScores that differ per pair.
SEED = 1


def build_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's byte-level BPE: 256 bytes, 256 end-of-word bytes, whole-word merges, then the two specials."""
    return clip_bpe.vocab_and_merges(_WORDS)


def build_processor() -> Any:
    """CLIPProcessor: the in-code tokenizer (77-token context) + the PIL CLIP image processor at 224 px."""
    from transformers import CLIPImageProcessorPil, CLIPProcessor, CLIPTokenizer

    vocab, merges = build_vocab_and_merges()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)  # type: ignore[arg-type]
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def build_tiny_clip(out: Path, preset: str = "tiny") -> Path:
    """Write a randomly initialised CLIPModel + CLIPProcessor to ``out``; returns ``out``."""
    import torch
    from transformers import CLIPConfig, CLIPModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    p = PRESETS[preset]
    processor = build_processor()
    tok = processor.tokenizer
    common = dict(hidden_size=p["hidden"], intermediate_size=p["hidden"] * 2, num_hidden_layers=p["layers"],
                  num_attention_heads=p["heads"])
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tok), max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **common),
        vision_config=dict(image_size=224, patch_size=p["patch"], **common),
        projection_dim=p["hidden"])
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        model = CLIPModel(config).eval()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    mark_test_model(out, preset, __name__)  # the judge's identity then says: random-weight test model
    return out
