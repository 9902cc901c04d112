"""Requests of the VisionLanguage service, validated on their way in from protobuf.

Every request is validated here (``from_pb``) before it reaches the engine, so the
engine and runner only see well-formed requests and every client mistake becomes
``InvalidArgument``/``NotFound`` with a message saying what to change.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image as PILImage
from pydantic import ConfigDict

from common.errors import InvalidArgument, NotFound
from services.core.images import decode_image
from services.visionlanguage import grounding as g
from services.visionlanguage.prompts import GROUNDING, TEMPLATES
from services.visionlanguage.settings import RequestLimits
from unfragile.common.v1 import common_pb2
from unfragile.visionlanguage.v1 import visionlanguage_pb2 as pb

MAX_STOP = 4
MAX_STOP_CHARS = 64
MAX_PHRASES = 16
MAX_EMBED_ITEMS = 32
MAX_TEMPERATURE = 5.0
MIN_TEMPERATURE = 1e-3
MAX_PROMPT_CHARS = 4000

MODES = {
    pb.CAPTION_MODE_UNSPECIFIED: "brief",
    pb.CAPTION_MODE_BRIEF: "brief",
    pb.CAPTION_MODE_DETAILED: "detailed",
    pb.CAPTION_MODE_PROMPT: "prompt",
    pb.CAPTION_MODE_QUESTION: "question",
    pb.CAPTION_MODE_PHRASES: "phrases",
}


class Limits(RequestLimits):
    """The request limits plus the served model's id: what validation needs."""

    model_config = ConfigDict(frozen=True)

    model_id: str


def check_model(name: str, limits: Limits) -> None:
    if name and name != limits.model_id:
        raise NotFound(f"model {name!r} is not served here; this server serves {limits.model_id!r} (or send model='')")


@dataclass(frozen=True)
class ImageInput:
    """A decoded image plus the content hash the feature cache is keyed by."""

    image: PILImage.Image
    digest: str

    @property
    def width(self) -> int:
        return self.image.width

    @property
    def height(self) -> int:
        return self.image.height

    @classmethod
    def from_pb(cls, img: common_pb2.Image, limits: Limits, field_name: str = "image") -> ImageInput:
        data = bytes(img.data)
        decoded = decode_image(data, max_pixels=limits.max_image_pixels, field=field_name)
        return cls(decoded, hashlib.sha256(data).hexdigest())

    @classmethod
    def from_pil(cls, image: PILImage.Image) -> ImageInput:
        rgb = image.convert("RGB")
        return cls(rgb, hashlib.sha256(rgb.tobytes() + repr(rgb.size).encode()).hexdigest())


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 20
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    num_beams: int = 1
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @classmethod
    def from_pb(cls, s: pb.SamplingParams, limits: Limits) -> Sampling:
        max_new = s.max_new_tokens or limits.default_max_new_tokens
        if max_new > limits.max_new_tokens_limit:
            raise InvalidArgument(
                f"sampling.max_new_tokens={max_new} is over this server's limit of "
                f"{limits.max_new_tokens_limit}; lower it"
            )
        if not (s.temperature == s.temperature) or not (0.0 <= s.temperature <= MAX_TEMPERATURE):
            raise InvalidArgument(
                f"sampling.temperature must be in [0, {MAX_TEMPERATURE}] (0 = greedy), got {s.temperature}")
        if 0.0 < s.temperature < MIN_TEMPERATURE:  # logits / ~0 overflow to inf: sampling would fail
            raise InvalidArgument(f"sampling.temperature {s.temperature} is too small to sample with; use 0 for "
                                  f"greedy decoding or at least {MIN_TEMPERATURE}")
        if not (0.0 <= s.top_p <= 1.0):
            raise InvalidArgument(f"sampling.top_p must be in [0, 1] (0 or 1 = off), got {s.top_p}")
        top_p = 1.0 if s.top_p == 0.0 else float(s.top_p)
        beams = max(1, s.num_beams)
        if beams > 8:
            raise InvalidArgument(f"sampling.num_beams must be at most 8, got {s.num_beams}")
        if s.temperature == 0.0 and (top_p < 1.0 or s.top_k > 0):
            raise InvalidArgument(
                "sampling.top_p/top_k only apply when sampling: set temperature > 0, "
                "or clear top_p and top_k for greedy"
            )
        if beams > 1 and s.temperature > 0.0:
            raise InvalidArgument(
                "beam search is deterministic: set temperature=0 with num_beams > 1, or num_beams=1 to sample")
        if len(s.stop) > MAX_STOP:
            raise InvalidArgument(f"at most {MAX_STOP} stop sequences, got {len(s.stop)}")
        for i, stop in enumerate(s.stop):
            if not (1 <= len(stop) <= MAX_STOP_CHARS):
                raise InvalidArgument(f"sampling.stop[{i}] must be 1-{MAX_STOP_CHARS} characters, got {len(stop)}")
        seed = int(s.seed) if s.HasField("seed") else None
        return cls(max_new, float(s.temperature), top_p, int(s.top_k), beams, seed, tuple(s.stop))


