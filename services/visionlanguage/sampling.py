"""Next-token choice for one sequence: greedy, or temperature/top-k/top-p sampling."""

from __future__ import annotations

import torch

from services.visionlanguage.types import Sampling


def sample_next(logits: torch.Tensor, s: Sampling, generator: torch.Generator | None) -> int:
    """Pick the next token from one row of logits: greedy, or temperature/top-k/top-p sampling.

    Sampling draws from the request's own generator, exactly once per step, so the
    result does not depend on what else was in the batch.
    """
    if s.greedy:
        return int(torch.argmax(logits).item())
    x = logits.float() / s.temperature
    if s.top_k > 0 and s.top_k < x.numel():
        kth = torch.topk(x, s.top_k).values[-1]
        x = torch.where(x < kth, torch.full_like(x, float("-inf")), x)
    if s.top_p < 1.0:
        sorted_x, order = torch.sort(x, descending=True)
        probs = torch.softmax(sorted_x, dim=-1)
        cum = torch.cumsum(probs, dim=-1)
        remove = cum - probs > s.top_p  # keep the smallest prefix with mass >= top_p
        sorted_x = sorted_x.masked_fill(remove, float("-inf"))
        x = torch.full_like(x, float("-inf")).scatter(0, order, sorted_x)
    probs = torch.softmax(x, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator).item())
