"""What the engine and model execution hand each other: prompt ids, image features, KV batches.

A ``DecodeBatch`` is the running batch's state (KV cache, attention mask, next position
ids, one row per sequence). Joining and leaving it between decode steps is pure tensor
work, done here: ``merge`` stacks two batches, ``select`` keeps some rows, and
``prefixes_from`` cuts each row's image prefix out of a full prefill.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

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
    """Running batch state: KV cache + mask + next positions, one row per sequence.

    Each layer's keys and values are a buffer ``[B, H, capacity, d]`` whose first ``length``
    columns hold the cache; rows are left padded so that they all end at column ``length``,
    and ``mask`` (``[B, capacity]``) marks the real positions. A static cache keeps free
    columns after ``length`` that decode steps write in place (``cache`` is the runner's
    cache object over the buffers, reused step after step); a dynamic one has none and grows
    by concatenation.
    """

    keys: list[torch.Tensor]  # per layer [B, H, capacity, d]
    values: list[torch.Tensor]
    mask: torch.Tensor  # [B, capacity] long, 1 = real position
    next_pos: torch.Tensor  # [B] long
    length: int = -1  # columns in use; -1 = all of them
    cache: Any = None

    def __post_init__(self) -> None:
        if self.length < 0:
            self.length = int(self.mask.shape[1])

    @property
    def size(self) -> int:
        return int(self.mask.shape[0])

    @property
    def capacity(self) -> int:
        return int(self.mask.shape[1])


@dataclass
class StepOutput:
    """One model step's last-position logits, left where the model computed them (the device).

    Greedy rows need only the argmax: ``greedy()`` takes it on the device and copies the ids
    (one small copy for the batch). Sampling rows need their logits on the CPU (each request
    samples from its own CPU generator): ``rows_on_cpu`` copies just those rows, once.
    """

    logits: torch.Tensor  # [B, V]
    # [B, kv_len] mean self-attention of the newest query over all positions (layers+heads), when asked.
    attention: torch.Tensor | None = None
    _greedy: list[int] | None = field(default=None, repr=False)

    def greedy(self) -> list[int]:
        if self._greedy is None:
            self._greedy = [int(t) for t in self.logits.argmax(-1).tolist()]
        return self._greedy

    def rows_on_cpu(self, rows: list[int]) -> torch.Tensor:
        """float32 CPU logits of ``rows`` (in that order)."""
        if not rows:
            return torch.empty(0, self.logits.shape[-1])
        picked = self.logits if rows == list(range(self.logits.shape[0])) else self.logits[rows]
        return picked.float().cpu()


def concat_outputs(a: StepOutput, b: StepOutput) -> StepOutput:
    """The rows of ``a`` then ``b`` (attention is only recorded for single-sequence steps)."""
    return StepOutput(torch.cat([a.logits, b.logits]))


class ModelRunner(Protocol):
    """What the engine needs from model execution (tests may substitute a fake)."""

    model_id: str
    eos_id: int
    max_context: int

    def info(self) -> ModelInfo: ...
    def prompt_ids(self, prompt: str) -> PromptIds: ...
    def preprocess(self, images: list[ImageInput]) -> torch.Tensor: ...
    def image_features(self, images: list[ImageInput], with_attention: bool = False,
                       pixel_values: torch.Tensor | None = None) -> list[ImageFeatures]: ...
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
    def kv_bytes_per_position(self) -> int: ...
    def free_memory(self) -> int: ...


def _place(t: torch.Tensor, length: int, end: int, capacity: int, rows: int, offset: int,
           out: torch.Tensor | None) -> torch.Tensor:
    """Copy columns [0, length) of ``t`` into columns [end - length, end) of rows [offset, offset+B) of ``out``."""
    if out is None:
        out = t.new_zeros((rows, *t.shape[1:-2], capacity, t.shape[-1]) if t.dim() == 4 else (rows, capacity))
    col = -2 if t.dim() == 4 else -1
    out.narrow(0, offset, t.shape[0]).narrow(col, end - length, length).copy_(t.narrow(col, 0, length))
    return out


def merge(a: DecodeBatch, b: DecodeBatch, capacity: int | None = None) -> DecodeBatch:
    """Stack two batches, left-padding the shorter cache (padding is masked out).

    The result keeps the larger free room of the two (none for dynamic caches) unless
    ``capacity`` says how many columns to allocate.
    """
    n = max(a.length, b.length)
    cap = capacity or n + max(a.capacity - a.length, b.capacity - b.length)
    rows = a.size + b.size

    def stack(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = _place(x, a.length, n, cap, rows, 0, None)
        return _place(y, b.length, n, cap, rows, a.size, out)

    return DecodeBatch([stack(x, y) for x, y in zip(a.keys, b.keys)], [stack(x, y) for x, y in zip(a.values, b.values)],
                       stack(a.mask, b.mask), torch.cat([a.next_pos, b.next_pos]), n)


def with_capacity(batch: DecodeBatch, capacity: int) -> DecodeBatch:
    """The same batch in buffers of ``capacity`` columns (the cache grows by blocks, not by steps)."""
    n, rows = batch.length, batch.size
    return DecodeBatch([_place(k, n, n, capacity, rows, 0, None) for k in batch.keys],
                       [_place(v, n, n, capacity, rows, 0, None) for v in batch.values],
                       _place(batch.mask, n, n, capacity, rows, 0, None), batch.next_pos, n)


def select(batch: DecodeBatch, rows: list[int]) -> DecodeBatch:
    """Keep ``rows`` and drop columns that are padding in every kept row."""
    idx = torch.tensor(rows, device=batch.mask.device)
    mask = batch.mask.index_select(0, idx)
    real = mask[:, :batch.length].sum(0) > 0
    first = int(torch.nonzero(real)[0].item()) if bool(real.any()) else batch.length
    keys = [k[:, :, first:].index_select(0, idx) for k in batch.keys]
    values = [v[:, :, first:].index_select(0, idx) for v in batch.values]
    return DecodeBatch(keys, values, mask[:, first:], batch.next_pos.index_select(0, idx), batch.length - first)


def prefixes_from(batch: DecodeBatch, items: list[PrefillItem]) -> list[ImagePrefix]:
    """The image-prefix KV of each row of a batch that a full prefill just built from whole prompts.

    Causal attention makes the prefix positions' keys and values independent of the
    prompt after them, so they can be cut out of the full prefill and reused.
    """
    n = batch.length
    out = []
    for row, it in enumerate(items):
        pad = n - len(it.prompt.ids)  # left padding of this row
        end = pad + it.prompt.tail_start
        out.append(ImagePrefix([k[row, :, pad:end].clone() for k in batch.keys],
                               [v[row, :, pad:end].clone() for v in batch.values]))
    return out
