"""Attention maps: which image patches each generated token looked at, and heatmaps of them.

The text decoder attends to the 64 image slots, which are not spatial; the image-to-text
projection's attention maps each slot onto the 16x16 patch grid. Chaining the two
(token -> slots -> patches) gives one weight per patch for every generated token.
"""

from __future__ import annotations

import math

import torch
from PIL import Image as PILImage

from services.visionlanguage.batch import ImageFeatures
from services.visionlanguage.results import AttentionMapResult, CaptionResult
from services.visionlanguage.sequence import Seq


def step_attention(attention: torch.Tensor, seq: Seq) -> torch.Tensor:
    """The newest query's attention over the sequence's own (unpadded) positions.

    ``attention`` is one batch row; the sequence's positions are the last ones of the row.
    """
    return attention[-len(seq.pids.ids) - len(seq.gen_ids):]


def patch_weights(seq: Seq, slot_to_patch: torch.Tensor) -> list[torch.Tensor]:
    """Per generated token, its attention over the image patches (sums to 1)."""
    slot_cols = torch.tensor([i for i, v in enumerate(seq.pids.image_mask) if v])
    maps = []
    for att in seq.attn_steps[:len(seq.gen_ids)]:
        # att covers all positions of the unpadded sequence; keep the 64 image slots and
        # renormalise, then chain with slot->patch.
        slots = att[slot_cols]
        slots = slots / slots.sum().clamp_min(1e-12)
        patch = slots @ slot_to_patch
        maps.append(patch / patch.sum().clamp_min(1e-12))
    return maps


def attention_result(seq: Seq, feats: ImageFeatures, pieces: list[str], caption: CaptionResult,
                     per_token_overlays: bool) -> AttentionMapResult:
    """The AttentionMap answer for a finished sequence generated with attention recorded.

    ``pieces`` are the token strings of ``seq.gen_ids``; the overlay shows the mean map.
    """
    assert feats.slot_to_patch is not None, "AttentionMap needs features computed with attention"
    grid = int(math.isqrt(feats.slot_to_patch.shape[1]))
    maps = patch_weights(seq, feats.slot_to_patch)
    tokens = [(tid, piece, [float(x) for x in patch.tolist()]) for tid, piece, patch in zip(seq.gen_ids, pieces, maps)]
    mean = torch.stack(maps).mean(0) if maps else torch.full((grid * grid,), 1.0 / (grid * grid))
    image = seq.image.image
    overlay = heatmap_overlay(image, mean.reshape(grid, grid))
    per_token = [heatmap_overlay(image, p.reshape(grid, grid)) for p in maps] if per_token_overlays else None
    return AttentionMapResult(caption, grid, tokens, overlay, per_token)


def heatmap_overlay(image: PILImage.Image, weights: torch.Tensor, alpha: float = 0.55) -> PILImage.Image:
    """Blend a red heatmap of a grid of weights over the original image (same size)."""
    w = weights.float()
    w = (w - w.min()) / (w.max() - w.min()).clamp_min(1e-12)
    grid = PILImage.fromarray((w.numpy() * 255).astype("uint8"), mode="L")
    grid = grid.resize(image.size, PILImage.Resampling.BILINEAR)
    red = PILImage.new("RGB", image.size, (255, 0, 0))
    mask = grid.point(lambda v: int(v * alpha))
    return PILImage.composite(red, image.convert("RGB"), mask)
