"""Unbatched generation, run as exclusive tasks between decode steps: attention maps and beam search."""

from __future__ import annotations

import time
from collections.abc import Callable

from services.visionlanguage.attention import step_attention
from services.visionlanguage.batch import PrefillItem
from services.visionlanguage.caches import CachedModel, PrefillRow
from services.visionlanguage.sequence import Seq, next_tokens


def generate_alone(cached: CachedModel, s: Seq, on_token: Callable[[Seq, int], None]) -> None:
    """Generate one sequence alone, recording attention when asked (AttentionMap: eager attention)."""
    s.started = time.perf_counter()
    runner = cached.runner
    feats = cached.features([s.image], with_attention=s.with_attention, pixels=[s.pixels])
    pre = cached.prefill([PrefillRow(s.image.digest, s.pids, feats[0])], with_attention=s.with_attention)
    batch, out = pre.batch, pre.out
    while True:
        if s.with_attention and out.attention is not None:
            s.attn_steps.append(step_attention(out.attention[0], s))
        on_token(s, next_tokens([s], out)[0])
        if s.finish is not None:
            return
        if s.cancelled:
            raise s.job.cancel.error("generation")
        out = runner.decode(batch, [s.next_token], with_attention=s.with_attention)


def beam_search(cached: CachedModel, s: Seq) -> None:
    """Beam search through transformers' generate (one sequence, not batched)."""
    s.started = time.perf_counter()
    feats = cached.features([s.image], pixels=[s.pixels])
    ids = cached.runner.beam_search(PrefillItem(s.pids, feats[0]), s.sampling, lambda: s.cancelled)
    if s.cancelled:
        raise s.job.cancel.error("generation")
    s.finish_beam(ids, cached.runner)