@dataclass(frozen=True)
class CaptionRequest:
    """One generation request. ``prompts`` has one entry per sequence (PHRASES: one per phrase)."""

    image: ImageInput
    mode: str
    prompts: tuple[str, ...]
    language: str
    sampling: Sampling

    @classmethod
    def from_pb(cls, req: pb.CaptionRequest, limits: Limits) -> CaptionRequest:
        check_model(req.model, limits)
        if req.mode not in MODES:
            raise InvalidArgument(f"unknown mode {req.mode}; use one of {', '.join(pb.CaptionMode.keys())}")
        mode = MODES[req.mode]
        language = req.language.strip().lower() or "en"
        if language not in TEMPLATES:
            raise InvalidArgument(f"language {req.language!r} is not supported; use one of {', '.join(TEMPLATES)}")
        if not req.HasField("image") or not req.image.data:
            raise InvalidArgument("image is missing: send image.data with the bytes of a PNG, JPEG, WebP, BMP or GIF")
        grounding = req.grounding if req.HasField("grounding") else mode in ("brief", "detailed", "phrases")
        prompts = build_prompts(mode, req.prompt, list(req.phrases), language, grounding)
        sampling = Sampling.from_pb(req.sampling, limits)
        if mode == "phrases" and sampling.num_beams > 1:
            raise InvalidArgument("PHRASES mode does not support beam search; set num_beams to 0 or 1")
        image = ImageInput.from_pb(req.image, limits)
        return cls(image, mode, prompts, language, sampling)


def build_prompts(mode: str, prompt: str, phrases: Sequence[str], language: str, grounding: bool) -> tuple[str, ...]:
    """The prompt text(s) for a mode, in Kosmos-2's own formats."""
    tpl = TEMPLATES[language]
    tag = GROUNDING if grounding else ""
    if mode != "phrases" and phrases:
        raise InvalidArgument("phrases are only used in CAPTION_MODE_PHRASES; clear them or change the mode")
    if mode in ("brief", "detailed"):
        if prompt:
            raise InvalidArgument(
                f"prompt must be empty in {mode.upper()} mode; use CAPTION_MODE_PROMPT for a free prompt")
        return (tag + (tpl.brief if mode == "brief" else tpl.detailed),)
    if mode in ("prompt", "question"):
        if not prompt.strip():
            what = "question" if mode == "question" else "prompt"
            raise InvalidArgument(f"prompt is empty: {mode.upper()} mode needs the {what} text")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise InvalidArgument(f"prompt is {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}")
        body = tpl.question.format(question=prompt.strip()) if mode == "question" else prompt.strip()
        return (tag + body,)
    # phrases
    if prompt:
        raise InvalidArgument("PHRASES mode takes `phrases`, not `prompt`; move the text into phrases")
    if not (1 <= len(phrases) <= MAX_PHRASES):
        raise InvalidArgument(f"PHRASES mode needs 1-{MAX_PHRASES} phrases, got {len(phrases)}")
    out = []
    for i, p in enumerate(phrases):
        p = p.strip()
        if not p or "<" in p or ">" in p:
            raise InvalidArgument(f"phrases[{i}] must be non-empty text without '<' or '>', got {p!r}")
        out.append(f"{tag}<phrase> {p}</phrase>")
    return tuple(out)


