"""The model work every peer server runs, written the way each model's documentation shows.

This module runs inside the peers' own virtual environments (torch, transformers,
diffusers, pillow: no project code), so LitServe and PyTriton execute exactly the same
Python for a batch:

- Kosmos-2: one ``Kosmos2Processor`` call over the batch (left padding), one
  ``Kosmos2ForConditionalGeneration.generate`` (greedy) for the longest request, each
  row then cut to its own ``max_new_tokens`` and at ``</s>``, and
  ``post_process_generation`` for the grounded caption, as the model card shows. The
  prompt is the one the VisionLanguage server uses in BRIEF mode. The caption's
  ``completion`` is the generated part alone (the prompt's decoded text cut off, tags
  removed by the same post-processing): what a chat completion answers.
- Stable Diffusion: one ``StableDiffusionPipeline`` call with a list of prompts and one
  seeded ``torch.Generator`` per image, DDIM (the Diffusion server's default
  scheduler), PNG-encoded like the Diffusion server encodes its results.
"""

from __future__ import annotations

import argparse
import io
from dataclasses import dataclass
from typing import Any

BRIEF_PROMPT = "<grounding>An image of"


def server_arguments(check_model_help: str, kinds: tuple[str, ...] = ("vl", "diffusion")) -> argparse.ArgumentParser:
    """The command-line arguments both peer servers take (each adds its ports and batching knob)."""
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=kinds)
    p.add_argument("--model", required=True)
    p.add_argument("--check-model", default="", help=check_model_help)
    p.add_argument("--threads", type=int, required=True, help="torch intra-op threads")
    p.add_argument("--max-batch-size", type=int, required=True)
    return p


@dataclass
class Caption:
    token_ids: list[int]
    text: str  # the whole grounded caption, prompt included ("An image of ...")
    completion: str  # the generated text alone
    prompt_tokens: int


def _png(img: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


class Kosmos2Captioner:
    """Greedy BRIEF captions for a batch of images, through ``generate``."""

    def __init__(self, model_dir: str, threads: int, attn_implementation: str = "sdpa") -> None:
        import torch
        from transformers import AutoProcessor, Kosmos2ForConditionalGeneration

        torch.set_num_threads(threads)
        self.processor = AutoProcessor.from_pretrained(model_dir)
        self.processor.tokenizer.padding_side = "left"
        self.model = Kosmos2ForConditionalGeneration.from_pretrained(
            model_dir, dtype=torch.float32, attn_implementation=attn_implementation, use_safetensors=True).eval()
        tok = self.processor.tokenizer
        self.eos, self.pad = int(tok.eos_token_id), int(tok.pad_token_id)
        self.end_of_image = int(tok.convert_tokens_to_ids("</image>"))

    def caption(self, images: list[bytes], max_new_tokens: list[int]) -> list[Caption]:
        import torch
        from PIL import Image

        pil = [Image.open(io.BytesIO(data)).convert("RGB") for data in images]
        inputs = self.processor(text=[BRIEF_PROMPT] * len(pil), images=pil, return_tensors="pt", padding=True)
        with torch.inference_mode():
            out = self.model.generate(
                pixel_values=inputs["pixel_values"], input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                image_embeds_position_mask=inputs["image_embeds_position_mask"],
                max_new_tokens=max(max_new_tokens), do_sample=False, num_beams=1, use_cache=True,
                eos_token_id=self.eos, pad_token_id=self.pad)
        prompt_len = inputs["input_ids"].shape[1]
        results = []
        masks = inputs["attention_mask"].sum(dim=1).tolist()
        for row, prompt, limit, n_prompt in zip(out.tolist(), inputs["input_ids"].tolist(), max_new_tokens, masks):
            ids = row[prompt_len:prompt_len + limit]
            if self.eos in ids:
                ids = ids[:ids.index(self.eos)]
            tail = prompt[prompt.index(self.end_of_image) + 1:]
            raw = self.processor.decode(tail + ids, skip_special_tokens=True)
            text, _entities = self.processor.post_process_generation(raw)
            head = self.processor.decode(tail, skip_special_tokens=True)
            completion, _ = self.processor.post_process_generation(raw[len(head):] if raw.startswith(head) else raw)
            results.append(Caption(ids, text, completion, int(n_prompt)))
        return results


@dataclass(frozen=True)
class ImageRequest:
    prompt: str
    seed: int
    steps: int
    size: int
    guidance: float

    def batch_key(self) -> tuple[int, int, float]:
        return (self.steps, self.size, self.guidance)


class StableDiffusionGenerator:
    """Text-to-image for a batch: one pipeline call per compatible group, one generator per image."""

    def __init__(self, model_dir: str, threads: int) -> None:
        import torch
        from diffusers import DDIMScheduler, StableDiffusionPipeline
        from diffusers.utils import logging as dlogging

        torch.set_num_threads(threads)
        dlogging.disable_progress_bar()
        pipe = StableDiffusionPipeline.from_pretrained(
            model_dir, safety_checker=None, requires_safety_checker=False, dtype=torch.float32, use_safetensors=True)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe

    def generate(self, requests: list[ImageRequest]) -> list[bytes]:
        """PNGs in request order; requests that differ in steps, size or guidance run as separate calls."""
        out: dict[int, bytes] = {}
        groups: dict[tuple[int, int, float], list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(r.batch_key(), []).append(i)
        for rows in groups.values():
            out.update(zip(rows, self._call([requests[i] for i in rows])))
        return [out[i] for i in range(len(requests))]

    def _call(self, requests: list[ImageRequest]) -> list[bytes]:
        import torch

        first = requests[0]
        out = self.pipe(
            prompt=[r.prompt for r in requests], negative_prompt=[""] * len(requests), height=first.size,
            width=first.size, num_inference_steps=first.steps, guidance_scale=first.guidance,
            generator=[torch.Generator("cpu").manual_seed(r.seed % 2**64) for r in requests], output_type="pil")
        return [_png(img) for img in out.images]
