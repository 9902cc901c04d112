"""POST /v1/chat/completions → VisionLanguage Caption / StreamCaption (Kosmos-2).

Kosmos-2 answers about one image from one prompt; it has no chat template. So the request's
one image (in any user message) and the text of its *last* user message become one
CaptionRequest: no text → the brief grounded caption; text → Kosmos-2's free prompt mode
(``mode`` in extra_body picks question, detailed or phrases instead). System and earlier
turns are not shown to the model (docs/openai.md lists this and every other difference).
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from services.openai import metrics
from services.openai.errors import APIError, invalid
from services.openai.inputs import image_bytes
from services.openai.schemas import ChatCompletionRequest, Message
from services.openai.settings import Settings
from services.openai.streaming import SSE_HEADERS, DisconnectAwareStream, cancel_on_disconnect, peek, sse
from services.openai.upstream import VL, Upstreams
from unfragile.common.v1 import common_pb2 as cpb
from unfragile.visionlanguage.v1 import visionlanguage_pb2 as pb

router = APIRouter()
ROUTE = "/v1/chat/completions"
# Completion ids: unique per process start + a counter (uuid4 per request costs a getrandom call each).
_IDS = itertools.count(1)
_ID_PREFIX = os.urandom(6).hex()
FINISH = {pb.FINISH_REASON_LENGTH: "length", pb.FINISH_REASON_EOS: "stop", pb.FINISH_REASON_STOP_SEQUENCE: "stop"}


def _parts(message: Message) -> list[tuple[str, str]]:
    """(kind, value) of each content part: ("text", text) or ("image", url)."""
    if message.content is None:
        return []
    if isinstance(message.content, str):
        return [("text", message.content)]
    out = []
    for i, part in enumerate(message.content):
        if part.type == "text":
            out.append(("text", part.text or ""))
        elif part.type == "image_url":
            if not part.url():
                raise invalid("an image_url content part has no url", f"messages.content.{i}.image_url")
            out.append(("image", part.url()))
        else:
            raise invalid(f"content part type {part.type!r} is not supported; use text and image_url",
                          f"messages.content.{i}.type")
    return out


async def caption_request(body: ChatCompletionRequest, model: str, settings: Settings) -> pb.CaptionRequest:
    """The one CaptionRequest a chat request stands for."""
    users = [m for m in body.messages if m.role == "user"]
    if not users:
        raise invalid("messages has no user message", "messages")
    images = [url for m in users for kind, url in _parts(m) if kind == "image"]
    if len(set(images)) != 1:
        found = "no image" if not images else f"{len(set(images))} different images"
        raise invalid(f"Kosmos-2 answers about exactly one image per request; the user messages hold {found}. "
                      'Add one content part {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}',
                      "messages")
    data = await image_bytes(images[0], settings, "image_url")
    text = " ".join(t.strip() for kind, t in _parts(users[-1]) if kind == "text" and t.strip())
    mode = body.mode or ("prompt" if text else "brief")
    req = pb.CaptionRequest(image=cpb.Image(data=data), mode=getattr(pb, f"CAPTION_MODE_{mode.upper()}"),
                            prompt=text, phrases=body.phrases or [], language=body.language or "", model=model)
    if body.grounding is not None:
        req.grounding = body.grounding
    s = req.sampling
    s.max_new_tokens = body.max_completion_tokens or body.max_tokens or 0
    s.temperature = body.temperature or 0.0
    s.top_p = body.top_p if body.top_p is not None else 0.0
    s.top_k = body.top_k or 0
    s.num_beams = body.num_beams or 0
    s.stop.extend(body.stops())
    if body.seed is not None:
        s.seed = body.seed
    return req


def grounding(resp: pb.CaptionResponse) -> list[dict[str, Any]]:
    """Entities as {phrase, span, boxes, boxes_px}; ``span`` indexes the message content (null when the
    phrase is in the prompt part, e.g. phrases mode), boxes are normalised [x_min, y_min, x_max, y_max]."""
    at = resp.text.rfind(resp.completion) if resp.completion else -1
    out = []
    for e in resp.entities:
        start, end = e.start - at, e.end - at
        inside = at >= 0 and 0 <= start <= end <= len(resp.completion)
        out.append({"phrase": e.phrase, "span": [start, end] if inside else None,
                    "boxes": [[b.x_min, b.y_min, b.x_max, b.y_max] for b in e.boxes],
                    "boxes_px": [[b.x_min_px, b.y_min_px, b.x_max_px, b.y_max_px] for b in e.boxes]})
    return out


def usage(resp: pb.CaptionResponse) -> dict[str, int]:
    prompt, completion = resp.usage.prompt_tokens, resp.usage.completion_tokens
    metrics.TOKENS.labels("prompt").inc(prompt)
    metrics.TOKENS.labels("completion").inc(completion)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _message(resp: pb.CaptionResponse, body: ChatCompletionRequest) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": resp.completion, "refusal": None}
    if body.grounding:
        message["grounding"] = grounding(resp)
    return message


@router.post(ROUTE, summary="Chat completion about one image (Kosmos-2)")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    body.unsupported()
    ups: Upstreams = request.app.state.upstreams
    settings: Settings = request.app.state.settings
    model = await ups.resolve(body.model, VL)
    req = await caption_request(body, model, settings)
    cid, created = f"chatcmpl-{_ID_PREFIX}{next(_IDS):08x}", int(time.time())
    if body.stream:
        first, chunks = await peek(ups.stream(VL, "StreamCaption", req, settings.chat_timeout_s))
        if first is None:
            raise APIError(502, "the VisionLanguage stream ended without a message")
        return DisconnectAwareStream(_stream(chunks, body, cid, created, model, time.perf_counter()),
                                     media_type="text/event-stream", headers=SSE_HEADERS)
    resp = await cancel_on_disconnect(request, ups.unary(VL, "Caption", req, settings.chat_timeout_s))
    return JSONResponse({
        "id": cid, "object": "chat.completion", "created": created, "model": model, "system_fingerprint": None,
        "choices": [{"index": 0, "message": _message(resp, body), "logprobs": None,
                     "finish_reason": FINISH.get(resp.finish_reason, "stop")}],
        "usage": usage(resp), "seed": resp.seed})


async def _stream(chunks: AsyncIterator[pb.CaptionChunk], body: ChatCompletionRequest, cid: str, created: int,
                  model: str, start: float) -> AsyncIterator[bytes]:
    """SSE: a role chunk, content deltas, a finishing chunk, the usage chunk if asked, [DONE]."""
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        out: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                               "system_fingerprint": None,
                               "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if include_usage:
            out["usage"] = None
        return sse(out)

    yield chunk({"role": "assistant", "content": ""})
    final, sent = None, ""
    try:
        async for c in chunks:
            if c.queue_position:
                yield f": queued, position {c.queue_position}\n\n".encode()
            delta = c.delta
            if c.HasField("final"):
                final = c.final
                # phrases mode and beam search send the whole completion in the final chunk only
                if final.completion.startswith(sent + delta):
                    delta = final.completion[len(sent):]
            if delta:
                if not sent:
                    metrics.TTFT.labels(ROUTE).observe(time.perf_counter() - start)
                sent += delta
                yield chunk({"content": delta})
    except APIError as err:  # after the 200 went out: OpenAI's in-stream error event
        yield sse(err.body())
        return
    if final is None:
        yield sse(APIError(502, "the VisionLanguage stream ended without its final message").body())
        return
    yield chunk({"grounding": grounding(final)} if body.grounding else {}, FINISH.get(final.finish_reason, "stop"))
    tokens = usage(final)
    if include_usage:
        yield sse({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                   "system_fingerprint": None, "choices": [], "usage": tokens})
    yield b"data: [DONE]\n\n"
