"""The scheduler between the API and the model: a bounded queue and continuous batching.

One scheduler thread owns the model. Each loop iteration it
1. runs exclusive work at the head of the queue (embeddings, beam search, attention
   maps: short, unbatched jobs that run between decode steps),
2. admits waiting sequences into free batch slots (up to ``max_batch_size``), waiting
   at most ``max_queue_delay_ms`` for company when the batch is empty (Triton's knobs),
   computes their image features once per image (cached by content hash), prefills
   them together and merges them into the running batch (vLLM/TGI-style: requests
   join and leave the running batch between steps),
3. runs one decode step for the whole batch and hands every sequence its token.

Each sequence samples from its own seeded generator with explicit position ids, so its
tokens do not depend on what else was batched with it. A cancelled or finished
sequence leaves the batch before the next step: its slot is free at once.

Unary ``caption`` runs the same code as ``stream_caption`` (minus the per-token events
and text decoding it does not need), so the streamed text equals the unary text.
"""

from __future__ import annotations

import collections
import logging
import math
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch
from PIL import Image as PILImage

from common.errors import (
    Internal,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
    UnfragileError,
)
from services.core.cancel import CancelToken
from services.core.modelinfo import ModelInfo
from services.visionlanguage import grounding as g
from services.visionlanguage import metrics as m
from services.visionlanguage.runner import (
    DecodeBatch,
    ImageFeatures,
    ImagePrefix,
    ModelRunner,
    PrefillItem,
    PromptIds,
    StepOutput,
    sample_next,
)
from services.visionlanguage.settings import EngineConfig
from services.visionlanguage.types import (
    AttentionMapRequest,
    AttentionMapResult,
    CaptionEvent,
    CaptionRequest,
    CaptionResult,
    EmbedRequest,
    EmbedResult,
    ImageInput,
    Sampling,
    SimilarityRequest,
    SimilarityResult,
    Timing,
    TokenizeRequest,
    TokenizeResult,
)

log = logging.getLogger(__name__)
_POLL_S = 0.5  # backstop for deadlines that pass without a gRPC callback
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

    def get(self, key: str, need_attention: bool = False) -> ImageFeatures | None:  # type: ignore[override]
        f = super().get(key)
        return None if f is None or (need_attention and f.slot_to_patch is None) else f


class PrefixCache(LRU[ImagePrefix]):
    """Image-prefix KV caches ('<s><image>[slots]</image>')."""


class Job:
    """A request's sequences and the channel its events travel back on."""

    def __init__(self, cancel: CancelToken, stream: bool = False) -> None:
        self.cancel = cancel
        self.stream = stream  # per-token events wanted (StreamCaption)
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.accepted = time.perf_counter()
        self.last_position = -1

    def post(self, kind: str, payload: Any = None) -> None:
        self.events.put((kind, payload))


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

    @property
    def cancelled(self) -> bool:
        return self.job.cancel.cancelled


@dataclass
class _Task:
    """Exclusive work run on the scheduler thread between decode steps."""

    job: Job
    fn: Callable[[], Any]


