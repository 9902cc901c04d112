"""Per-image caches in front of the model: projected image features and image-prefix KV.

Both are keyed by the image's content hash. ``CachedModel.features`` runs the vision
encoder only for images not seen before (one batch for all misses);
``CachedModel.prefill`` runs whole prompts for images without a cached prefix (and
keeps their prefix) and only the prompt tails for the others.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

from services.visionlanguage import metrics as m
from services.visionlanguage.batch import DecodeBatch, ImageFeatures, ImagePrefix, ModelRunner, PrefillItem, PromptIds
from services.visionlanguage.types import ImageInput

V = TypeVar("V")


class LRU(Generic[V]):
    """A bounded least-recently-used map keyed by image content hash (capacity 0 = off)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._d: collections.OrderedDict[str, V] = collections.OrderedDict()

    def get(self, key: str) -> V | None:
        value = self._d.get(key)
        if value is not None:
            self._d.move_to_end(key)
        return value

    def put(self, key: str, value: V) -> None:
        if self.capacity <= 0:
            return
        self._d[key] = value
        self._d.move_to_end(key)
        while len(self._d) > self.capacity:
            self._d.popitem(last=False)


class FeatureCache(LRU[ImageFeatures]):
    """Projected image features; an entry without attention maps does not serve AttentionMap."""

    def lookup(self, key: str, need_attention: bool = False) -> ImageFeatures | None:
        f = self.get(key)
        return None if f is None or (need_attention and f.slot_to_patch is None) else f


class PrefixCache(LRU[ImagePrefix]):
    """Image-prefix KV caches ('<s><image>[slots]</image>')."""


@dataclass
class PrefillRow:
    """One prompt to prefill: its image (by content hash), ids and image features."""

    digest: str
    prompt: PromptIds
    features: ImageFeatures


@dataclass
class Prefilled:
    """A prefill's output. ``order[i]`` is the index (into the rows given) of batch row ``i``."""

    order: list[int]
    batch: DecodeBatch
    logits: torch.Tensor
    attention: torch.Tensor | None


class CachedModel:
    """The runner's image and prefill work, with the feature and prefix caches in front."""

    def __init__(self, runner: ModelRunner, feature_cache_size: int, prefix_cache_size: int) -> None:
        self.runner = runner
        self.features_cache = FeatureCache(feature_cache_size)
        self.prefix_cache = PrefixCache(prefix_cache_size)

    def features(self, images: list[ImageInput], with_attention: bool = False) -> list[ImageFeatures]:
        """Features for each image: from the cache, else one vision batch for the misses."""
        out: dict[str, ImageFeatures] = {}
        missing: list[ImageInput] = []
        for im in images:
            f = out.get(im.digest) or self.features_cache.lookup(im.digest, with_attention)
            if f is not None:
                out[im.digest] = f
                m.CACHE.labels("hit").inc()
            elif all(x.digest != im.digest for x in missing):
                missing.append(im)
                m.CACHE.labels("miss").inc()
        if missing:
            for im, f in zip(missing, self.runner.image_features(missing, with_attention=with_attention)):
                self.features_cache.put(im.digest, f)
                out[im.digest] = f
        return [out[im.digest] for im in images]

    def prefill(self, rows: list[PrefillRow], with_attention: bool = False) -> Prefilled:
        """Prefill ``rows``: misses first (whole prompts, leaving their prefix in the cache), then hits.

        Rows whose image prefix KV is cached run only their prompt tail on top of it; the
        others run whole prompts in one forward (a separate prefix forward would cost a
        full pass over the weights).
        """
        hits: list[tuple[int, PrefillItem]] = []
        misses: list[tuple[int, PrefillItem]] = []
        for i, row in enumerate(rows):
            prefix = self.prefix_cache.get(row.digest)
            m.PREFIX_CACHE.labels("hit" if prefix is not None else "miss").inc()
            (hits if prefix is not None else misses).append((i, PrefillItem(row.prompt, row.features, prefix)))
        parts = []
        if misses:
            items = [it for _, it in misses]
            batch, out = self.runner.prefill(items, with_attention=with_attention)
            if self.prefix_cache.capacity > 0:
                for (i, _), prefix in zip(misses, self.runner.prefixes_from(batch, items)):
                    self.prefix_cache.put(rows[i].digest, prefix)
            parts.append((batch, out))
        if hits:
            parts.append(self.runner.prefill([it for _, it in hits], with_attention=with_attention))
        batch, out = parts[0]
        logits, attention = out.logits, out.attention
        if len(parts) == 2:
            batch = self.runner.merge(batch, parts[1][0])
            logits = torch.cat([logits, parts[1][1].logits])
            attention = None  # only the single-sequence path (AttentionMap) records attention
        return Prefilled([i for i, _ in misses] + [i for i, _ in hits], batch, logits, attention)
