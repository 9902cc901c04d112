"""POST /v1/embeddings → VisionLanguage Embed: texts and images in one L2-normalised space.

``input`` is a string, a list of strings, or a list mixing strings and image parts
``{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}`` (one part alone
works too): one embedding per item, in order. vLLM's multimodal form, ``messages`` with one
user message holding one image (or one text) part, gives that item's embedding.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from services.openai.errors import invalid
from services.openai.inputs import image_bytes
from services.openai.schemas import ContentPart, EmbeddingRequest
from services.openai.settings import Settings
from services.openai.streaming import cancel_on_disconnect
from services.openai.upstream import VL, Upstreams
from unfragile.common.v1 import common_pb2 as cpb
from unfragile.visionlanguage.v1 import visionlanguage_pb2 as pb

router = APIRouter()


def _image_url(item: dict[str, Any], param: str) -> str:
    if item.get("type") != "image_url":
        raise invalid(f"{param}: items are strings or {{\"type\": \"image_url\", \"image_url\": {{\"url\": ...}}}}; "
                      f"got type {item.get('type')!r}", param)
    ref = item.get("image_url")
    url = ref.get("url") if isinstance(ref, dict) else ref
    if not isinstance(url, str) or not url:
        raise invalid(f"{param}.image_url needs a url (data:image/png;base64,...)", param)
    return url


def _items(body: EmbeddingRequest) -> list[tuple[str, str, str]]:
    """(kind, value, param) per item: ("text", text, ...) or ("image", url, ...)."""
    if body.messages is not None:
        if body.input is not None:
            raise invalid("send either input or messages, not both", "messages")
        parts: list[tuple[int, str | ContentPart]] = []
        for m in body.messages:
            parts += enumerate([m.content] if isinstance(m.content, str) else (m.content or []))
        if len(parts) != 1:
            raise invalid(f"messages must hold exactly one content part (one image or one text) to embed; got "
                          f"{len(parts)} (use input=[...] for several items)", "messages")
        i, part = parts[0]
        if isinstance(part, str):
            return [("text", part, "messages.content")]
        if part.type == "text":
            return [("text", part.text or "", f"messages.content.{i}")]
        return [("image", _image_url(part.model_dump(), f"messages.content.{i}"), f"messages.content.{i}")]
    raw = body.input
    if raw is None:
        raise invalid("input is required: a string, a list of strings, or image_url parts", "input")
    entries = raw if isinstance(raw, list) else [raw]
    if not entries:
        raise invalid("input is empty: send at least one string or image", "input")
    out = []
    for i, item in enumerate(entries):
        param = f"input.{i}" if isinstance(raw, list) else "input"
        if isinstance(item, str):
            out.append(("text", item, param))
        elif isinstance(item, dict):
            out.append(("image", _image_url(item, param), param))
        elif isinstance(item, int | list):
            raise invalid("token-id input is not supported: send the text (Kosmos-2's Embed tokenizes it)", param)
        else:
            raise invalid(f"{param} must be a string or an image_url part", param)
    return out


def _encode(values: Any, fmt: str) -> list[float] | str:
    if fmt == "base64":  # little-endian float32, as OpenAI's API and SDK use
        return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
    return list(values)


@router.post("/v1/embeddings", summary="Embeddings of texts and images (Kosmos-2)")
async def embeddings(body: EmbeddingRequest, request: Request) -> Response:
    ups: Upstreams = request.app.state.upstreams
    settings: Settings = request.app.state.settings
    model = await ups.resolve(body.model, VL)
    items = _items(body)
    req = pb.EmbedRequest(model=model)
    for kind, value, param in items:
        if kind == "text":
            req.texts.append(value)
        else:
            req.images.append(cpb.Image(data=await image_bytes(value, settings, param)))
    resp = await cancel_on_disconnect(request, ups.unary(VL, "Embed", req, settings.chat_timeout_s))
    if body.dimensions is not None and body.dimensions != resp.dim:
        raise invalid(f"dimensions={body.dimensions} is not available: this model's embeddings have {resp.dim} "
                      "dimensions (leave dimensions out)", "dimensions")
    texts, images = iter(resp.text_embeddings), iter(resp.image_embeddings)
    data = []
    for index, (kind, _value, _param) in enumerate(items):
        vector = next(texts if kind == "text" else images).values
        data.append({"object": "embedding", "index": index, "embedding": _encode(vector, body.encoding_format)})
    tokens = 0  # Embed reports no token counts
    return JSONResponse({"object": "list", "data": data, "model": model,
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