def _texts(texts: Sequence[str], name: str, allow_empty_list: bool) -> tuple[str, ...]:
    if len(texts) > MAX_EMBED_ITEMS:
        raise InvalidArgument(f"at most {MAX_EMBED_ITEMS} {name}, got {len(texts)}")
    if not allow_empty_list and not texts:
        raise InvalidArgument(f"{name} is empty: send at least one")
    for i, t in enumerate(texts):
        if not t.strip():
            raise InvalidArgument(f"{name}[{i}] is empty: send non-empty text")
        if len(t) > MAX_PROMPT_CHARS:
            raise InvalidArgument(f"{name}[{i}] is {len(t)} characters; the limit is {MAX_PROMPT_CHARS}")
    return tuple(t.strip() for t in texts)


def _images(images: Sequence[common_pb2.Image], limits: Limits, allow_empty_list: bool) -> tuple[ImageInput, ...]:
    if len(images) > MAX_EMBED_ITEMS:
        raise InvalidArgument(f"at most {MAX_EMBED_ITEMS} images, got {len(images)}")
    if not allow_empty_list and not images:
        raise InvalidArgument("images is empty: send at least one image")
    return tuple(ImageInput.from_pb(img, limits, f"images[{i}]") for i, img in enumerate(images))


@dataclass(frozen=True)
class EmbedRequest:
    images: tuple[ImageInput, ...]
    texts: tuple[str, ...]

    @classmethod
    def from_pb(cls, req: pb.EmbedRequest, limits: Limits) -> EmbedRequest:
        check_model(req.model, limits)
        if not req.images and not req.texts:
            raise InvalidArgument("nothing to embed: send at least one image or one text")
        return cls(_images(req.images, limits, True), _texts(req.texts, "texts", True))


@dataclass(frozen=True)
class SimilarityRequest:
    images: tuple[ImageInput, ...]
    texts: tuple[str, ...]

    @classmethod
    def from_pb(cls, req: pb.SimilarityRequest, limits: Limits) -> SimilarityRequest:
        check_model(req.model, limits)
        return cls(_images(req.images, limits, False), _texts(req.texts, "texts", False))


@dataclass(frozen=True)
class TokenizeRequest:
    image: ImageInput | None
    text: str
    boxes: tuple[g.NormBox, ...]
    location_tokens: tuple[str, ...]

    @classmethod
    def from_pb(cls, req: pb.TokenizeRequest, limits: Limits) -> TokenizeRequest:
        image = ImageInput.from_pb(req.image, limits) if req.HasField("image") else None
        if len(req.text) > MAX_PROMPT_CHARS:
            raise InvalidArgument(f"text is {len(req.text)} characters; the limit is {MAX_PROMPT_CHARS}")
        boxes = tuple(g.NormBox(b.x_min, b.y_min, b.x_max, b.y_max).validate(f"boxes[{i}]")
                      for i, b in enumerate(req.boxes))
        if image is None and not req.text and not boxes and not req.location_tokens:
            raise InvalidArgument("nothing to tokenize: send an image, text, boxes or location_tokens")
        for s in req.location_tokens:
            g.tokens_to_box(s)  # validates early with a precise message
        return cls(image, req.text, boxes, tuple(req.location_tokens))


@dataclass(frozen=True)
class AttentionMapRequest:
    caption: CaptionRequest
    per_token_overlays: bool

    @classmethod
    def from_pb(cls, req: pb.AttentionMapRequest, limits: Limits) -> AttentionMapRequest:
        if not req.HasField("caption"):
            raise InvalidArgument("caption is missing: send the CaptionRequest whose generation to explain")
        cap = CaptionRequest.from_pb(req.caption, limits)
        if cap.sampling.num_beams > 1:
            raise InvalidArgument("AttentionMap follows one sequence: set num_beams to 0 or 1")
        if len(cap.prompts) != 1:
            raise InvalidArgument("AttentionMap explains one sequence: send exactly one phrase in PHRASES mode")
        return cls(cap, req.per_token_overlays)


@dataclass(frozen=True)
class JudgeRequest:
    """Image-text pairs for the judge model (``images[i]`` with ``texts[i]``); none: only its identity."""

    images: tuple[ImageInput, ...]
    texts: tuple[str, ...]

    @classmethod
    def from_pb(cls, req: pb.JudgeRequest, limits: Limits) -> JudgeRequest:
        if len(req.images) != len(req.texts):
            raise InvalidArgument(f"images and texts are pairs: got {len(req.images)} images and {len(req.texts)} "
                                  f"texts; send one text per image")
        return cls(_images(req.images, limits, True), _texts(req.texts, "texts", True))
