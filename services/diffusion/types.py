"""Requests of the Diffusion service: protobuf in, validated domain objects out.

Everything a client can get wrong in a request is checked here, once, with a message that
says how to fix it (``InvalidArgument``); what depends on the served model (the family's
schedulers, its adapters) is checked when the engine accepts the job. The engine and
runner then trust these objects. What goes back to clients lives in ``events.py``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image

from common.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from services.core.images import decode_image
from services.diffusion.controltypes import RequestControls, no_controls
from services.diffusion.families import SCHEDULER_ALIASES, SCHEDULER_NAMES
from services.diffusion.settings import Limits
from unfragile.diffusion.v1 import diffusion_pb2 as pb

# Adapter names become folder names and peft module keys: no dots, no separators.
ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")

def check_adapter_name(name: str, field_name: str = "adapter name") -> str:
    if not ADAPTER_NAME.match(name or ""):
        raise InvalidArgument(
            f"{field_name} {name!r} is invalid: use 1-64 letters, digits, '_' or '-', starting with a "
            f"letter or digit (no paths)"
        )
    return name


def normalise_scheduler(name: str) -> str:
    """The canonical name of a known scheduler ("" stays "": the served family's default)."""
    key = (name or "").strip().lower()
    if not key:
        return ""
    if key not in SCHEDULER_ALIASES:
        raise InvalidArgument(f"unknown scheduler {name!r}; use one of {', '.join(SCHEDULER_NAMES)} (which ones a "
                              f"model runs depends on its family: see ModelInfo details['schedulers'])")
    return SCHEDULER_ALIASES[key]


def check_side(value: int, what: str, limits: Limits) -> int:
    if value % 8 or value < 8 or value > limits.max_side:
        raise InvalidArgument(
            f"{what} {value} is invalid: it must be a multiple of 8 between 8 and {limits.max_side} "
            f"(e.g. {max(8, min(limits.max_side, round(value / 8) * 8))})"
        )
    return value


def _fraction(value: float | None, what: str, default: float, low_open: bool = True) -> float:
    v = default if value is None else float(value)
    ok = (0.0 < v <= 1.0) if low_open else (0.0 <= v <= 1.0)
    if not ok:
        rng = "(0, 1]" if low_open else "[0, 1]"
        raise InvalidArgument(f"{what} {v} is out of range; use a value in {rng}")
    return v


@dataclass(frozen=True)
class AdapterSpec:
    """One LoRA adapter applied to one request."""

    name: str
    weight: float = 1.0

    @classmethod
    def from_pb(cls, msg: pb.AdapterWeight) -> AdapterSpec:
        weight = msg.weight if msg.HasField("weight") else 1.0
        if not -4.0 <= weight <= 4.0:
            raise InvalidArgument(f"adapter {msg.name!r} weight {weight} is out of range [-4, 4]")
        return cls(check_adapter_name(msg.name, "adapter name"), float(weight))


@dataclass(frozen=True)
class GenerationParams:
    """Validated generation parameters. width/height 0 = 'resolve later' (model size)."""

    prompt: str
    negative_prompt: str = ""
    width: int = 0
    height: int = 0
    steps: int = 20
    guidance_scale: float | None = None  # None until the engine resolves the family default
    scheduler: str = ""  # "" until the engine resolves the family default
    seed: int | None = None
    num_images: int = 1
    adapters: tuple[AdapterSpec, ...] = ()
    preview_every: int = 0
    preview_mode: str = "approx"  # or "vae"
    priority: int = 0

    @classmethod
    def from_pb(cls, msg: pb.GenerationParams, limits: Limits, *, prompt_required: bool = True) -> GenerationParams:
        prompt = msg.prompt.strip()
        if prompt_required and not prompt:
            raise InvalidArgument("prompt is empty: describe the image to generate")
        for what, text in (("prompt", msg.prompt), ("negative_prompt", msg.negative_prompt)):
            if len(text) > limits.max_prompt_chars:
                raise InvalidArgument(f"{what} is {len(text)} characters; the limit is {limits.max_prompt_chars}")
        width = check_side(msg.width, "width", limits) if msg.width else 0
        height = check_side(msg.height, "height", limits) if msg.height else 0
        steps = msg.steps or limits.default_steps
        if not 1 <= steps <= limits.max_steps:
            raise InvalidArgument(f"steps {steps} is out of range; use 1..{limits.max_steps}")
        guidance = msg.guidance_scale if msg.HasField("guidance_scale") else None
        if guidance is not None and not 0.0 <= guidance <= 30.0:
            raise InvalidArgument(f"guidance_scale {guidance} is out of range; use 0..30 (7.5 is typical; 3.5 for "
                                  f"FLUX.1 [dev])")
        num = msg.num_images or 1
        if not 1 <= num <= limits.max_images_per_request:
            raise InvalidArgument(f"num_images {num} is out of range; use 1..{limits.max_images_per_request}")
        adapters = tuple(AdapterSpec.from_pb(a) for a in msg.adapters)
        if len({a.name for a in adapters}) != len(adapters):
            raise InvalidArgument("the same adapter is listed twice; give each adapter once with its weight")
        if not -10 <= msg.priority <= 10:
            raise InvalidArgument(f"priority {msg.priority} is out of range; use -10..10")
        if msg.preview_mode not in pb.PreviewMode.values():
            raise InvalidArgument(f"preview_mode {msg.preview_mode} is not a known PreviewMode; use one of "
                                  f"{', '.join(pb.PreviewMode.keys())}")
        return cls(
            prompt=msg.prompt,
            negative_prompt=msg.negative_prompt,
            width=width,
            height=height,
            steps=steps,
            guidance_scale=None if guidance is None else float(guidance),
            scheduler=normalise_scheduler(msg.scheduler),
            seed=int(msg.seed) if msg.HasField("seed") else None,
            num_images=num,
            adapters=adapters,
            preview_every=msg.preview_every,
            preview_mode="vae" if msg.preview_mode == pb.PREVIEW_MODE_VAE else "approx",
            priority=msg.priority,
        )


def _resized(img: Image.Image, width: int, height: int) -> Image.Image:
    if img.size == (width, height):
        return img
    return img.resize((width, height), Image.Resampling.LANCZOS)


@dataclass
class GenerateRequest:
    """One generation job's full input, images decoded and sizes resolved."""

    mode: str
    params: GenerationParams
    image: Image.Image | None = None  # img2img / inpaint input, style content
    mask: Image.Image | None = None  # inpaint: "L" image, 255 = repaint
    style_image: Image.Image | None = None
    strength: float = 1.0
    style_weight: float = 0.0
    controls: RequestControls = field(default_factory=RequestControls)

    @property
    def width(self) -> int:
        return self.params.width

    @property
    def height(self) -> int:
        return self.params.height

    def batch_key(self) -> tuple[Any, ...]:
        """Requests with equal keys can share one UNet batch (same shapes, schedule, adapters, control models)."""
        p = self.params
        return (self.mode, p.width, p.height, p.steps, p.scheduler, p.guidance_scale, round(self.strength, 6),
                p.adapters, self.controls.key())

    @classmethod
    def from_txt2img(cls, msg: pb.TextToImageRequest, limits: Limits) -> GenerateRequest:
        return cls("txt2img", GenerationParams.from_pb(msg.params, limits),
                   controls=RequestControls.from_pb(msg.params, limits))

    @classmethod
    def _image_input(cls, params: GenerationParams, img: Image.Image, field_name: str, limits: Limits
                     ) -> tuple[GenerationParams, Image.Image]:
        """Resize to params.width/height when set, else check the image's own size; fill the size in."""
        if params.width or params.height:
            width = params.width or img.width
            height = params.height or img.height
            check_side(width, "width", limits), check_side(height, "height", limits)
            img = _resized(img, width, height)
        else:
            for side, what in ((img.width, "width"), (img.height, "height")):
                if side % 8 or side > limits.max_side:
                    raise InvalidArgument(
                        f"{field_name} {what} is {side}: it must be a multiple of 8 and at most {limits.max_side}; "
                        f"resize the image or set params.width/height to have the server resize it"
                    )
        return _replace(params, width=img.width, height=img.height), img

    @classmethod
    def from_img2img(cls, msg: pb.ImageToImageRequest, limits: Limits) -> GenerateRequest:
        params = GenerationParams.from_pb(msg.params, limits)
        img = decode_image(msg.image.data, max_pixels=limits.max_image_pixels, field="image")
        params, img = cls._image_input(params, img, "image", limits)
        strength = _fraction(msg.strength if msg.HasField("strength") else None, "strength", 0.75)
        _check_runs_a_step(params.steps, strength)
        return cls("img2img", params, image=img, strength=strength,
                   controls=RequestControls.from_pb(msg.params, limits))

    @classmethod
    def from_inpaint(cls, msg: pb.InpaintRequest, limits: Limits) -> GenerateRequest:
        params = GenerationParams.from_pb(msg.params, limits)
        img = decode_image(msg.image.data, max_pixels=limits.max_image_pixels, field="image")
        mask = decode_image(msg.mask.data, max_pixels=limits.max_image_pixels, field="mask").convert("L")
        if mask.size != img.size:
            raise InvalidArgument(
                f"mask is {mask.width}x{mask.height} but image is {img.width}x{img.height}; send a mask of the "
                f"same size (white = repaint, black = keep)"
            )
        if (params.width and params.width != img.width) or (params.height and params.height != img.height):
            raise InvalidArgument("for Inpaint leave params.width/height at 0 or equal to the image size")
        params, img = cls._image_input(_replace(params, width=0, height=0), img, "image", limits)
        strength = _fraction(msg.strength if msg.HasField("strength") else None, "strength", 1.0)
        _check_runs_a_step(params.steps, strength)
        mask = mask.point(lambda v: 255 if v >= 128 else 0)
        return cls("inpaint", params, image=img, mask=mask, strength=strength,
                   controls=RequestControls.from_pb(msg.params, limits))

    @classmethod
    def from_style(cls, msg: pb.StyleTransferRequest, limits: Limits) -> GenerateRequest:
        params = GenerationParams.from_pb(msg.params, limits, prompt_required=False)
        no_controls(msg.params, "StyleTransfer")
        content = decode_image(msg.content_image.data, max_pixels=limits.max_image_pixels, field="content_image")
        params, content = cls._image_input(params, content, "content_image", limits)
        style = decode_image(msg.style_image.data, max_pixels=limits.max_image_pixels, field="style_image")
        style = _resized(style, content.width, content.height)
        weight = _fraction(msg.style_weight if msg.HasField("style_weight") else None, "style_weight", 0.5,
                           low_open=False)
        strength = _fraction(msg.strength if msg.HasField("strength") else None, "strength", 0.5)
        _check_runs_a_step(params.steps, strength)
        return cls("style", params, image=content, style_image=style, strength=strength, style_weight=weight)


def _check_runs_a_step(steps: int, strength: float) -> None:
    if int(steps * strength) < 1:
        raise InvalidArgument(
            f"steps x strength = {steps} x {strength} runs no denoising step; raise steps or strength"
        )


def _replace(params: GenerationParams, **changes: Any) -> GenerationParams:
    return replace(params, **changes)


def job_id_from_pb(job_id: str) -> str:
    job_id = job_id.strip()
    if not job_id:
        raise InvalidArgument("job_id is empty: pass the id returned by StartFineTune or a generation stream")
    return job_id


@dataclass
class TrainingExample:
    image: Image.Image
    caption: str


@dataclass
class FineTuneRequest:
    """A validated LoRA training request (data decoded, or a folder already confined)."""

    adapter_name: str
    examples: list[TrainingExample] = field(default_factory=list)
    data_folder: str = ""
    steps: int = 100
    learning_rate: float = 1e-4
    rank: int = 4
    resolution: int = 0
    seed: int = 0
    overwrite: bool = False

    @classmethod
    def from_pb(cls, msg: pb.StartFineTuneRequest, limits: Limits) -> FineTuneRequest:
        name = check_adapter_name(msg.adapter_name, "adapter_name")
        if msg.examples and msg.data_folder:
            raise InvalidArgument("send either examples or data_folder, not both")
        if not msg.examples and not msg.data_folder:
            raise InvalidArgument("the training set is empty: send examples (image + caption) or a data_folder")
        if len(msg.examples) > limits.max_training_examples:
            raise InvalidArgument(f"{len(msg.examples)} examples; the limit is {limits.max_training_examples}")
        examples = [
            TrainingExample(decode_image(e.image.data, max_pixels=limits.max_image_pixels,
                                         field=f"examples[{i}].image"), e.caption)
            for i, e in enumerate(msg.examples)
        ]
        steps = msg.steps or 100
        if not 1 <= steps <= limits.max_finetune_steps:
            raise InvalidArgument(f"steps {steps} is out of range; use 1..{limits.max_finetune_steps}")
        lr = msg.learning_rate if msg.HasField("learning_rate") else 1e-4
        if not 0.0 < lr <= 1.0:
            raise InvalidArgument(f"learning_rate {lr} is out of range; use (0, 1] (1e-4 is typical)")
        rank = msg.rank or 4
        if not 1 <= rank <= 128:
            raise InvalidArgument(f"rank {rank} is out of range; use 1..128")
        resolution = check_side(msg.resolution, "resolution", limits) if msg.resolution else 0
        return cls(name, examples, msg.data_folder, steps, float(lr), rank, resolution,
                   int(msg.seed) if msg.HasField("seed") else 0, msg.overwrite)


def confined_folder(root: Path | None, relative: str) -> Path:
    """Resolve ``relative`` inside ``root``; refuse absolute paths, '..' and escaping links."""
    if root is None:
        raise FailedPrecondition("server-side data folders are disabled; set data_root on the server "
                                 "(UNFRAGILE_DIFFUSION_DATA_ROOT) or upload examples instead")
    rel = Path(relative)
    if rel.is_absolute() or ".." in rel.parts:
        raise PermissionDenied(f"data_folder {relative!r} must be a relative path inside the data root, without '..'")
    base = root.resolve()
    target = (base / rel).resolve()
    if target != base and base not in target.parents:
        raise PermissionDenied(f"data_folder {relative!r} leaves the data root")
    if not target.is_dir():
        raise NotFound(f"data_folder {relative!r} does not exist under the data root")
    return target
