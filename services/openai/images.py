"""POST /v1/images/generations and /v1/images/edits → Diffusion TextToImage / Inpaint / ImageToImage.

Generations: ``prompt``, ``n``, ``size`` and Stable Diffusion's own knobs (extra_body) become
GenerationParams. Edits (multipart): ``image`` + ``mask`` → Inpaint (the service copies the
pixels outside the mask back byte for byte and refuses a mask of another size, naming both);
``image`` alone → ImageToImage with ``strength``. The service answers PNG; ``output_format``
jpeg/webp re-encodes it here. ``stream`` with ``partial_images`` streams previews the service
takes every step, ``partial_images`` of them evenly spread, then one completed event per image.
Both endpoints take the control extensions (``controls.py``); edits send ``controls`` as one JSON
form field and may send control / reference images as file parts.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from pydantic import Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.responses import JSONResponse, Response

from services.openai import metrics
from services.openai.controls import add_controls, control_maps
from services.openai.errors import APIError, invalid
from services.openai.inputs import upload_bytes
from services.openai.schemas import ImageGenerationRequest
from services.openai.settings import Settings
from services.openai.streaming import SSE_HEADERS, DisconnectAwareStream, cancel_on_disconnect, peek, sse
from services.openai.upstream import DIFFUSION, Upstreams
from unfragile.common.v1 import common_pb2 as cpb
from unfragile.diffusion.v1 import diffusion_pb2 as pb

router = APIRouter()
SIZE = re.compile(r"^\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*$")
MEDIA = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


class ImageEditRequest(ImageGenerationRequest):
    """The multipart fields of /v1/images/edits besides the files."""

    strength: float | None = Field(None, gt=0, le=1, description="Noise strength (extension): image-to-image "
                                                                 "without a mask (default 0.75), inpainting "
                                                                 "with one (default 1.0).")


def _size(size: str | None) -> tuple[int, int]:
    if size in (None, "", "auto"):
        return 0, 0
    m = SIZE.match(size)
    if not m:
        raise invalid(f'size must be "WIDTHxHEIGHT" (e.g. "512x512") or "auto", got {size!r}', "size")
    return int(m[1]), int(m[2])


def params(body: ImageGenerationRequest) -> pb.GenerationParams:
    """GenerationParams of a request (the service validates the values and names what to change)."""
    if body.response_format == "url":
        raise invalid('response_format "url" is not supported: this server keeps no image files; use "b64_json"',
                      "response_format", "unsupported_parameter")
    if body.background == "transparent":
        raise invalid('background "transparent" is not supported: Stable Diffusion paints opaque images',
                      "background", "unsupported_parameter")
    width, height = _size(body.size)
    p = pb.GenerationParams(prompt=body.prompt, negative_prompt=body.negative_prompt or "", width=width,
                            height=height, steps=body.num_inference_steps or 0, num_images=body.n or 1,
                            scheduler=body.scheduler or "")
    if body.guidance_scale is not None:
        p.guidance_scale = body.guidance_scale
    if body.seed is not None:
        p.seed = body.seed
    for spec in [body.adapter] if isinstance(body.adapter, str) else (body.adapter or []):
        name, _, weight = spec.partition(":")
        try:
            p.adapters.append(pb.AdapterWeight(name=name, weight=float(weight)) if weight
                              else pb.AdapterWeight(name=name))
        except ValueError:
            raise invalid(f'adapter must be "name" or "name:weight", got {spec!r}', "adapter") from None
    if body.stream and body.partial_images:
        p.preview_every = 1  # approximate previews (nearly free); partial_images of them are forwarded
        p.preview_mode = pb.PREVIEW_MODE_APPROX
    return p


def _encode(png: bytes, fmt: str, quality: int | None, size: tuple[int, int] | None = None) -> bytes:
    """PNG bytes from the service as ``fmt`` (re-encoded with Pillow unless png), resized to ``size`` if given."""
    if fmt == "png" and size is None:
        return png
    from PIL import Image

    img: Any = Image.open(io.BytesIO(png))
    img.load()
    if size is not None and img.size != size:
        img = img.resize(size, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, format="PNG")
    else:
        img.convert("RGB").save(buf, format=MEDIA[fmt], quality=quality if quality is not None else 90)
    return buf.getvalue()


async def b64(png: bytes, fmt: str, quality: int | None, size: tuple[int, int] | None = None) -> str:
    data = png if fmt == "png" and size is None else await asyncio.to_thread(_encode, png, fmt, quality, size)
    return base64.b64encode(data).decode()


async def _result(events: AsyncIterator[pb.GenerateEvent]) -> pb.GeneratedImages:
    """The result event; the stream is read to its end (its OK status), so the call finishes normally."""
    result = None
    async for ev in events:
        if ev.WhichOneof("event") == "result":
            result = ev.result
    if result is None:
        raise APIError(502, "the Diffusion stream ended without a result")
    return result


def _usage(result: pb.GeneratedImages, input_images: int) -> dict[str, Any]:
    """OpenAI's usage shape; the Diffusion service counts no tokens, so the token fields are 0 and
    ``images``/``steps`` say what was done."""
    return {"input_tokens": 0, "input_tokens_details": {"text_tokens": 0, "image_tokens": 0}, "output_tokens": 0,
            "total_tokens": 0, "images": len(result.images), "input_images": input_images, "steps": result.steps}


async def _answer(request: Request, rpc: str, req: Any, body: ImageGenerationRequest, operation: str,
                  input_images: int) -> Response:
    ups: Upstreams = request.app.state.upstreams
    settings: Settings = request.app.state.settings
    fmt = body.output_format or "png"
    stream = ups.stream(DIFFUSION, rpc, req, settings.image_timeout_s)
    if body.stream:
        first, events = await peek(stream)  # a refused request is an HTTP error, not an event
        if first is None:
            raise APIError(502, "the Diffusion stream ended without an event")
        return DisconnectAwareStream(_events(events, body, operation, input_images), media_type="text/event-stream",
                                     headers=SSE_HEADERS)
    result = await cancel_on_disconnect(request, _result(stream))
    metrics.IMAGES.labels(operation).inc(len(result.images))
    data = [{"b64_json": await b64(img.image.data, fmt, body.output_compression), "revised_prompt": None,
             "seed": img.seed} for img in result.images]
    first_image = result.images[0] if result.images else None
    return JSONResponse({"created": int(time.time()), "data": data, "output_format": fmt, "background": "opaque",
                         "size": f"{first_image.width}x{first_image.height}" if first_image else None,
                         "usage": _usage(result, input_images), **control_maps(result, body)})


def _pick(total: int, k: int) -> set[int]:
    """``k`` preview steps evenly spread over 1..total-1 (previews are never sent for the last step)."""
    if total <= 1 or k <= 0:
        return set()
    return {max(1, min(total - 1, round((i + 1) * total / (k + 1)))) for i in range(k)}


async def _events(events: AsyncIterator[pb.GenerateEvent], body: ImageGenerationRequest, operation: str,
                  input_images: int) -> AsyncIterator[bytes]:
    """SSE: ``image_generation.partial_image`` (``image_edit.*`` for edits) events, then one
    ``.completed`` event per image with usage."""
    kind = "image_generation" if operation == "generations" else "image_edit"
    fmt = body.output_format or "png"
    width, height = _size(body.size)
    wanted: set[int] = set()
    counts: dict[int, int] = {}  # partial images sent, per image index
    start = time.perf_counter()
    common = {"background": "opaque", "output_format": fmt, "quality": "auto"}
    try:
        async for ev in events:
            which = ev.WhichOneof("event")
            if which == "progress" and not wanted:
                wanted = _pick(ev.progress.total_steps, body.partial_images or 0)
            elif which == "preview" and ev.preview.step in wanted:
                index = ev.preview.index
                size = (width, height) if width and height else None
                image = await b64(ev.preview.image.data, fmt, body.output_compression, size)
                if not counts:
                    metrics.TTFT.labels(f"/v1/images/{operation}").observe(time.perf_counter() - start)
                yield sse({"type": f"{kind}.partial_image", "b64_json": image, "created_at": int(time.time()),
                           "partial_image_index": counts.get(index, 0), "index": index, "step": ev.preview.step,
                           "size": f"{width}x{height}" if size else "auto", **common},
                          event=f"{kind}.partial_image")
                counts[index] = counts.get(index, 0) + 1
            elif which == "result":
                result = ev.result
                metrics.IMAGES.labels(operation).inc(len(result.images))
                maps = control_maps(result, body)
                for i, img in enumerate(result.images):
                    yield sse({"type": f"{kind}.completed", "b64_json": await b64(img.image.data, fmt,
                                                                                   body.output_compression),
                               "created_at": int(time.time()), "index": i, "seed": img.seed,
                               "size": f"{img.width}x{img.height}", "usage": _usage(result, input_images), **maps,
                               **common},
                              event=f"{kind}.completed")
    except APIError as err:
        yield sse(err.body(), event="error")


@router.post("/v1/images/generations", summary="Text to image (Stable Diffusion)")
async def generations(body: ImageGenerationRequest, request: Request) -> Response:
    ups: Upstreams = request.app.state.upstreams
    await ups.resolve(body.model, DIFFUSION)
    p = params(body)
    await add_controls(p, body, request.app.state.settings)
    return await _answer(request, "TextToImage", pb.TextToImageRequest(params=p), body, "generations", 0)


def _files(form: Any, name: str) -> list[UploadFile]:
    return [f for f in [*form.getlist(name), *form.getlist(f"{name}[]")] if isinstance(f, UploadFile)]


LIST_FIELDS = ("adapter", "reference_images")  # repeated (or name[]) form fields that are lists


def _form_fields(form: Any) -> dict[str, Any]:
    """The text fields of an edit: ``name[]`` and repeats of a list field collected into a list (the SDKs send
    extra_body lists that way), ``controls`` parsed from its JSON string; other repeats: the last one wins."""
    fields: dict[str, Any] = {}
    for key, value in form.multi_items():
        if not isinstance(value, str):
            continue
        name = key.removesuffix("[]")
        if name.startswith("controls["):  # what the SDKs make of a list of objects in extra_body
            raise invalid(f"form field {key!r}: send controls as one form field holding their JSON list, e.g. "
                          "extra_body={\"controls\": json.dumps([{\"controlnet\": ..., \"image\": ...}])}",
                          "controls")
        if name in LIST_FIELDS:
            fields.setdefault(name, []).append(value)
        else:
            fields[name] = value
    refs = fields.get("reference_images")
    if refs and len(refs) == 1 and refs[0].lstrip().startswith("["):  # one field holding a JSON list
        fields["reference_images"] = _json(refs[0], "reference_images")
    if "adapter" in fields and len(fields["adapter"]) == 1:
        fields["adapter"] = fields["adapter"][0]
    if "controls" in fields:
        fields["controls"] = _json(fields["controls"], "controls")
    return fields


def _json(text: str, param: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise invalid(f"{param} must be JSON ({exc})", param) from None


@router.post("/v1/images/edits", summary="Inpainting with a mask, image-to-image without (Stable Diffusion)")
async def edits(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    ups: Upstreams = request.app.state.upstreams
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise invalid("/v1/images/edits takes multipart/form-data (image, mask and the other fields as form parts)")
    async with request.form(max_files=16, max_fields=64) as form:
        images, masks = _files(form, "image"), _files(form, "mask")
        if len(images) != 1:
            raise invalid(f"send exactly one image file (got {len(images)})", "image")
        if len(masks) > 1:
            raise invalid("send at most one mask file", "mask")
        fields = _form_fields(form)
        try:
            body = ImageEditRequest.model_validate(fields)
        except ValidationError as exc:
            e = exc.errors()[0]
            param = ".".join(str(p) for p in e["loc"]) or "body"
            raise invalid(f"{param}: {e['msg']} (got {str(e.get('input'))[:80]!r})", param) from None
        image = upload_bytes(await images[0].read(settings.max_image_bytes + 1), settings.max_image_bytes, "image")
        mask = (upload_bytes(await masks[0].read(settings.max_image_bytes + 1), settings.max_image_bytes, "mask")
                if masks else None)
        controls = [upload_bytes(await f.read(settings.max_image_bytes + 1), settings.max_image_bytes,
                                 f"control_image[{i}]") for i, f in enumerate(_files(form, "control_image"))]
        references = [upload_bytes(await f.read(settings.max_image_bytes + 1), settings.max_image_bytes,
                                   f"reference_image[{i}]") for i, f in enumerate(_files(form, "reference_image"))]
    await ups.resolve(body.model, DIFFUSION)
    p = params(body)
    await add_controls(p, body, settings, controls, references)
    req: Any
    if mask is not None:
        req = pb.InpaintRequest(params=p, image=cpb.Image(data=image), mask=cpb.Image(data=mask))
        rpc = "Inpaint"
    else:
        req = pb.ImageToImageRequest(params=p, image=cpb.Image(data=image))
        rpc = "ImageToImage"
    if body.strength is not None:
        req.strength = body.strength
    return await _answer(request, rpc, req, body, "edits", 1)