class Engine:
    """Schedules all model work of one VisionLanguage server."""

    def __init__(self, runner: ModelRunner, config: EngineConfig) -> None:
        self.runner = runner
        self.config = config
        self.cache = FeatureCache(config.feature_cache_size)
        self.prefix_cache = PrefixCache(config.prefix_cache_size)
        self._queue: collections.deque[Seq | _Task] = collections.deque()
        self._running: list[Seq] = []
        self._batch: DecodeBatch | None = None
        self._cond = threading.Condition()
        self._stop = False
        self._ewma_s = 0.5  # recent sequence duration, for retry hints
        self._thread = threading.Thread(target=self._loop, name="vl-scheduler", daemon=True)
        self._prompt_raw_cache: dict[str, str] = {}
        self._thread.start()

    # ---- lifecycle ---------------------------------------------------------------------------------
    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=30)

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {"running": len(self._running), "waiting": len(self._queue)}

    def info(self) -> ModelInfo:
        info = self.runner.info()
        info.details.update({"max_batch_size": str(self.config.max_batch_size),
                             "max_queue_delay_ms": str(self.config.max_queue_delay_ms),
                             "max_queue_size": str(self.config.max_queue_size),
                             "feature_cache_size": str(self.config.feature_cache_size),
                             "prefix_cache_size": str(self.config.prefix_cache_size)})
        return info

    # ---- submission --------------------------------------------------------------------------------
    def _enqueue(self, items: list[Seq | _Task], job: Job) -> None:
        with self._cond:
            if self._stop:
                raise Unavailable("the engine is shutting down; retry on another replica")
            if len(self._queue) + len(items) > self.config.max_queue_size:
                m.REJECTED.inc()
                ahead = len(self._queue) + len(self._running)
                retry = max(0.05, self._ewma_s * math.ceil(ahead / max(1, self.config.max_batch_size)))
                raise ResourceExhausted(
                    f"the queue is full ({len(self._queue)} waiting, limit {self.config.max_queue_size}); "
                    f"retry in about {retry:.2f}s", retry_after_s=retry)
            self._queue.extend(items)
            m.WAITING.set(len(self._queue))
            self._cond.notify_all()
        job.cancel.on_cancel(lambda: self._on_cancel(job))

    def _on_cancel(self, job: Job) -> None:
        """Wake the scheduler (to free the slot) and the waiting handler thread."""
        self._wake()
        job.post("cancelled")

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _prompt_raw(self, pids: PromptIds) -> str:
        tail = pids.ids[pids.tail_start:]
        key = ",".join(map(str, tail))
        raw = self._prompt_raw_cache.get(key)
        if raw is None:
            raw = self.runner.decode_text(tail)
            if len(self._prompt_raw_cache) < 4096:
                self._prompt_raw_cache[key] = raw
        return raw

    def _make_seqs(self, req: CaptionRequest, job: Job, with_attention: bool = False) -> list[Seq]:
        seed = req.sampling.seed if req.sampling.seed is not None else secrets.randbits(63)
        seqs = []
        for i, prompt in enumerate(req.prompts):
            pids = self.runner.prompt_ids(prompt)
            total = len(pids.ids) + req.sampling.max_new_tokens
            if total > self.runner.max_context:
                raise InvalidArgument(
                    f"the prompt is {len(pids.ids)} tokens (with {len(pids.ids) - len(pids.ids[pids.tail_start:])} "
                    f"for the image); with max_new_tokens={req.sampling.max_new_tokens} that is {total}, over the "
                    f"model context of {self.runner.max_context}: shorten the prompt or lower max_new_tokens")
            seqs.append(Seq(job, i, req.image, prompt, pids, req.sampling, seed, self._prompt_raw(pids),
                            with_attention))
        return seqs

    def stream_caption(self, req: CaptionRequest, cancel: CancelToken, stream: bool = True) -> Iterator[CaptionEvent]:
        """Queue position events, then text deltas, then one event with the final result.

        ``stream=False`` (unary Caption) skips per-token text work; the final result is the same.
        """
        job = Job(cancel, stream)
        seqs = self._make_seqs(req, job)
        items: list[Seq | _Task]
        if req.sampling.num_beams > 1:
            items = [_Task(job, lambda: self._beam_search(seqs[0]))]
        else:
            items = list(seqs)
        self._enqueue(items, job)
        single = len(seqs) == 1
        done: dict[int, Seq] = {}
        last_pos = 0  # position 0 (running) is only worth a chunk after a positive one
        try:
            while True:
                try:
                    # Long timeout: cancellation posts an event; idle wake-ups would steal the
                    # GIL from the scheduler thread between its many small torch calls.
                    kind, payload = job.events.get(timeout=_POLL_S)
                except queue.Empty:
                    kind, payload = "", None
                if kind == "cancelled" or cancel.cancelled:
                    raise cancel.error("generation")
                if kind == "queued":
                    if payload != last_pos:
                        last_pos = payload
                        yield CaptionEvent(queue_position=payload)
                elif kind == "tokens":
                    seq, delta, ids = payload
                    if single and (delta or ids):
                        yield CaptionEvent(delta=delta, token_ids=ids)
                elif kind == "done":
                    done[payload.index] = payload
                    if len(done) == len(seqs):
                        result = self._result(req, [done[i] for i in range(len(seqs))])
                        pending = result.completion[len(seqs[0].emitted):] if single else result.completion
                        unsent = [] if single else [t for s in seqs for t in s.gen_ids]
                        yield CaptionEvent(delta=pending, token_ids=unsent, final=result)
                        return
                elif kind == "error":
                    raise payload
        finally:
            if len(done) < len(seqs):
                cancel.cancel("the caller stopped reading the stream")

    def caption(self, req: CaptionRequest, cancel: CancelToken) -> CaptionResult:
        final = None
        for ev in self.stream_caption(req, cancel, stream=False):
            final = ev.final or final
        assert final is not None
        return final

    def _result(self, req: CaptionRequest, seqs: list[Seq]) -> CaptionResult:
        texts, completions, raws, entities = [], [], [], []
        offset = 0
        for s in seqs:
            raw = s.prompt_raw + s.raw_gen
            clean, ents = g.extract_entities(raw)
            for e in ents:
                entities.append(g.GroundedEntity(e.phrase, e.start + offset, e.end + offset, e.boxes))
            texts.append(clean)
            completions.append(_clean_completion(s.raw_gen))
            raws.append(raw)
            offset += len(clean) + 1
        first, last = seqs[0], max(seqs, key=lambda s: s.last_token)
        end = time.perf_counter()
        acc = first.job.accepted
        started = min(s.started for s in seqs) or end
        timing = Timing(queue_ms=(started - acc) * 1000, inference_ms=(end - started) * 1000,
                        total_ms=(end - acc) * 1000,
                        first_token_ms=((min(s.first_token for s in seqs) or end) - acc) * 1000)
        m.E2E.labels("caption").observe(end - acc)
        return CaptionResult(
            text="\n".join(texts), completion="\n".join(completions), raw_text="\n".join(raws), entities=entities,
            finish_reason=last.finish or "length", language=req.language, seed=first.seed, prompt=first.prompt,
            prompt_tokens=sum(len(s.pids.ids) for s in seqs), token_ids=[t for s in seqs for t in s.gen_ids],
            width=req.image.width, height=req.image.height, timing=timing)

    # ---- other work (exclusive tasks) -----------------------------------------------------------------
    def _run_task(self, cancel: CancelToken, fn: Callable[[], Any], job: Job | None = None) -> Any:
        """Run ``fn`` on the scheduler thread (between decode steps) and wait for its result."""
        job = job or Job(cancel)
        self._enqueue([_Task(job, fn)], job)
        while True:
            try:
                kind, payload = job.events.get(timeout=_POLL_S)
            except queue.Empty:
                kind, payload = "", None
            if kind == "cancelled" or cancel.cancelled:
                raise cancel.error("generation")
            if kind == "result":
                return payload
            if kind == "error":
                raise payload

    def _features(self, images: list[ImageInput], with_attention: bool = False) -> list[ImageFeatures]:
        """Features for each image: from the cache, else one vision batch for the misses."""
        out: dict[str, ImageFeatures] = {}
        missing: list[ImageInput] = []
        for im in images:
            f = out.get(im.digest) or self.cache.get(im.digest, with_attention)
            if f is not None:
                out[im.digest] = f
                m.CACHE.labels("hit").inc()
            elif all(x.digest != im.digest for x in missing):
                missing.append(im)
                m.CACHE.labels("miss").inc()
        if missing:
            for im, f in zip(missing, self.runner.image_features(missing, with_attention=with_attention)):
                self.cache.put(im.digest, f)
                out[im.digest] = f
        return [out[im.digest] for im in images]

    def _prefill(self, seqs: list[Seq], feats: list[ImageFeatures],
                 with_attention: bool = False) -> tuple[list[Seq], DecodeBatch, torch.Tensor, torch.Tensor | None]:
        """Prefill ``seqs``; returns them in batch-row order with the batch, logits and attention.

        Sequences whose image prefix KV is cached run only their prompt tail on top of it;
        the others run whole prompts in one forward (a separate prefix forward would cost
        a full pass over the weights) and leave their image's prefix in the cache.
        """
        hits: list[tuple[Seq, PrefillItem]] = []
        misses: list[tuple[Seq, PrefillItem]] = []
        for s, f in zip(seqs, feats):
            prefix = self.prefix_cache.get(s.image.digest)
            m.PREFIX_CACHE.labels("hit" if prefix is not None else "miss").inc()
            (hits if prefix is not None else misses).append((s, PrefillItem(s.pids, f, prefix)))
        parts = []
        if misses:
            items = [it for _, it in misses]
            batch, out = self.runner.prefill(items, with_attention=with_attention)
            if self.prefix_cache.capacity > 0:
                for (s, _), prefix in zip(misses, self.runner.prefixes_from(batch, items)):
                    self.prefix_cache.put(s.image.digest, prefix)
            parts.append((batch, out))
        if hits:
            parts.append(self.runner.prefill([it for _, it in hits], with_attention=with_attention))
        order = [s for s, _ in misses] + [s for s, _ in hits]
        batch, out = parts[0]
        logits, attention = out.logits, out.attention
        if len(parts) == 2:
            batch = self.runner.merge(batch, parts[1][0])
            logits = torch.cat([logits, parts[1][1].logits])
            attention = None  # only the single-sequence path (AttentionMap) records attention
        return order, batch, logits, attention

    def embed(self, req: EmbedRequest, cancel: CancelToken) -> EmbedResult:
        t0 = time.perf_counter()
        images, texts = self._run_task(cancel, lambda: self._embed(req.images, req.texts))
        dim = int((images if images.numel() else texts).shape[-1])
        total = (time.perf_counter() - t0) * 1000
        m.E2E.labels("embed").observe(total / 1000)
        return EmbedResult(images.tolist(), texts.tolist(), dim, Timing(total_ms=total))

    def _embed(self, images: tuple[ImageInput, ...], texts: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.runner.embed_images(self._features(list(images))) if images else torch.empty(0, 0)
        txt = self.runner.embed_texts(list(texts)) if texts else torch.empty(0, 0)
        return img, txt

    def similarity(self, req: SimilarityRequest, cancel: CancelToken) -> SimilarityResult:
        t0 = time.perf_counter()
        images, texts = self._run_task(cancel, lambda: self._embed(req.images, req.texts))
        cos = (images @ texts.T).clamp(-1.0, 1.0)
        total = (time.perf_counter() - t0) * 1000
        m.E2E.labels("similarity").observe(total / 1000)
        return SimilarityResult(cos.tolist(), Timing(total_ms=total))

    def tokenize(self, req: TokenizeRequest) -> TokenizeResult:
        ids = self.runner.tokenize(req.text) if req.text else []
        return TokenizeResult(req, ids, self.runner.token_strings(ids))

    def attention_map(self, req: AttentionMapRequest, cancel: CancelToken) -> AttentionMapResult:
        job = Job(cancel)
        seq = self._make_seqs(req.caption, job, with_attention=True)[0]

        def run() -> AttentionMapResult:
            self._solo(seq)
            return self._attention_result(req, seq)

        return self._run_task(cancel, run, job)

    def _attention_result(self, req: AttentionMapRequest, seq: Seq) -> AttentionMapResult:
        feats = self._features([seq.image], with_attention=True)[0]
        assert feats.slot_to_patch is not None
        slot_cols = torch.tensor([i for i, v in enumerate(seq.pids.image_mask) if v])
        grid = int(math.isqrt(feats.slot_to_patch.shape[1]))
        tokens = []
        maps = []
        pieces = self.runner.token_strings(seq.gen_ids)
        for tid, piece, att in zip(seq.gen_ids, pieces, seq.attn_steps):
            # att: attention of the query that produced this token over all positions of the
            # unpadded sequence; keep the 64 image slots and renormalise, then chain with slot->patch.
            slots = att[slot_cols]
            slots = slots / slots.sum().clamp_min(1e-12)
            patch = slots @ feats.slot_to_patch
            patch = patch / patch.sum().clamp_min(1e-12)
            maps.append(patch)
            tokens.append((tid, piece, [float(x) for x in patch.tolist()]))
        caption = self._result(req.caption, [seq])
        mean = torch.stack(maps).mean(0) if maps else torch.full((grid * grid,), 1.0 / (grid * grid))
        overlay = heatmap_overlay(seq.image.image, mean.reshape(grid, grid))
        per_token = [heatmap_overlay(seq.image.image, p.reshape(grid, grid)) for p in maps] \
            if req.per_token_overlays else None
        return AttentionMapResult(caption, grid, tokens, overlay, per_token)

    # ---- scheduler thread ------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not self._queue and not self._running:
                    self._cond.wait()
                if self._stop:
                    self._fail_all(Unavailable("the server is shutting down; retry on another replica"))
                    return
                self._wait_for_company()
                tasks, admitted = self._take()
                m.WAITING.set(len(self._queue))
                self._post_positions()
            try:
                for task in tasks:
                    self._exec_task(task)
                if admitted:
                    self._admit(admitted)
                self._drop_done()
                if self._running:
                    self._step()
                    self._drop_done()
            except Exception as exc:
                log.exception("scheduler step failed")
                err = exc if isinstance(exc, UnfragileError) else Internal(
                    "model execution failed; the server logged the details")
                for s in self._running + admitted:
                    if s.finish is None:
                        s.finish = "error"
                        s.job.post("error", err)
                self._running, self._batch = [], None
            m.RUNNING.set(len(self._running))

    def _wait_for_company(self) -> None:
        """With an empty batch, wait up to max_queue_delay_ms for more requests (Triton-style)."""
        if self._running or not self._queue or self.config.max_queue_delay_ms <= 0:
            return
        deadline = time.perf_counter() + self.config.max_queue_delay_ms / 1000
        while not self._stop and len(self._queue) < self.config.max_batch_size:
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            self._cond.wait(left)

    def _take(self) -> tuple[list[_Task], list[Seq]]:
        """Pop exclusive tasks at the head and as many sequences as there are free slots."""
        tasks: list[_Task] = []
        admitted: list[Seq] = []
        free = self.config.max_batch_size - len(self._running)
        if any(item.job.cancel.cancelled for item in self._queue):  # leave the queue at once, wherever they are
            for item in [x for x in self._queue if x.job.cancel.cancelled]:
                self._finish_cancelled(item)
            self._queue = collections.deque(x for x in self._queue if not x.job.cancel.cancelled)
        while self._queue:
            item = self._queue[0]
            if isinstance(item, _Task):
                if admitted:  # keep FIFO order: run it next iteration
                    break
                tasks.append(self._queue.popleft())
                break
            if free <= 0:
                break
            admitted.append(self._queue.popleft())
            free -= 1
        return tasks, admitted

    def _post_positions(self) -> None:
        for pos, item in enumerate(self._queue, start=1):
            if item.job.last_position != pos:
                item.job.last_position = pos
                item.job.post("queued", pos)

    def _finish_cancelled(self, item: Seq | _Task) -> None:
        m.FINISHED.labels("cancelled").inc()
        item.job.post("error", item.job.cancel.error("generation"))

    def _exec_task(self, task: _Task) -> None:
        try:
            task.job.post("result", task.fn())
        except Exception as exc:
            if not isinstance(exc, UnfragileError):
                log.exception("task failed")
                exc = Internal("model execution failed; the server logged the details")
            task.job.post("error", exc)

    def _admit(self, seqs: list[Seq]) -> None:
        now = time.perf_counter()
        for s in seqs:
            s.started = now
            m.QUEUE_TIME.observe(now - s.job.accepted)
            s.job.post("queued", 0)
        feats = self._features([s.image for s in seqs])
        seqs, batch, logits, _ = self._prefill(seqs, feats)
        m.PREFILL_BATCH.observe(len(seqs))
        m.PROMPT_TOKENS.inc(sum(len(s.pids.ids) for s in seqs))
        self._batch = batch if self._batch is None else self.runner.merge(self._batch, batch)
        self._running.extend(seqs)
        for i, s in enumerate(seqs):
            self._on_logits(s, logits[i])

    def _step(self) -> None:
        assert self._batch is not None
        tokens = [s.pending for s in self._running]
        m.BATCH_SIZE.observe(len(tokens))
        out = self.runner.decode(self._batch, tokens)  # type: ignore[arg-type]
        for i, s in enumerate(self._running):
            self._on_logits(s, out.logits[i])

    def _drop_done(self) -> None:
        keep = [i for i, s in enumerate(self._running) if s.finish is None and not s.cancelled]
        for s in self._running:
            if s.finish is None and s.cancelled:
                s.finish = "cancelled"
                self._finish_cancelled(s)
        if len(keep) == len(self._running):
            return
        self._running = [self._running[i] for i in keep]
        self._batch = self.runner.select(self._batch, keep) if keep and self._batch is not None else None

    def _on_logits(self, s: Seq, logits: torch.Tensor) -> None:
        """Sample this sequence's next token and update its text, finish state and events."""
        tok = sample_next(logits, s.sampling, s.generator)
        now = time.perf_counter()
        if s.first_token == 0.0:
            s.first_token = now
            m.TTFT.observe(now - s.job.accepted)
        else:
            m.ITL.observe(now - s.last_token)
        s.last_token = now
        if tok == self.runner.eos_id:
            self._finish(s, "eos", [])
            return
        s.gen_ids.append(tok)
        s.pending = tok
        m.TOKENS.inc()
        if s.job.stream or s.sampling.stop:  # unary requests without stop strings decode text once, at the end
            self._update_text(s)
            stop_at = _find_stop(s.raw_gen, s.sampling.stop)
            if stop_at is not None:
                s.raw_gen = s.raw_gen[:stop_at]
                self._finish(s, "stop", [tok])
                return
        if len(s.gen_ids) >= s.sampling.max_new_tokens:
            self._finish(s, "length", [tok])
        elif s.job.stream:
            visible = _clean_completion(_safe_prefix(s.raw_gen, s.sampling.stop)).rstrip()
            delta = visible[len(s.emitted):] if visible.startswith(s.emitted) else ""
            s.emitted += delta
            s.job.post("tokens", (s, delta, [tok]))

    def _update_text(self, s: Seq) -> None:
        """Decode prompt tail + generated ids and keep the generated part (with tags)."""
        full = self.runner.decode_text(s.pids.ids[s.pids.tail_start:] + s.gen_ids)
        s.raw_gen = full[len(s.prompt_raw):] if full.startswith(s.prompt_raw) else full

    def _finish(self, s: Seq, reason: str, last_ids: list[int]) -> None:
        if reason != "stop":  # "stop" already holds the text cut at the stop string
            self._update_text(s)
        s.finish = reason
        m.FINISHED.labels(reason).inc()
        self._ewma_s = 0.8 * self._ewma_s + 0.2 * (time.perf_counter() - s.job.accepted)
        if s.job.stream:
            s.job.post("tokens", (s, "", last_ids))
        s.job.post("done", s)

    def _fail_all(self, err: UnfragileError) -> None:
        for item in list(self._queue) + list(self._running):
            item.job.post("error", err)
        self._queue.clear()
        self._running, self._batch = [], None

    # ---- unbatched paths (run as exclusive tasks) -------------------------------------------------------
    def _solo(self, s: Seq) -> None:
        """Generate one sequence alone, recording attention when asked (AttentionMap)."""
        s.started = time.perf_counter()
        feats = self._features([s.image], with_attention=s.with_attention)
        _, batch, logits, attention = self._prefill([s], feats, with_attention=s.with_attention)
        out = StepOutput(logits, attention)
        while True:
            if s.with_attention and out.attention is not None:
                s.attn_steps.append(out.attention[0, -len(s.pids.ids) - len(s.gen_ids):])
            self._on_logits(s, out.logits[0])
            if s.finish is not None:
                return
            if s.cancelled:
                raise s.job.cancel.error("generation")
            out = self.runner.decode(batch, [s.pending], with_attention=s.with_attention)  # type: ignore[list-item]

    def _beam_search(self, s: Seq) -> None:
        s.started = time.perf_counter()
        feats = self._features([s.image])
        ids = self.runner.beam_search(PrefillItem(s.pids, feats[0]), s.sampling, lambda: s.cancelled)
        if s.cancelled:
            raise s.job.cancel.error("generation")
        s.first_token = s.last_token = time.perf_counter()
        eos = ids.index(self.runner.eos_id) if self.runner.eos_id in ids else -1
        gen = ids[:eos] if eos >= 0 else ids
        s.gen_ids = gen
        m.TOKENS.inc(len(gen))
        full = self.runner.decode_text(s.pids.ids[s.pids.tail_start:] + gen)
        s.raw_gen = full[len(s.prompt_raw):] if full.startswith(s.prompt_raw) else full
        stop_at = _find_stop(s.raw_gen, s.sampling.stop)
        if stop_at is not None:
            s.raw_gen = s.raw_gen[:stop_at]
        reason = "stop" if stop_at is not None else ("eos" if eos >= 0 else "length")
        s.finish = reason
        m.FINISHED.labels(reason).inc()
        s.job.post("done", s)


def _find_stop(text: str, stops: tuple[str, ...]) -> int | None:
    hits = [i for i in (text.find(st) for st in stops) if i >= 0]
    return min(hits) if hits else None


def _safe_prefix(raw: str, stops: tuple[str, ...]) -> str:
    """Hold back text that may still become a stop sequence or is inside an unfinished tag."""
    cut = len(raw)
    for st in stops:
        for k in range(min(len(st) - 1, len(raw)), 0, -1):
            if raw.endswith(st[:k]):
                cut = min(cut, len(raw) - k)
                break
    raw = raw[:cut]
    lt, gt = raw.rfind("<"), raw.rfind(">")
    return raw[:lt] if lt > gt else raw


def _clean_completion(raw_gen: str) -> str:
    return g.strip_tags(raw_gen).strip()


def heatmap_overlay(image: PILImage.Image, weights: torch.Tensor, alpha: float = 0.55) -> PILImage.Image:
    """Blend a red heatmap of a grid of weights over the original image (same size)."""
    w = weights.float()
    w = (w - w.min()) / (w.max() - w.min()).clamp_min(1e-12)
    grid = PILImage.fromarray((w.numpy() * 255).astype("uint8"), mode="L").resize(image.size, PILImage.BILINEAR)
    red = PILImage.new("RGB", image.size, (255, 0, 0))
    mask = grid.point(lambda v: int(v * alpha))
    return PILImage.composite(red, image.convert("RGB"), mask)
