"""A caption request's result, assembled from its finished sequences.

The raw text of each sequence (prompt tail + generated text, with Kosmos-2's tags) is
parsed into clean text and grounded entities; PHRASES mode joins its sequences with
newlines and shifts each entity's span by the text before it.
"""

from __future__ import annotations

import time

from services.visionlanguage import grounding as g
from services.visionlanguage import metrics as m
from services.visionlanguage.results import CaptionEvent, CaptionResult, Timing
from services.visionlanguage.sequence import Seq
from services.visionlanguage.stops import clean_completion
from services.visionlanguage.types import CaptionRequest


def caption_result(req: CaptionRequest, seqs: list[Seq]) -> CaptionResult:
    """The result of ``req`` from its finished sequences (in prompt order)."""
    texts, completions, raws, entities = [], [], [], []
    offset = 0
    for s in seqs:
        raw = s.prompt_raw + s.raw_gen
        clean, ents = g.extract_entities(raw)
        for e in ents:
            entities.append(g.GroundedEntity(e.phrase, e.start + offset, e.end + offset, e.boxes))
        texts.append(clean)
        completions.append(clean_completion(s.raw_gen))
        raws.append(raw)
        offset += len(clean) + 1
    first, last = seqs[0], max(seqs, key=lambda s: s.last_token)
    return CaptionResult(
        text="\n".join(texts), completion="\n".join(completions), raw_text="\n".join(raws), entities=entities,
        finish_reason=last.finish or "length", language=req.language, seed=first.seed, prompt=first.prompt,
        prompt_tokens=sum(len(s.pids.ids) for s in seqs), token_ids=[t for s in seqs for t in s.gen_ids],
        width=req.image.width, height=req.image.height, timing=_timing(seqs))


def _timing(seqs: list[Seq]) -> Timing:
    end = time.perf_counter()
    accepted = seqs[0].job.accepted
    started = min(s.started for s in seqs) or end
    m.E2E.labels("caption").observe(end - accepted)
    return Timing(queue_ms=(started - accepted) * 1000, inference_ms=(end - started) * 1000,
                  total_ms=(end - accepted) * 1000,
                  first_token_ms=((min(s.first_token for s in seqs) or end) - accepted) * 1000)


def final_event(req: CaptionRequest, seqs: list[Seq]) -> CaptionEvent:
    """The last event of a caption stream: the result, plus what was not streamed yet.

    A single sequence streamed its tokens and text as it went, so the event carries only
    the text still held back; several sequences (PHRASES) stream nothing before it.
    """
    result = caption_result(req, seqs)
    if len(seqs) == 1:
        return CaptionEvent(delta=result.completion[len(seqs[0].emitted):], token_ids=[], final=result)
    return CaptionEvent(delta=result.completion, token_ids=[t for s in seqs for t in s.gen_ids], final=result)
