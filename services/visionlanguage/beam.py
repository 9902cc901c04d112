"""Beam search for one sequence through transformers' ``generate`` (not batched; cancellable per step)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from services.visionlanguage.batch import PrefillItem
from services.visionlanguage.types import Sampling


@torch.inference_mode()
def generate(text_model: Any, item: PrefillItem, sampling: Sampling, should_stop: Callable[[], bool],
             device: torch.device, dtype: torch.dtype, eos_id: int, pad_id: int) -> list[int]:
    """The generated token ids of ``item`` (prompt and image embeddings) under ``sampling``'s beams."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Cancel(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kw: Any) -> torch.Tensor:
            return torch.full((input_ids.shape[0],), bool(should_stop()), dtype=torch.bool, device=input_ids.device)

    p = item.prompt
    out = text_model.generate(
        input_ids=torch.tensor([p.ids], device=device),
        attention_mask=torch.ones(1, len(p.ids), device=device, dtype=torch.long),
        image_embeds=item.features.embeds.unsqueeze(0).to(device, dtype),
        image_embeds_position_mask=torch.tensor([p.image_mask], device=device, dtype=torch.bool),
        num_beams=sampling.num_beams, do_sample=False, max_new_tokens=sampling.max_new_tokens,
        eos_token_id=eos_id, pad_token_id=pad_id, use_cache=True,
        stopping_criteria=StoppingCriteriaList([_Cancel()]))
    gen: list[int] = out[0, len(p.ids):].tolist()
    while gen and gen[-1] == pad_id:
        gen.pop()
    return gen
