"""Embed and Similarity work, combined across requests into one model batch.

Concurrent requests (the MatchGraph's search and probes send many small ones) are
queued as ``EmbedWork``; the scheduler hands a run of them to ``run_embeds``, which
embeds all their images in one vision + decoder batch and all their texts in one
decoder batch, then gives each request its own rows. Every row is computed
independently of the others (images: same length, no padding; texts: right padding,
masked, with positions that ignore it), so a combined request gets the vectors it
would get alone, up to float rounding of the larger matrix products.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from common.errors import is_out_of_memory
from services.visionlanguage import metrics as m
from services.visionlanguage.caches import CachedModel, Pixels
from services.visionlanguage.events import Failed, Job, TaskDone, client_error
from services.visionlanguage.results import EmbedResult, SimilarityResult, Timing
from services.visionlanguage.types import ImageInput

log = logging.getLogger(__name__)


@dataclass
class EmbedWork:
    """One Embed or Similarity request waiting for its vectors."""

    job: Job
    images: tuple[ImageInput, ...]
    texts: tuple[str, ...]
    pixels: list[Pixels] = field(default_factory=list)  # each image's preprocessing on a worker

    @property
    def size(self) -> int:
        return len(self.images) + len(self.texts)


def embed_together(model: CachedModel, works: list[EmbedWork]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each work's (image vectors, text vectors), from one image batch and one text batch for all of them."""
    images = [im for w in works for im in w.images]
    pixels = [px for w in works for px in (w.pixels or [None] * len(w.images))]
    texts = [t for w in works for t in w.texts]
    img = model.runner.embed_images(model.features(images, pixels=pixels)) if images else torch.empty(0, 0)
    txt = model.runner.embed_texts(texts) if texts else torch.empty(0, 0)
    out = []
    i = j = 0
    for w in works:
        a, b = i + len(w.images), j + len(w.texts)
        out.append((img[i:a] if w.images else torch.empty(0, 0), txt[j:b] if w.texts else torch.empty(0, 0)))
        i, j = a, b
    return out


def run_embeds(model: CachedModel, works: list[EmbedWork], release: Callable[[], None] = lambda: None) -> None:
    """Embed ``works`` together and post each its vectors.

    When the combined batch fails (one request's text over the context, memory), each
    request runs alone, so an error reaches only the request that caused it. After running
    out of memory, ``release`` frees the cached memory (outside the handler, whose frames
    hold the failed batch's tensors) before the smaller runs.
    """
    m.EMBED_BATCH.observe(len(works))
    out_of_memory = False
    if len(works) > 1:
        try:
            results = embed_together(model, works)
        except Exception as exc:
            out_of_memory = is_out_of_memory(exc)
            log.info("a combined batch of %d embedding requests failed; running them one by one", len(works))
        else:
            for w, r in zip(works, results):
                w.job.post(TaskDone(r))
            return
    for w in works:
        if out_of_memory:
            m.OUT_OF_MEMORY.labels("embed").inc()
            release()
        try:
            w.job.post(TaskDone(embed_together(model, [w])[0]))
            out_of_memory = False
        except Exception as exc:
            out_of_memory = is_out_of_memory(exc)
            w.job.post(Failed(client_error(exc)))


def embed_result(images: torch.Tensor, texts: torch.Tensor, started: float) -> EmbedResult:
    """The Embed answer from a request's vectors (``started``: when the request arrived)."""
    dim = int((images if images.numel() else texts).shape[-1])
    total = time.perf_counter() - started
    m.E2E.labels("embed").observe(total)
    return EmbedResult(images.tolist(), texts.tolist(), dim, Timing(total_ms=total * 1000))


def similarity_result(images: torch.Tensor, texts: torch.Tensor, started: float) -> SimilarityResult:
    """The Similarity answer: the cosine of every (image, text) pair (vectors are L2-normalised)."""
    cos = (images @ texts.T).clamp(-1.0, 1.0)
    total = time.perf_counter() - started
    m.E2E.labels("similarity").observe(total)
    return SimilarityResult(cos.tolist(), Timing(total_ms=total * 1000))
