"""One generating sequence: its prompt, sampler, tokens, text, finish reason and timings.

``SequenceFactory`` turns a caption request into sequences (one per prompt; PHRASES
mode has several). ``next_tokens`` picks every sequence's next token from one model step
(greedy rows: the argmax taken on the device; sampling rows: from the sequence's own
generator, on a CPU copy of just their logits); ``Seq.on_token`` keeps the decoded text and
the stop-sequence check up to date and posts the request's events.
"""

from __future__ import annotations

import secrets
import time
from concurrent.futures import Future

import torch

from common.errors import InvalidArgument
from services.visionlanguage import metrics as m
from services.visionlanguage.batch import ModelRunner, PromptIds, StepOutput
from services.visionlanguage.events import Job, SequenceDone, Tokens
from services.visionlanguage.sampling import sample_next
from services.visionlanguage.stops import find_stop, visible_delta
from services.visionlanguage.types import CaptionRequest, ImageInput, Sampling

_PROMPT_TEXT_CACHE = 4096


class Seq:
    """One generating sequence: its prompt, sampler, tokens and text bookkeeping."""

    def __init__(self, job: Job, index: int, image: ImageInput, prompt: str, pids: PromptIds, sampling: Sampling,
                 seed: int, prompt_raw: str, with_attention: bool = False) -> None:
        self.job, self.index, self.image, self.prompt, self.pids = job, index, image, prompt, pids
        self.sampling, self.seed, self.prompt_raw = sampling, seed, prompt_raw
        self.generator = torch.Generator().manual_seed(seed)
        self.gen_ids: list[int] = []
        self.pending: int | None = None  # sampled, not yet fed to the model
        self.raw_gen = ""
        self.emitted = ""
        self.finish: str | None = None
        self.with_attention = with_attention
        self.attn_steps: list[torch.Tensor] = []
        self.started = 0.0
        self.first_token = 0.0
        self.last_token = 0.0
        self.pixels: Future[torch.Tensor] | None = None  # the image's preprocessing on a worker thread

    @property
    def cancelled(self) -> bool:
        return self.job.cancel.cancelled

    @property
    def next_token(self) -> int:
        """The sampled token the next decode step feeds in."""
        assert self.pending is not None, "a running sequence always has a sampled token"
        return self.pending

    def on_token(self, tok: int, runner: ModelRunner) -> bool:
        """Take this sequence's next token and update its text, finish state and events.

        Returns True when the sequence finished with this token.
        """
        self._clock()
        if tok == runner.eos_id:
            return self._finish("eos", [], runner)
        self.gen_ids.append(tok)
        self.pending = tok
        m.TOKENS.inc()
        if self.job.stream or self.sampling.stop:  # unary requests without stop strings decode text once, at the end
            self.update_text(runner)
            stop_at = find_stop(self.raw_gen, self.sampling.stop)
            if stop_at is not None:
                self.raw_gen = self.raw_gen[:stop_at]
                return self._finish("stop", [tok], runner)
        if len(self.gen_ids) >= self.sampling.max_new_tokens:
            return self._finish("length", [tok], runner)
        if self.job.stream:
            delta = visible_delta(self.raw_gen, self.sampling.stop, self.emitted)
            self.emitted += delta
            self.job.post(Tokens(delta, [tok]))
        return False

    def _clock(self) -> None:
        now = time.perf_counter()
        if self.first_token == 0.0:
            self.first_token = now
            m.TTFT.observe(now - self.job.accepted)
        else:
            m.ITL.observe(now - self.last_token)
        self.last_token = now

    def update_text(self, runner: ModelRunner) -> None:
        """Decode prompt tail + generated ids and keep the generated part (with tags)."""
        full = runner.decode_text(self.pids.ids[self.pids.tail_start:] + self.gen_ids)
        self.raw_gen = full[len(self.prompt_raw):] if full.startswith(self.prompt_raw) else full

    def _finish(self, reason: str, last_ids: list[int], runner: ModelRunner) -> bool:
        if reason != "stop":  # "stop" already holds the text cut at the stop string
            self.update_text(runner)
        self.finish = reason
        m.FINISHED.labels(reason).inc()
        if self.job.stream:
            self.job.post(Tokens("", last_ids))
        self.job.post(SequenceDone(self))
        return True

    def finish_beam(self, ids: list[int], runner: ModelRunner) -> None:
        """Take a finished beam search's best sequence as this sequence's output."""
        self.first_token = self.last_token = time.perf_counter()
        eos = ids.index(runner.eos_id) if runner.eos_id in ids else -1
        self.gen_ids = ids[:eos] if eos >= 0 else ids
        m.TOKENS.inc(len(self.gen_ids))
        self.update_text(runner)
        stop_at = find_stop(self.raw_gen, self.sampling.stop)
        if stop_at is not None:
            self.raw_gen = self.raw_gen[:stop_at]
        reason = "stop" if stop_at is not None else ("eos" if eos >= 0 else "length")
        self.finish = reason
        m.FINISHED.labels(reason).inc()
        self.job.post(SequenceDone(self))


def next_tokens(seqs: list[Seq], out: StepOutput) -> list[int]:
    """Each sequence's next token from one step's output (row i belongs to ``seqs[i]``)."""
    sampled = [i for i, s in enumerate(seqs) if not s.sampling.greedy]
    greedy = out.greedy() if len(sampled) < len(seqs) else []
    rows = dict(zip(sampled, out.rows_on_cpu(sampled))) if sampled else {}
    return [sample_next(rows[i], s.sampling, s.generator) if i in rows else greedy[i] for i, s in enumerate(seqs)]


class SequenceFactory:
    """Builds a request's sequences, checking that each fits the model context."""

    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner
        self._prompt_raw_cache: dict[str, str] = {}

    def _prompt_raw(self, pids: PromptIds) -> str:
        """The decoded prompt tail (what generated text is appended to), cached by its ids."""
        tail = pids.ids[pids.tail_start:]
        key = ",".join(map(str, tail))
        raw = self._prompt_raw_cache.get(key)
        if raw is None:
            raw = self.runner.decode_text(tail)
            if len(self._prompt_raw_cache) < _PROMPT_TEXT_CACHE:
                self._prompt_raw_cache[key] = raw
        return raw

    def make(self, req: CaptionRequest, job: Job, with_attention: bool = False) -> list[Seq]:
        seed = req.sampling.seed if req.sampling.seed is not None else secrets.randbits(63)
        seqs = []
        limit = self.runner.max_context
        for i, prompt in enumerate(req.prompts):
            pids = self.runner.prompt_ids(prompt)
            total = len(pids.ids) + req.sampling.max_new_tokens
            if total > limit:
                raise InvalidArgument(
                    f"the prompt is {len(pids.ids)} tokens (with {len(pids.ids) - len(pids.ids[pids.tail_start:])} "
                    f"for the image); with max_new_tokens={req.sampling.max_new_tokens} that is {total}, over the "
                    f"model context of {limit}: shorten the prompt or lower max_new_tokens")
            seqs.append(Seq(job, i, req.image, prompt, pids, req.sampling, seed, self._prompt_raw(pids),
                            with_attention))
        return seqs
