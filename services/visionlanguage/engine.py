"""The scheduler between the API and the model: a bounded queue and continuous batching.

One scheduler thread owns the model. Each loop iteration it
1. runs exclusive work at the head of the queue: one task (beam search, attention
   maps: short, unbatched jobs that run between decode steps), or the run of
   Embed/Similarity requests waiting there, combined into one model batch,
2. admits waiting sequences into free batch slots (up to ``max_batch_size``), waiting
   at most ``max_queue_delay_ms`` for company when the batch is empty (Triton's knobs),
   prefills them together (image features and prefix KV come from per-image caches)
   and merges them into the running batch (vLLM/TGI-style: requests join and leave
   the running batch between steps),
3. runs one decode step for the whole batch and hands every sequence its logits.

Each sequence samples from its own seeded generator with explicit position ids, so its
tokens do not depend on what else was batched with it. A cancelled or finished
sequence leaves the batch before the next step: its slot is free at once.

Request images are resized and normalised on a small worker pool as they arrive, so the
scheduler thread only runs the model. Running out of device memory fails only the requests
the failing call was for, frees the memory outside the handler and lowers the batch limit,
so what waits runs smaller (outofmemory.py).

Unary ``caption`` runs the same code as ``stream_caption`` (minus the per-token events
and text decoding it does not need), so the streamed text equals the unary text. A
sequence's token handling is in sequence.py, result assembly in assembly.py, attention
maps in attention.py, the typed events between the threads in events.py.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from common.errors import ResourceExhausted, Unavailable, UnfragileError, is_out_of_memory
from services.core.cancel import CancelToken
from services.core.devicememory import release_cached_memory
from services.core.modelinfo import ModelInfo
from services.visionlanguage import metrics as m
from services.visionlanguage.assembly import caption_result, final_event
from services.visionlanguage.attention import attention_result
from services.visionlanguage.batch import DecodeBatch, ModelRunner, StepOutput
from services.visionlanguage.caches import CachedModel, PrefillRow
from services.visionlanguage.embedding import EmbedWork, embed_result, run_embeds, similarity_result
from services.visionlanguage.events import (
    CancelRequested,
    Failed,
    Job,
    Queued,
    SequenceDone,
    TaskDone,
    Tokens,
    client_error,
)
from services.visionlanguage.memory import fit_to_memory
from services.visionlanguage.outofmemory import OUT_OF_MEMORY, BatchLimit, attempt, exhausted
from services.visionlanguage.results import (
    AttentionMapResult,
    CaptionEvent,
    CaptionResult,
    EmbedResult,
    SimilarityResult,
    TokenizeResult,
)
from services.visionlanguage.sequence import Seq, SequenceFactory, next_tokens
from services.visionlanguage.settings import EngineConfig
from services.visionlanguage.solo import beam_search, generate_alone
from services.visionlanguage.types import (
    AttentionMapRequest,
    CaptionRequest,
    EmbedRequest,
    ImageInput,
    SimilarityRequest,
    TokenizeRequest,
)
from services.visionlanguage.work import Item, Task, take_exclusive, task_value

log = logging.getLogger(__name__)



class Engine:
    """Schedules all model work of one VisionLanguage server."""

    def __init__(self, runner: ModelRunner, config: EngineConfig) -> None:
        self.runner = runner
        self.config, self.limits_note = fit_to_memory(config, runner)
        config = self.config
        self.cached = CachedModel(runner, config.feature_cache_size, config.prefix_cache_size,
                                  config.preprocess_workers)
        self.sequences = SequenceFactory(runner)
        self._queue: collections.deque[Item] = collections.deque()
        self._running: list[Seq] = []
        self._batch: DecodeBatch | None = None
        self._cond = threading.Condition()
        self._stop = False
        self._ewma_s = 0.5  # recent sequence duration, for retry hints
        self.limit = BatchLimit(config.max_batch_size)
        self._thread = threading.Thread(target=self._loop, name="vl-scheduler", daemon=True)
        self._thread.start()

    # ---- lifecycle and facts -----------------------------------------------------------------------
    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=30)
        self.cached.close()

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {"running": len(self._running), "waiting": len(self._queue)}

    def info(self) -> ModelInfo:
        info = self.runner.info()
        c = self.config
        info.details.update({"max_batch_size": str(c.max_batch_size), "max_queue_delay_ms": str(c.max_queue_delay_ms),
                             "max_queue_size": str(c.max_queue_size), "feature_cache_size": str(c.feature_cache_size),
                             "prefix_cache_size": str(self.cached.prefix_cache.capacity),
                             "max_embed_batch_size": str(c.max_embed_batch_size),
                             "preprocess_workers": str(c.preprocess_workers), "batch_limit": str(self.limit.value),
                             "memory_limits": self.limits_note})
        return info

    def tokenize(self, req: TokenizeRequest) -> TokenizeResult:
        ids = self.runner.tokenize(req.text) if req.text else []
        return TokenizeResult(req, ids, self.runner.token_strings(ids))

    # ---- submission (request threads) ---------------------------------------------------------------
    def _enqueue(self, items: list[Item], job: Job) -> None:
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
        with self._cond:
            self._cond.notify_all()
        job.post(CancelRequested())

    def _submit_task(self, job: Job, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the scheduler thread (between decode steps) and wait for its value."""
        self._enqueue([Task(job, fn)], job)
        return task_value(job)

    def stream_caption(self, req: CaptionRequest, cancel: CancelToken, stream: bool = True) -> Iterator[CaptionEvent]:
        """Queue position events, then text deltas, then one event with the final result.

        ``stream=False`` (unary Caption) skips per-token text work; the final result is the same.
        """
        job = Job(cancel, stream)
        seqs = self.sequences.make(req, job)
        pixels = self.cached.pixels(req.image)
        for s in seqs:
            s.pixels = pixels
        items: list[Item] = [Task(job, lambda: beam_search(self.cached, seqs[0]))] if req.sampling.num_beams > 1 \
            else list(seqs)
        self._enqueue(items, job)
        done: dict[int, Seq] = {}
        last_pos = 0  # position 0 (running) is only worth a chunk after a positive one
        try:
            for event in job.events_until_stopped():
                if isinstance(event, Queued) and event.position != last_pos:
                    last_pos = event.position
                    yield CaptionEvent(queue_position=event.position)
                elif isinstance(event, Tokens) and len(seqs) == 1 and (event.delta or event.token_ids):
                    yield CaptionEvent(delta=event.delta, token_ids=event.token_ids)
                elif isinstance(event, SequenceDone):
                    done[event.seq.index] = event.seq
                    if len(done) == len(seqs):
                        yield final_event(req, [done[i] for i in range(len(seqs))])
                        return
        finally:
            if len(done) < len(seqs):
                cancel.cancel("the caller stopped reading the stream")

    def caption(self, req: CaptionRequest, cancel: CancelToken) -> CaptionResult:
        final = None
        for ev in self.stream_caption(req, cancel, stream=False):
            final = ev.final or final
        assert final is not None
        return final

    def attention_map(self, req: AttentionMapRequest, cancel: CancelToken) -> AttentionMapResult:
        job = Job(cancel)
        seq = self.sequences.make(req.caption, job, with_attention=True)[0]
        seq.pixels = self.cached.pixels(req.caption.image, with_attention=True)

        def run() -> AttentionMapResult:
            generate_alone(self.cached, seq, self._on_token)
            feats = self.cached.features([seq.image], with_attention=True)[0]
            pieces = self.runner.token_strings(seq.gen_ids)
            return attention_result(seq, feats, pieces, caption_result(req.caption, [seq]), req.per_token_overlays)

        return self._submit_task(job, run)

    def _vectors(self, images: tuple[ImageInput, ...], texts: tuple[str, ...],
                 cancel: CancelToken) -> tuple[torch.Tensor, torch.Tensor]:
        """Image and text vectors, computed in a batch with other requests waiting for theirs."""
        job = Job(cancel)
        self._enqueue([EmbedWork(job, images, texts, [self.cached.pixels(im) for im in images])], job)
        return task_value(job)

    def embed(self, req: EmbedRequest, cancel: CancelToken) -> EmbedResult:
        t0 = time.perf_counter()
        return embed_result(*self._vectors(req.images, req.texts, cancel), t0)

    def similarity(self, req: SimilarityRequest, cancel: CancelToken) -> SimilarityResult:
        t0 = time.perf_counter()
        return similarity_result(*self._vectors(req.images, req.texts, cancel), t0)

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
                exclusive, admitted = self._take()
                m.WAITING.set(len(self._queue))
                self._post_positions()
            out_of_memory = False
            try:
                self._iterate(exclusive, admitted)
            except Exception as exc:
                out_of_memory = is_out_of_memory(exc)
                err = client_error(exc)
                for s in self._running + admitted:
                    if s.finish is None:
                        s.finish = "error"
                        s.job.post(Failed(err))
                self._running, self._batch = [], None
            if out_of_memory:  # after the handler: its frames (and the failed call's tensors) are gone
                release_cached_memory()
            m.RUNNING.set(len(self._running))

    def _iterate(self, exclusive: list[Task | EmbedWork], admitted: list[Seq]) -> None:
        """One scheduler iteration outside the lock: exclusive work, admissions, one decode step."""
        embeds = [w for w in exclusive if isinstance(w, EmbedWork)]
        if embeds:
            run_embeds(self.cached, embeds, release_cached_memory)
        for task in exclusive:
            if isinstance(task, Task):
                self._exec_task(task)
        if admitted:
            self._admit(admitted)
        self._drop_done()
        if self._running:
            self._step()
            self._drop_done()

    def _wait_for_company(self) -> None:
        """With an empty batch, wait up to max_queue_delay_ms for more requests (Triton-style)."""
        if self._running or not self._queue or self.config.max_queue_delay_ms <= 0:
            return
        deadline = time.perf_counter() + self.config.max_queue_delay_ms / 1000
        while not self._stop and len(self._queue) < self.limit.value:
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            self._cond.wait(left)

    def _take(self) -> tuple[list[Task | EmbedWork], list[Seq]]:
        """Pop the exclusive work at the head, or as many sequences as there are free slots."""
        if any(item.job.cancel.cancelled for item in self._queue):  # leave the queue at once, wherever they are
            for item in [x for x in self._queue if x.job.cancel.cancelled]:
                self._finish_cancelled(item)
            self._queue = collections.deque(x for x in self._queue if not x.job.cancel.cancelled)
        admitted: list[Seq] = []
        free = self.limit.value - len(self._running)
        while free > 0 and self._queue and isinstance(head := self._queue[0], Seq):
            admitted.append(head)
            self._queue.popleft()
            free -= 1
        # keep FIFO order: exclusive work behind admitted sequences runs next iteration
        if admitted or not self._queue or isinstance(self._queue[0], Seq):
            return [], admitted
        return take_exclusive(self._queue, self.config.max_embed_batch_size), admitted

    def _post_positions(self) -> None:
        for pos, item in enumerate(self._queue, start=1):
            if item.job.last_position != pos:
                item.job.last_position = pos
                item.job.post(Queued(pos))

    def _finish_cancelled(self, item: Item) -> None:
        m.FINISHED.labels("cancelled").inc()
        item.job.post(Failed(item.job.cancel.error("generation")))

    def _exec_task(self, task: Task) -> None:
        out_of_memory = False
        try:
            task.job.post(TaskDone(task.fn()))
        except Exception as exc:
            out_of_memory = is_out_of_memory(exc)
            task.job.post(Failed(client_error(exc)))
        if out_of_memory:
            m.OUT_OF_MEMORY.labels("task").inc()
            release_cached_memory()

    def _prefill(self, seqs: list[Seq]) -> Any:
        feats = self.cached.features([s.image for s in seqs], pixels=[s.pixels for s in seqs])
        return self.cached.prefill([PrefillRow(s.image.digest, s.pids, f) for s, f in zip(seqs, feats)])

    def _admit(self, seqs: list[Seq]) -> None:
        now = time.perf_counter()
        for s in seqs:
            s.started = now
            m.QUEUE_TIME.observe(now - s.job.accepted)
            s.job.last_position = 0
            s.job.post(Queued(0))
        while (pre := attempt("prefill", self._prefill, seqs)) is OUT_OF_MEMORY:
            if len(seqs) == 1:  # the request it hit: alone it does not fit beside the running batch
                self._fail(seqs, len(self._running) + 1)
                self.limit.lower(len(self._running))
                return
            keep = len(seqs) // 2  # the rest waits at the head of the queue for the lowered limit
            with self._cond:
                self._queue.extendleft(reversed(seqs[keep:]))
            seqs = seqs[:keep]
            self.limit.lower(len(self._running) + keep)
        seqs = [seqs[i] for i in pre.order]
        m.PREFILL_BATCH.observe(len(seqs))
        m.PROMPT_TOKENS.inc(sum(len(s.pids.ids) for s in seqs))
        self._batch = pre.batch if self._batch is None else self.runner.merge(self._batch, pre.batch)
        self._running.extend(seqs)
        self._feed(seqs, pre.out)

    def _step(self) -> None:
        assert self._batch is not None
        tokens = [s.next_token for s in self._running]
        while (out := attempt("decode", self.runner.decode, self._batch, tokens)) is OUT_OF_MEMORY:
            # The newest sequences leave (RESOURCE_EXHAUSTED); the step is retried with the older half.
            keep = len(self._running) // 2
            self._fail(self._running[keep:], len(self._running))
            self.limit.lower(keep)
            self._running, tokens = self._running[:keep], tokens[:keep]
            if not keep:
                self._batch = None
                return
            self._batch = self.runner.select(self._batch, list(range(keep)))
        m.BATCH_SIZE.observe(len(tokens))
        self.limit.step_ok()
        self._feed(self._running, out)

    def _feed(self, seqs: list[Seq], out: StepOutput) -> None:
        for s, tok in zip(seqs, next_tokens(seqs, out)):
            self._on_token(s, tok)

    def _fail(self, seqs: list[Seq], rows: int) -> None:
        err = exhausted(rows)
        for s in seqs:
            s.finish = "error"
            m.FINISHED.labels("error").inc()
            s.job.post(Failed(err))

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

    def _on_token(self, s: Seq, tok: int) -> None:
        if s.on_token(tok, self.runner):
            self._ewma_s = 0.8 * self._ewma_s + 0.2 * (time.perf_counter() - s.job.accepted)

    def _fail_all(self, err: UnfragileError) -> None:
        for item in list(self._queue) + list(self._running):
            item.job.post(Failed(err))
        self._queue.clear()
        self._running, self._batch = [], None
