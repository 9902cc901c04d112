"""What the engine and model execution hand each other: prompt ids, image features, KV batches.

A ``DecodeBatch`` is the running batch's state (KV cache, attention mask, next position
ids, one row per sequence). Joining and leaving it between decode steps is pure tensor
work, done here: ``merge`` stacks two batches, ``select`` keeps some rows, and
``prefixes_from`` cuts each row's image prefix out of a full prefill.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from services.core.modelinfo import ModelInfo
from services.visionlanguage.types import ImageInput, Sampling


@dataclass
class PromptIds:
    """Token ids of '<s><image>[64 slots]</image> prompt' and where the prompt text starts."""

    ids: list[int]
    image_mask: list[int]
    tail_start: int  # index of the first token after </image>


@dataclass
class ImageFeatures:
    """Projected image features (the 64 slot embeddings) and slot->patch attention."""

    embeds: torch.Tensor  # [64, D]
    slot_to_patch: torch.Tensor | None  # [64, patches] (rows sum to 1), when computed


@dataclass
class ImagePrefix:
    """KV cache of '<s><image>[64 slots]</image>' for one image: per layer [heads, 67, head_dim].

    Every prompt starts with this prefix and it depends on the image only, so it is
    computed once per image and reused (prefix caching): a prefill then runs only the
    few prompt tokens after it.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


@dataclass
class PrefillItem:
    prompt: PromptIds
    features: ImageFeatures
    prefix: ImagePrefix | None = None  # when set, only prompt.ids[tail_start:] are run


@dataclass
class DecodeBatch:
    """Running batch state: KV cache + mask + next positions, one row per sequence."""

    keys: list[torch.Tensor]  # per layer [B, H, L, d]
    values: list[torch.Tensor]
    mask: torch.Tensor  # [B, L] long, 1 = real position
    next_pos: torch.Tensor  # [B] long

    @property
    def size(self) -> int:
        return int(self.mask.shape[0])


@dataclass
class StepOutput:
    logits: torch.Tensor  # [B, V] float32, on the CPU (per-request generators are CPU generators)
    # [B, kv_len] mean self-attention of the newest query over all positions (layers+heads), when asked.
    attention: torch.Tensor | None = None


class ModelRunner(Protocol):
    """What the engine needs from model execution (tests may substitute a fake)."""

    model_id: str
    eos_id: int
    max_context: int

    def info(self) -> ModelInfo: ...
    def prompt_ids(self, prompt: str) -> PromptIds: ...
    def image_features(self, images: list[ImageInput], with_attention: bool = False) -> list[ImageFeatures]: ...
    def prefixes_from(self, batch: DecodeBatch, items: list[PrefillItem]) -> list[ImagePrefix]: ...
    def prefill(self, items: list[PrefillItem], with_attention: bool = False) -> tuple[DecodeBatch, StepOutput]: ...
    def decode(self, batch: DecodeBatch, tokens: list[int], with_attention: bool = False) -> StepOutput: ...
    def merge(self, a: DecodeBatch, b: DecodeBatch) -> DecodeBatch: ...
    def select(self, batch: DecodeBatch, rows: list[int]) -> DecodeBatch: ...
    def decode_text(self, ids: list[int]) -> str: ...
    def token_strings(self, ids: list[int]) -> list[str]: ...
    def tokenize(self, text: str) -> list[int]: ...
    def beam_search(self, item: PrefillItem, sampling: Sampling, should_stop: Callable[[], bool]) -> list[int]: ...
    def embed_images(self, feats: list[ImageFeatures]) -> torch.Tensor: ...
    def embed_texts(self, texts: list[str]) -> torch.Tensor: ...


def merge(a: DecodeBatch, b: DecodeBatch) -> DecodeBatch:
    """Stack two batches, left-padding the shorter cache (padding is masked out)."""
    la, lb = a.mask.shape[1], b.mask.shape[1]
    n = max(la, lb)

    def pad_kv(t: torch.Tensor, length: int) -> torch.Tensor:
        return nn.functional.pad(t, (0, 0, n - length, 0)) if length < n else t

    def pad_mask(m: torch.Tensor, length: int) -> torch.Tensor:
        return nn.functional.pad(m, (n - length, 0)) if length < n else m

    keys = [torch.cat([pad_kv(x, la), pad_kv(y, lb)]) for x, y in zip(a.keys, b.keys)]
    values = [torch.cat([pad_kv(x, la), pad_kv(y, lb)]) for x, y in zip(a.values, b.values)]
    return DecodeBatch(keys, values, torch.cat([pad_mask(a.mask, la), pad_mask(b.mask, lb)]),
                       torch.cat([a.next_pos, b.next_pos]))


def select(batch: DecodeBatch, rows: list[int]) -> DecodeBatch:
    """Keep ``rows`` and drop columns that are padding in every kept row."""
    idx = torch.tensor(rows, device=batch.mask.device)
    mask = batch.mask.index_select(0, idx)
    real = mask.sum(0) > 0
    first = int(torch.nonzero(real)[0].item()) if bool(real.any()) else mask.shape[1]
    keys = [k.index_select(0, idx)[:, :, first:] for k in batch.keys]
    values = [v.index_select(0, idx)[:, :, first:] for v in batch.values]
    return DecodeBatch(keys, values, mask[:, first:], batch.next_pos.index_select(0, idx))


def prefixes_from(batch: DecodeBatch, items: list[PrefillItem]) -> list[ImagePrefix]:
    """The image-prefix KV of each row of a batch that a full prefill just built from whole prompts.

    Causal attention makes the prefix positions' keys and values independent of the
    prompt after them, so they can be cut out of the full prefill and reused.
    """
    n = batch.mask.shape[1]
    out = []
    for row, it in enumerate(items):
        pad = n - len(it.prompt.ids)  # left padding of this row
        end = pad + it.prompt.tail_start
        out.append(ImagePrefix([k[row, :, pad:end].clone() for k in batch.keys],
                               [v[row, :, pad:end].clone() for v in batch.values]))
    return out
