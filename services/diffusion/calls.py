"""One pipeline call per batch, per mode: the arguments each diffusers pipeline takes.

Every image of the batch gets its own prompt, negative prompt and ``torch.Generator``
(on CPU, so the noise is the same on any device). Each distinct text of the batch goes
through the text encoders once (``encode_texts``): what diffusers' ``num_images_per_prompt``
does within one request, across requests — several images of one prompt, and the negative
prompt most requests share. TextToImage on SDXL with a refiner
runs the base on the first part of the schedule (``denoising_end``) and the refiner on
the rest (``denoising_start``) on the same latents, with one continuous progress count.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from PIL import Image

from services.diffusion.engine import BatchItem

if TYPE_CHECKING:
    from services.diffusion.runner import DiffusersRunner

Callback = Callable[[Any, int, Any, dict[str, Any]], dict[str, Any]]
Inputs = list[tuple[Image.Image, Image.Image]]  # (input image, mask) per image; the mask only for inpaint


Texts = tuple[list[str], list[str]]  # (prompt, negative prompt) per image


def _common(pipe: Any, items: Sequence[BatchItem], callback: Callback) -> tuple[dict[str, Any], Texts]:
    """The pipeline arguments every mode shares, and the texts of every image."""
    import torch

    p = items[0].request.params
    prompts, negatives, gens = [], [], []
    for it in items:
        for seed in it.seeds:
            prompts.append(it.request.params.prompt)
            negatives.append(it.request.params.negative_prompt)
            gens.append(torch.Generator("cpu").manual_seed(seed % 2**64))
    common: dict[str, Any] = dict(num_inference_steps=p.steps, guidance_scale=p.guidance_scale, generator=gens)
    if "callback_on_step_end" in inspect.signature(pipe.__call__).parameters:
        common |= dict(callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["latents"])
    else:  # older pipelines (SD 1.x T2I-Adapter) report steps through callback(step, t, latents)
        total = _Total(p.steps)
        common |= dict(callback=lambda i, t, latents: callback(total, i, t, {"latents": latents}), callback_steps=1)
    return common, (prompts, negatives)


def encode_texts(runner: DiffusersRunner, pipe: Any, prompts: list[str], negatives: list[str]) -> dict[str, Any]:
    """Prompt embeddings for ``pipe`` with each distinct text encoded once, in one encoder batch.

    A negative prompt goes through the same encoder path as a prompt in every family's
    ``encode_prompt`` (padding to the encoders' length, the same hidden layer and pooling),
    so one embedding serves a text wherever it occurs.
    """
    import torch

    guided = runner.family.negative_prompt  # FLUX.1 is guidance-distilled: no negative side at all
    texts = list(dict.fromkeys(prompts + negatives if guided else prompts))
    args: dict[str, Any] = dict(device=runner.device, num_images_per_prompt=1)
    if runner.family.key == "sd3":
        args.update(prompt_2=None, prompt_3=None, max_sequence_length=runner.load_config.t5_max_tokens)
    if guided:
        args.update(do_classifier_free_guidance=False)
    else:
        args.update(prompt_2=None, max_sequence_length=runner.load_config.t5_max_tokens)
    with torch.no_grad():
        encoded = pipe.encode_prompt(texts, **args)
    row = {t: i for i, t in enumerate(texts)}
    pos = [row[t] for t in prompts]
    if not guided:  # (T5 sequence, CLIP pooled, text ids)
        return {"prompt_embeds": encoded[0][pos], "pooled_prompt_embeds": encoded[1][pos]}
    neg = [row[t] for t in negatives]
    out = {"prompt_embeds": encoded[0][pos], "negative_prompt_embeds": encoded[0][neg]}
    if len(encoded) == 4:  # SDXL and SD 3 also pool the last text encoder's output
        out |= {"pooled_prompt_embeds": encoded[2][pos], "negative_pooled_prompt_embeds": encoded[2][neg]}
    return out


def pipeline_call(runner: DiffusersRunner, pipe: Any, items: Sequence[BatchItem], inputs: Inputs,
                  callback: Callback, extra: dict[str, Any] | None = None) -> list[Image.Image]:
    """Run ``pipe`` once for the whole batch; PIL images in batch order (inpaint: unmasked pixels restored).

    ``extra``: the control arguments (control maps, scales, IP-Adapter embeddings) of a controlled batch;
    such a batch runs the SDXL base alone (the refiner takes no controls).
    """
    import torch

    first = items[0].request
    p, mode = first.params, first.mode
    common, texts = _common(pipe, items, callback)
    if mode == "txt2img" and runner.pipes.refiner is not None and not extra:
        return _with_refiner(runner, pipe, common, texts, p.height, p.width)
    common |= encode_texts(runner, pipe, *texts) | (extra or {})
    if runner.family.packed_latents and mode != "txt2img":  # FLUX.1's img2img would resize to 1024 otherwise
        common |= {"height": p.height, "width": p.width}
    if mode == "txt2img":
        out = pipe(height=p.height, width=p.width, output_type="pil", **common)
    elif mode == "img2img":
        out = pipe(image=[img for img, _ in inputs], strength=first.strength, output_type="pil", **common)
    elif mode == "style":
        latents = []
        for it in items:
            content, style = it.request.image, it.request.style_image
            assert content is not None and style is not None, "validated by GenerateRequest.from_pb"
            c, s = runner.encode_latents([content, style]).chunk(2)
            latents.extend([adain_blend(c, s, it.request.style_weight)] * len(it.seeds))
        out = pipe(image=torch.cat(latents), strength=first.strength, output_type="pil", **common)
    else:  # inpaint
        common |= {"height": p.height, "width": p.width}
        out = pipe(image=[img for img, _ in inputs], mask_image=[mask for _, mask in inputs],
                   strength=first.strength, output_type="pil", **common)
        return [restore_unmasked(orig, img, mask) for (orig, mask), img in zip(inputs, out.images)]
    return list(out.images)


def adain_blend(content: Any, style: Any, weight: float) -> Any:
    """Latent-space style blend, exactly as documented on StyleTransferRequest.

    Per channel: a = (c - mean c) / std c * std s + mean s; result (1-w) c + w a.
    """
    dims = (-2, -1)
    c_mean, c_std = content.mean(dims, keepdim=True), content.std(dims, keepdim=True) + 1e-5
    s_mean, s_std = style.mean(dims, keepdim=True), style.std(dims, keepdim=True)
    adain = (content - c_mean) / c_std * s_std + s_mean
    return (1.0 - weight) * content + weight * adain


def restore_unmasked(original: Image.Image, generated: Image.Image, mask: Image.Image) -> Image.Image:
    """Copy original pixels back wherever the mask is black, so they are byte-exact."""
    import numpy as np

    orig = np.asarray(original.convert("RGB"))
    gen = np.asarray(generated.convert("RGB").resize(original.size))
    keep = np.asarray(mask.convert("L")) < 128
    out = np.where(keep[..., None], orig, gen)
    return Image.fromarray(out.astype(np.uint8), "RGB")


def _with_refiner(runner: DiffusersRunner, base: Any, common: dict[str, Any], texts: Texts, height: int,
                  width: int) -> list[Image.Image]:
    """SDXL base then refiner on one schedule; progress counts both parts as one run of ``steps``."""
    split = 1.0 - runner.load_config.refiner_fraction
    total = common["num_inference_steps"]
    report = common["callback_on_step_end"]
    done = [0]

    def counted(pipe: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        done[0] += 1
        return report(_Total(total), done[0] - 1, t, kwargs)

    common = common | {"callback_on_step_end": counted}
    refiner = runner.pipes.refiner
    latents = base(height=height, width=width, denoising_end=split, output_type="latent", **common,
                   **encode_texts(runner, base, *texts)).images
    out = refiner(image=latents, denoising_start=split, output_type="pil", **common,
                  **encode_texts(runner, refiner, *texts))
    return list(out.images)


class _Total:
    """Stands in for the pipeline in the step callback: reports the steps of base + refiner."""

    def __init__(self, total: int) -> None:
        self.num_timesteps = total
