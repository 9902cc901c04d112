"""Build tiny, randomly initialised Kosmos-2 checkpoints offline (real architecture).

No weights can be downloaded here, so tests and benchmarks run on a real
``Kosmos2ForConditionalGeneration`` + ``Kosmos2Processor`` with small configs and a
tokenizer built in code from a hand-written Unigram vocabulary. Everything is seeded
and written with ``save_pretrained``, so the same call writes the same bytes, and the
server loads it back with ``from_pretrained`` exactly like a real checkpoint.

Presets:
- ``tiny``  (~0.3 M parameters): tests; loads in ~0.1 s.
- ``bench`` (~22 M parameters, most of it in the text decoder): benchmarks, large
  enough that model compute dominates gRPC overhead.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from services.core.loading import mark_test_model

# Sub-word pieces of the hand-written vocabulary. The leading "▁" marks a word start
# (SentencePiece convention). Non-Latin scripts are included so the `language` field
# can be tested end to end on real tokenisation, not on <unk>.
_WORDS = (
    "a an the of in on at to and with is are was it this that there by for from as "
    "image picture photo describe detail question answer what where who how many which "
    "man woman person people child dog cat bird horse car bus tree house sky water snow "
    "snowman fire table chair cup ball red blue green white black small large two three "
    "sitting standing next front behind near holding wearing looking street grass field "
    "en une un le la de des image décris une photo bild ein eine der die das von "
    "imagen una el describe esta"
).split()
_LATIN = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789éèêàçäöüßñ"
_PUNCT = ".,:;!?'\"-()/"
# Cyrillic, Greek, CJK, kana, Arabic, Devanagari: single characters and a few words.
_SCRIPTS = (
    "абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВГДЕЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯ"
    "αβγδεζηθικλμνξοπρστυφχψω"
    "图片中有一个人猫狗在的是这张描述详细问题答案雪火天空房子树"
    "あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわをん"
    "画像写真猫犬"
    "ابتثجحخدذرزسشصضطظعغفقكلمنهوي"
    "कखगघचछजझटठडढणतथदधनपफबभमयरलवशसह"
)
_SCRIPT_WORDS = ("изображение", "фото", "кошка", "собака", "опишите", "图片", "描述", "这张", "画像", "写真",
                 "صورة", "चित्र")

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        text=dict(embed_dim=64, layers=2, ffn_dim=128, attention_heads=4, max_position_embeddings=512,
                  init_std=0.4),
        vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
    ),
    "bench": dict(
        text=dict(embed_dim=512, layers=6, ffn_dim=2048, attention_heads=8, max_position_embeddings=512,
                  init_std=0.1),
        vision=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=3, num_attention_heads=4),
    ),
}
# init_std is raised above the usual 0.02 so the random decoder's next-token distribution
# is peaked and depends on the image and prompt: tests then compare real, varied token
# streams instead of near-uniform noise.
SEED = 20231106  # fixed: same bytes every build


def build_vocab() -> list[tuple[str, float]]:
    """The Unigram vocabulary: ids 0-4 are XLM-R's specials, then pieces by a fixed order."""
    pieces: list[str] = []
    seen: set[str] = set()

    def add(p: str) -> None:
        if p and p not in seen:
            seen.add(p)
            pieces.append(p)

    add("▁")
    for w in (*_WORDS, *_SCRIPT_WORDS):
        add("▁" + w)
    for ch in _LATIN + _PUNCT + _SCRIPTS:
        add(ch)
        add("▁" + ch)
    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("<mask>", 0.0)]
    # Longer pieces get better (less negative) scores so whole words win over letters.
    for p in pieces:
        vocab.append((p, round(-10.0 + 1.5 * math.log(len(p) + 1), 4)))
    return vocab


def build_processor(vocab: list[tuple[str, float]] | None = None) -> Any:
    """Kosmos2Processor = square-resizing CLIP image processor + in-code XLM-R tokenizer.

    ``vocab`` replaces the hand-written vocabulary (e.g. one padded to a real checkpoint's size).
    """
    from transformers import CLIPImageProcessorPil, Kosmos2Processor, XLMRobertaTokenizer

    # XLMRobertaTokenizer is the fast (tokenizers) class in transformers 5.
    tokenizer = XLMRobertaTokenizer(vocab=build_vocab() if vocab is None else vocab)
    # Real Kosmos-2 resizes to a square 224x224 (no crop): boxes then cover the whole image.
    image_processor = CLIPImageProcessorPil(
        size={"height": 224, "width": 224}, do_center_crop=False, crop_size={"height": 224, "width": 224}
    )
    return Kosmos2Processor(image_processor, tokenizer)


def build_tiny_kosmos2(out: Path, preset: str = "tiny") -> Path:
    """Write a randomly initialised Kosmos-2 (model + processor) to ``out``; returns ``out``."""
    import torch
    from transformers import Kosmos2Config, Kosmos2ForConditionalGeneration
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no shard-writing progress bar on `make run`

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    out = Path(out)
    processor = build_processor()
    cfg = PRESETS[preset]
    vocab_size = len(processor.tokenizer)
    config = Kosmos2Config(
        text_config=dict(vocab_size=vocab_size, dropout=0.0, attention_dropout=0.0, **cfg["text"]),
        vision_config=dict(image_size=224, patch_size=14, **cfg["vision"]),
        latent_query_num=64,
    )
    fork = torch.random.fork_rng()
    with fork:
        torch.manual_seed(SEED)
        model = Kosmos2ForConditionalGeneration(config).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    mark_test_model(out, preset, __name__)  # ModelInfo then reports a random-weight test model
    return out
