"""Kosmos-2 model execution: loading, image features, batched prefill/decode, embeddings.

The runner knows tensors, not requests or queues (the data it exchanges with the engine
is in batch.py). The engine decides which sequences run together; the runner executes
one step for whatever batch it is given:

- ``prefill`` runs new prompts (left padded) and returns a ``DecodeBatch`` holding their
  KV cache, attention mask and next position ids;
- ``merge`` joins two batches (continuous batching: newcomers join the running batch
  between decode steps), ``select`` drops finished rows (their slot is freed at once);
- ``decode`` feeds one token per row.

Position ids are passed explicitly. Kosmos-2 derives them from the number of cached
positions, which counts left padding, so a padded row would drift from its unpadded
run; explicit positions keep batched output equal to unbatched output.

On a GPU: attention runs with SDPA (eager only for the steps that must return attention
weights), decode steps write into a preallocated static KV cache (kvcache.py; optionally
compiled), logits stay on the device (greedy rows copy only their token ids, see
``StepOutput``), image preprocessing is a separate call the engine runs on worker threads,
and a checkpoint's ``fp16`` weight files are read when serving in float16.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common.errors import InvalidArgument, ModelUnavailable
from services.core import devicememory
from services.core.loading import pretrained_source, test_model_details, weight_variant
from services.core.modelinfo import ModelInfo
from services.visionlanguage import batch as batching
from services.visionlanguage import beam, kvcache
from services.visionlanguage.batch import DecodeBatch, ImageFeatures, ImagePrefix, PrefillItem, PromptIds, StepOutput
from services.visionlanguage.memory import kv_bytes_per_position
from services.visionlanguage.quantize import check_quantization, quantize_model
from services.visionlanguage.types import ImageInput, Sampling

log = logging.getLogger(__name__)


class Kosmos2Runner:
    """Runs a Kosmos2ForConditionalGeneration loaded with from_pretrained."""

    def __init__(self, model_source: str | Path, device: torch.device, dtype: torch.dtype,
                 quantize: str = "", threads: int = 0, attn_implementation: str = "sdpa", kv_cache: str = "static",
                 compile: str = "") -> None:
        from transformers import AutoProcessor, Kosmos2ForConditionalGeneration

        check_quantization(quantize, device)  # before reading any weights
        if compile and kv_cache != "static":
            raise InvalidArgument(f"compile={compile!r} needs kv_cache='static' (a dynamic cache changes shape "
                                  f"every step)")
        if threads > 0:
            torch.set_num_threads(threads)
        source, extra = pretrained_source(model_source)
        self.model_id = str(model_source)
        self.variant = weight_variant(source, dtype)
        try:
            self.processor = AutoProcessor.from_pretrained(source, **extra)
            # transformers models are typed loosely (``to`` is a wrapped function, submodules come from
            # nn.Module.__getattr__): the model is handled as Any.
            model: Any = Kosmos2ForConditionalGeneration.from_pretrained(  # safetensors only: never unpickle weights
                source, dtype=dtype, attn_implementation=attn_implementation, use_safetensors=True,
                variant=self.variant, **extra)
        except (OSError, ValueError) as exc:
            raise ModelUnavailable(f"could not load Kosmos-2 from {self.model_id!r}: {exc}") from None
        self.device, self.dtype = device, dtype
        self.kv_cache = kv_cache
        model = model.to(device).eval()
        self.parameters = sum(p.numel() for p in model.parameters())  # before quantization packs Linear weights
        self.quantization = quantize
        if quantize:
            model = quantize_model(model, quantize, device)
            self.dtype = torch.float32
        self.model = model
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "left"
        # gRPC threads build prompts while the scheduler thread decodes text; the fast
        # tokenizer mutates its padding/truncation state per call, so calls are serialised.
        self._tok_lock = threading.Lock()
        cfg = model.config
        self.text_cfg = cfg.text_config
        self.eos_id = int(self.tokenizer.eos_token_id)
        self.pad_id = int(self.text_cfg.pad_token_id)
        self.max_context = int(self.text_cfg.max_position_embeddings)
        self.hidden = int(self.text_cfg.embed_dim)
        self.num_slots = int(cfg.latent_query_num)
        vc = cfg.vision_config
        self.image_size, self.patch_size = int(vc.image_size), int(vc.patch_size)
        self.grid = self.image_size // self.patch_size
        first_slot = self.tokenizer.unk_token_id + 1  # what Kosmos2Processor uses
        self._slot_ids = list(range(first_slot, first_slot + self.num_slots))
        self._boi = self.tokenizer.convert_tokens_to_ids("<image>")
        self._eoi = self.tokenizer.convert_tokens_to_ids("</image>")
        self._attn_impl = attn_implementation
        self.compile = compile
        self._step_model: Any = self._compiled(compile) if compile else model.text_model

    # ---- facts -----------------------------------------------------------------------------------
    def info(self) -> ModelInfo:
        return ModelInfo(
            model_id=self.model_id, architecture=type(self.model).__name__, device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch."), parameters=int(self.parameters),
            quantization=self.quantization,
            details={
                "image_size": str(self.image_size), "patch_size": str(self.patch_size),
                "patch_grid": f"{self.grid}x{self.grid}", "location_grid": "32x32",
                "location_tokens": "1024", "image_slots": str(self.num_slots),
                "vocab_size": str(len(self.tokenizer)), "max_context": str(self.max_context),
                "text_hidden_size": str(self.hidden), "text_layers": str(self.text_cfg.layers),
                "vision_hidden_size": str(self.model.config.vision_config.hidden_size),
                "vision_layers": str(self.model.config.vision_config.num_hidden_layers),
                "attn_implementation": self._attn_impl, "kv_cache": self.kv_cache,
                "compile": self.compile or "off", "weights_variant": self.variant or "default",
                "torch_threads": str(torch.get_num_threads()),
                **test_model_details(self.model_id),
            },
        )

    # ---- text --------------------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        with self._tok_lock:
            return list(self.tokenizer(text).input_ids)

    def token_strings(self, ids: list[int]) -> list[str]:
        with self._tok_lock:
            return list(self.tokenizer.convert_ids_to_tokens(ids))

    def decode_text(self, ids: list[int]) -> str:
        with self._tok_lock:
            return self.tokenizer.decode(ids, skip_special_tokens=True)

    def prompt_ids(self, prompt: str) -> PromptIds:
        """The same ids Kosmos2Processor(text=prompt, images=...) produces (tested)."""
        slots = " ".join(["<image>"] * (self.num_slots + 1) + ["</image>"])
        text = f"{self.tokenizer.bos_token}{slots} {prompt.strip()}"
        with self._tok_lock:
            ids = list(self.tokenizer(text, add_special_tokens=False).input_ids)
        start = 2  # after <s> <image>
        ids = ids[:start] + self._slot_ids + ids[start + self.num_slots:]
        mask = [0, 0] + [1] * self.num_slots + [0] * (len(ids) - start - self.num_slots)
        return PromptIds(ids, mask, start + self.num_slots + 1)

    # ---- images -----------------------------------------------------------------------------------
    def preprocess(self, images: list[ImageInput]) -> torch.Tensor:
        """Resized, normalised pixels of ``images`` on the CPU (thread-safe; the engine runs it on workers)."""
        return self.processor.image_processor([im.image for im in images], return_tensors="pt")["pixel_values"]

    @torch.inference_mode()
    def image_features(self, images: list[ImageInput], with_attention: bool = False,
                       pixel_values: torch.Tensor | None = None) -> list[ImageFeatures]:
        if not images:
            return []
        pv = (self.preprocess(images) if pixel_values is None else pixel_values).to(self.device, self.dtype)
        m = self.model
        vis = m.vision_model(pixel_values=pv)
        emb = m.vision_model.model.post_layernorm(vis[0])
        emb = nn.functional.normalize(emb, dim=-1)
        with self._eager(with_attention):
            slots, attn = m.image_to_text_projection(emb)
        out = []
        n_patch = self.grid * self.grid
        for i in range(len(images)):
            s2p = None
            if with_attention and attn is not None:
                # keys = [CLS, 256 patches, 64 latent queries]; keep the patches, renormalise.
                a = attn[i].float().mean(0)[:, 1:1 + n_patch]
                s2p = (a / a.sum(-1, keepdim=True).clamp_min(1e-12)).cpu()
            out.append(ImageFeatures(slots[i].detach().clone(), s2p))
        return out

    def _eager(self, on: bool) -> Any:
        """Temporarily use eager attention (the only kind that returns weights)."""
        runner = self

        class _Ctx:
            def __enter__(self) -> None:
                if on and runner._attn_impl != "eager":
                    runner.model.set_attn_implementation("eager")

            def __exit__(self, *exc: object) -> None:
                if on and runner._attn_impl != "eager":
                    runner.model.set_attn_implementation(runner._attn_impl)

        return _Ctx()

    # ---- generation ---------------------------------------------------------------------------------
    def _compiled(self, mode: str) -> Any:
        """The text model's forward for decode steps, through torch.compile."""
        if mode == "inductor":
            return torch.compile(self.model.text_model, mode="reduce-overhead" if self.device.type == "cuda" else None)
        return torch.compile(self.model.text_model, backend=mode)

    def kv_bytes_per_position(self) -> int:
        elem = torch.empty((), dtype=self.dtype).element_size()
        return kv_bytes_per_position(int(self.text_cfg.layers), self.hidden, elem)

    def free_memory(self) -> int:
        return devicememory.free_bytes(self.device)

    def _attention_summary(self, out: Any, kv_len: int) -> torch.Tensor | None:
        if getattr(out, "attentions", None) is None:
            return None
        # each layer [B, H, q, kv] -> newest query over the used positions, mean over heads and layers
        return torch.stack([a[:, :, -1, :kv_len].float().mean(1) for a in out.attentions]).mean(0).cpu()

    @torch.inference_mode()
    def image_prefix(self, feats: list[ImageFeatures]) -> list[ImagePrefix]:
        """Run '<s><image>[slots]</image>' for each image (one batch, no padding) and keep its KV."""
        from transformers import DynamicCache

        ids = [self.tokenizer.bos_token_id, self._boi, *self._slot_ids, self._eoi]
        img_mask = [0, 0] + [1] * self.num_slots + [0]
        n, dev = len(feats), self.device
        out = self.model.text_model(
            input_ids=torch.tensor([ids] * n, device=dev), attention_mask=torch.ones(n, len(ids), device=dev,
                                                                                        dtype=torch.long),
            image_embeds=torch.stack([f.embeds for f in feats]).to(dev, self.dtype),
            image_embeds_position_mask=torch.tensor([img_mask] * n, device=dev, dtype=torch.bool),
            position_ids=torch.tensor([list(range(self.pad_id + 1, self.pad_id + 1 + len(ids)))] * n, device=dev),
            past_key_values=DynamicCache(config=self.text_cfg), use_cache=True, logits_to_keep=1)
        keys, values = kvcache.taken(out.past_key_values)
        return [ImagePrefix([k[i].clone() for k in keys], [v[i].clone() for v in values]) for i in range(n)]

    def prefixes_from(self, batch: DecodeBatch, items: list[PrefillItem]) -> list[ImagePrefix]:
        return batching.prefixes_from(batch, items)

    @torch.inference_mode()
    def prefill(self, items: list[PrefillItem], with_attention: bool = False) -> tuple[DecodeBatch, StepOutput]:
        if all(it.prefix is not None for it in items):
            return self._prefill_after_prefix(items, with_attention)
        return self._prefill_full(items, with_attention)

    def _prefill_after_prefix(self, items: list[PrefillItem], with_attention: bool) -> tuple[DecodeBatch, StepOutput]:
        """Prefill only the prompt tails on top of the cached image prefixes.

        Layout per row: [67 prefix positions][left padding][tail]; the padding is masked
        out and positions continue after the prefix, so a row's result does not depend
        on the other rows' tail lengths.
        """
        plen = items[0].prompt.tail_start
        tails = [it.prompt.ids[plen:] for it in items]
        n = max(len(t) for t in tails)
        dev = self.device
        ids = [[self.pad_id] * (n - len(t)) + t for t in tails]
        mask = [[1] * plen + [0] * (n - len(t)) + [1] * len(t) for t in tails]
        pos = [[self.pad_id] * (n - len(t)) + list(range(self.pad_id + 1 + plen, self.pad_id + 1 + plen + len(t)))
               for t in tails]
        prefixes = [it.prefix for it in items if it.prefix is not None]
        assert len(prefixes) == len(items), "only called when every item has its image prefix"
        layers = len(prefixes[0].keys)
        cache = kvcache.adopt_dynamic([torch.stack([p.keys[i] for p in prefixes]) for i in range(layers)],
                                      [torch.stack([p.values[i] for p in prefixes]) for i in range(layers)])
        attn = torch.tensor(mask, device=dev)
        with self._eager(with_attention):
            out = self.model.text_model(
                input_ids=torch.tensor(ids, device=dev), attention_mask=attn,
                position_ids=torch.tensor(pos, device=dev),
                past_key_values=cache, use_cache=True, logits_to_keep=1, output_attentions=with_attention)
        keys, values = kvcache.taken(out.past_key_values)
        next_pos = torch.tensor([self.pad_id + 1 + len(it.prompt.ids) for it in items], device=dev)
        attention = self._attention_summary(out, attn.shape[1]) if with_attention else None
        return DecodeBatch(keys, values, attn, next_pos), StepOutput(out.logits[:, -1, :], attention)

    def _prefill_full(self, items: list[PrefillItem], with_attention: bool) -> tuple[DecodeBatch, StepOutput]:
        """Prefill whole prompts (image prefix included), left padded."""
        from transformers import DynamicCache

        n = max(len(it.prompt.ids) for it in items)
        ids, mask, img_mask, pos = [], [], [], []
        for it in items:
            p = it.prompt
            pad = n - len(p.ids)
            ids.append([self.pad_id] * pad + p.ids)
            mask.append([0] * pad + [1] * len(p.ids))
            img_mask.append([0] * pad + p.image_mask)
            pos.append([self.pad_id] * pad + list(range(self.pad_id + 1, self.pad_id + 1 + len(p.ids))))
        dev = self.device
        input_ids = torch.tensor(ids, device=dev)
        attn = torch.tensor(mask, device=dev)
        embeds = torch.stack([it.features.embeds for it in items]).to(dev, self.dtype)
        with self._eager(with_attention):
            out = self.model.text_model(
                input_ids=input_ids, attention_mask=attn, image_embeds=embeds,
                image_embeds_position_mask=torch.tensor(img_mask, device=dev, dtype=torch.bool),
                position_ids=torch.tensor(pos, device=dev), past_key_values=DynamicCache(config=self.text_cfg),
                use_cache=True, logits_to_keep=1, output_attentions=with_attention)
        keys, values = kvcache.taken(out.past_key_values)
        next_pos = torch.tensor([self.pad_id + 1 + len(it.prompt.ids) for it in items], device=dev)
        batch = DecodeBatch(keys, values, attn, next_pos)
        attention = self._attention_summary(out, n) if with_attention else None
        return batch, StepOutput(out.logits[:, -1, :], attention)

    @torch.inference_mode()
    def decode(self, batch: DecodeBatch, tokens: list[int], with_attention: bool = False) -> StepOutput:
        """One token per row. The batch is updated only when the step succeeds (an out-of-memory
        error leaves it as it was, so the engine can retry the step with fewer rows)."""
        if self.kv_cache == "static" and not with_attention:
            return self._decode_static(batch, tokens)
        dev = self.device
        n = batch.length
        mask = torch.cat([batch.mask[:, :n], torch.ones(batch.size, 1, dtype=batch.mask.dtype, device=dev)], dim=1)
        keys = batch.keys if batch.capacity == n else [k[:, :, :n] for k in batch.keys]
        values = batch.values if batch.capacity == n else [v[:, :, :n] for v in batch.values]
        cache = kvcache.adopt_dynamic(keys, values)
        with self._eager(with_attention):
            out = self.model.text_model(
                input_ids=torch.tensor(tokens, device=dev).unsqueeze(1), attention_mask=mask,
                position_ids=batch.next_pos.unsqueeze(1), past_key_values=cache, use_cache=True,
                output_attentions=with_attention)
        batch.keys, batch.values = kvcache.taken(out.past_key_values)
        batch.mask, batch.length, batch.cache = mask, n + 1, None
        batch.next_pos = batch.next_pos + 1
        return StepOutput(out.logits[:, -1, :], self._attention_summary(out, n + 1) if with_attention else None)

    def _decode_static(self, batch: DecodeBatch, tokens: list[int]) -> StepOutput:
        n = batch.length
        if n >= batch.capacity:  # no free column: grow by a block (once per BLOCK steps)
            grown = batching.with_capacity(batch, kvcache.block_capacity(n))
            batch.keys, batch.values, batch.mask, batch.cache = grown.keys, grown.values, grown.mask, None
        if batch.cache is None:
            batch.cache = kvcache.adopt_static(batch, mark_static=bool(self.compile))
        batch.mask[:, n] = 1
        try:
            out = self._step_model(
                input_ids=torch.tensor(tokens, device=self.device).unsqueeze(1), attention_mask=batch.mask,
                position_ids=batch.next_pos.unsqueeze(1), past_key_values=batch.cache, use_cache=True)
        except BaseException:
            batch.mask[:, n] = 0  # column n stays free; the cache object may have moved its write position
            batch.cache = None
            raise
        batch.length = n + 1
        batch.next_pos = batch.next_pos + 1
        return StepOutput(out.logits[:, -1, :])

    def merge(self, a: DecodeBatch, b: DecodeBatch) -> DecodeBatch:
        return batching.merge(a, b)

    def select(self, batch: DecodeBatch, rows: list[int]) -> DecodeBatch:
        return batching.select(batch, rows)

    def beam_search(self, item: PrefillItem, sampling: Sampling, should_stop: Callable[[], bool]) -> list[int]:
        """Beam search through transformers' generate (one sequence, not batched)."""
        return beam.generate(self.model.text_model, item, sampling, should_stop, self.device, self.dtype,
                             self.eos_id, self.pad_id)

    # ---- embeddings ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def embed_images(self, feats: list[ImageFeatures]) -> torch.Tensor:
        """Mean of the decoder's last hidden state over the image slots, L2-normalised."""
        p = self.prompt_ids("")
        ids = torch.tensor([p.ids] * len(feats), device=self.device)
        img_mask = torch.tensor([p.image_mask] * len(feats), device=self.device, dtype=torch.bool)
        hidden = self.model.text_model.model(
            input_ids=ids, attention_mask=torch.ones_like(ids),
            image_embeds=torch.stack([f.embeds for f in feats]).to(self.device, self.dtype),
            image_embeds_position_mask=img_mask, use_cache=False).last_hidden_state.float()
        pooled = (hidden * img_mask.unsqueeze(-1)).sum(1) / img_mask.sum(1, keepdim=True)
        return nn.functional.normalize(pooled, dim=-1).cpu()

    @torch.inference_mode()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """Mean of the decoder's last hidden state over the text tokens (not <s>), L2-normalised."""
        with self._tok_lock:
            rows = [[self.tokenizer.bos_token_id] + list(self.tokenizer(t, add_special_tokens=False).input_ids)
                    for t in texts]
        too_long = [i for i, r in enumerate(rows) if len(r) > self.max_context]
        if too_long:
            raise InvalidArgument(f"texts[{too_long[0]}] is over the model context of {self.max_context} tokens")
        n = max(len(r) for r in rows)
        ids = torch.tensor([r + [self.pad_id] * (n - len(r)) for r in rows], device=self.device)
        mask = torch.tensor([[1] * len(r) + [0] * (n - len(r)) for r in rows], device=self.device)
        out = self.model.text_model.model(input_ids=ids, attention_mask=mask, use_cache=False)
        hidden = out.last_hidden_state.float()
        keep = mask.clone()
        keep[:, 0] = 0  # drop <s>
        keep = keep.unsqueeze(-1).float()
        pooled = (hidden * keep).sum(1) / keep.sum(1).clamp_min(1.0)
        return nn.functional.normalize(pooled, dim=-1).cpu()

