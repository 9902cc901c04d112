"""Per-image caches in front of the model: projected image features and image-prefix KV.

Both are keyed by the image's content hash. ``CachedModel.pixels`` starts an image's
preprocessing (resize, normalise) on a worker thread as its request arrives, unless its
features are cached; ``CachedModel.features`` runs the vision encoder only for images not
seen before (one batch for all misses, on the preprocessed pixels);
``CachedModel.prefill`` runs whole prompts for images without a cached prefix (and
keeps their prefix) and only the prompt tails for the others.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

from services.visionlanguage import metrics as m
from services.visionlanguage.batch import (
    DecodeBatch,
    ImageFeatures,
    ImagePrefix,
    ModelRunner,
    PrefillItem,
    PromptIds,
    StepOutput,
    concat_outputs,
)
from services.visionlanguage.types import ImageInput

Pixels = Future[torch.Tensor] | None  # an image's preprocessing, running on a worker (None: not started)

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

    def holds(self, key: str, need_attention: bool = False) -> bool:
        """Whether ``lookup`` would hit; from any thread (one dict read, the LRU order is left alone)."""
        f = self._d.get(key)
        return f is not None and (f.slot_to_patch is not None or not need_attention)


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
    out: StepOutput


class CachedModel:
    """The runner's image and prefill work, with the feature and prefix caches in front."""

    def __init__(self, runner: ModelRunner, feature_cache_size: int, prefix_cache_size: int,
                 preprocess_workers: int = 0) -> None:
        self.runner = runner
        self.features_cache = FeatureCache(feature_cache_size)
        self.prefix_cache = PrefixCache(prefix_cache_size)
        self._pool = ThreadPoolExecutor(preprocess_workers, thread_name_prefix="vl-preprocess") \
            if preprocess_workers > 0 else None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def pixels(self, image: ImageInput, with_attention: bool = False) -> Pixels:
        """Start preprocessing ``image`` on a worker (any thread); None when its features are cached or
        there are no workers (then ``features`` preprocesses it on the calling thread)."""
        if self._pool is None or self.features_cache.holds(image.digest, with_attention):
            return None

        def run() -> torch.Tensor:
            t = time.perf_counter()
            pixels = self.runner.preprocess([image])
            m.PREPROCESS_TIME.observe(time.perf_counter() - t)
            return pixels

        return self._pool.submit(run)

    def features(self, images: list[ImageInput], with_attention: bool = False,
                 pixels: Sequence[Pixels] = ()) -> list[ImageFeatures]:
        """Features for each image: from the cache, else one vision batch for the misses.

        ``pixels[i]``, when given, is image i's preprocessing already running on a worker;
        the misses without one are preprocessed here.
        """
        out: dict[str, ImageFeatures] = {}
        missing: list[ImageInput] = []
        ready: list[Pixels] = []
        for i, im in enumerate(images):
            f = out.get(im.digest) or self.features_cache.lookup(im.digest, with_attention)
            if f is not None:
                out[im.digest] = f
                m.CACHE.labels("hit").inc()
            elif all(x.digest != im.digest for x in missing):
                missing.append(im)
                ready.append(pixels[i] if i < len(pixels) else None)
                m.CACHE.labels("miss").inc()
        if missing:
            pv = torch.cat([fut.result() if fut is not None else self.runner.preprocess([im])
                            for im, fut in zip(missing, ready)])
            feats = self.runner.image_features(missing, with_attention=with_attention, pixel_values=pv)
            for im, f in zip(missing, feats):
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
        if len(parts) == 2:
            batch = self.runner.merge(batch, parts[1][0])
            out = concat_outputs(out, parts[1][1])  # only single-sequence steps (AttentionMap) record attention
        return Prefilled([i for i, _ in misses] + [i for i, _ in hits], batch, out)
