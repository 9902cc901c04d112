"""Controls of a generation request: ControlNet / T2I-Adapter maps and the IP-Adapter image prompt.

Everything a client can get wrong in them is checked here, once, with a message saying how to
fix it (``InvalidArgument``): undecodable or oversized images (the size is read from the
header, before any pixel is decoded), scales outside [0, 2], guidance windows that are empty,
unknown preprocessors. What depends on the served model (does the named model exist, is it of
the served family, does diffusers run it in this mode) is checked when the engine accepts the
job (``controls.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from common.errors import InvalidArgument
from services.core.images import decode_image
from services.diffusion.settings import Limits
from unfragile.diffusion.v1 import diffusion_pb2 as pb

PREPROCESSORS = ("none", "canny", "depth")
KINDS = {pb.CONTROL_KIND_UNSPECIFIED: "", pb.CONTROL_KIND_CONTROLNET: "controlnet",
         pb.CONTROL_KIND_T2I_ADAPTER: "t2i_adapter"}
CANNY_DEFAULTS = (100, 200)


def _name(name: str, what: str) -> str:
    from services.diffusion.types import check_adapter_name

    return check_adapter_name(name, what)


def _in_range(value: float, low: float, high: float, what: str, hint: str) -> float:
    if not low <= value <= high:  # also refuses NaN
        raise InvalidArgument(f"{what} {value} is out of range; use {hint}")
    return float(value)


@dataclass
class Control:
    """One control map for one request; ``control_map`` is filled in by the runner (preprocessed, sized)."""

    model: str
    image: Image.Image | None
    kind: str = ""  # "" = the named model's own kind
    preprocess: str = "none"
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0
    low_threshold: int = CANNY_DEFAULTS[0]
    high_threshold: int = CANNY_DEFAULTS[1]
    control_map: Image.Image | None = None

    def key(self) -> tuple[Any, ...]:
        """What must be equal for two requests to share a denoiser batch (maps are per image)."""
        return (self.model, self.kind, round(self.scale, 6), round(self.start, 6), round(self.end, 6))

    @classmethod
    def from_pb(cls, msg: pb.Control, index: int, limits: Limits) -> Control:
        what = f"controls[{index}]"
        model = _name(msg.controlnet, f"{what}.controlnet")
        image = decode_image(msg.image.data, max_pixels=limits.max_image_pixels, field=f"{what}.image")
        preprocess = msg.preprocess.strip().lower() or "none"
        if preprocess not in PREPROCESSORS:
            raise InvalidArgument(f"{what}.preprocess {msg.preprocess!r} is unknown; use one of "
                                  f"{', '.join(PREPROCESSORS)} (ListControlNets shows which this server runs)")
        if msg.kind not in KINDS:
            raise InvalidArgument(f"{what}.kind {msg.kind} is not a known ControlKind; use one of "
                                  f"{', '.join(pb.ControlKind.keys())}")
        scale = _in_range(msg.conditioning_scale if msg.HasField("conditioning_scale") else 1.0, 0.0, 2.0,
                          f"{what}.conditioning_scale", "[0, 2] (1 is typical; 0 switches the control off)")
        start = _in_range(msg.guidance_start if msg.HasField("guidance_start") else 0.0, 0.0, 1.0,
                          f"{what}.guidance_start", "[0, 1)")
        end = _in_range(msg.guidance_end if msg.HasField("guidance_end") else 1.0, 0.0, 1.0,
                        f"{what}.guidance_end", "(0, 1]")
        if start >= end:
            raise InvalidArgument(f"{what}: guidance_start {start:g} must be below guidance_end {end:g} (they are the "
                                  f"fractions of the steps where the control starts and stops acting)")
        low = msg.canny_low_threshold or CANNY_DEFAULTS[0]
        high = msg.canny_high_threshold or CANNY_DEFAULTS[1]
        if not 0 < low < high <= 255:
            raise InvalidArgument(f"{what}: canny thresholds {low}, {high} are invalid; use 0 < low < high <= 255 "
                                  f"(0 = the defaults {CANNY_DEFAULTS[0]} and {CANNY_DEFAULTS[1]})")
        return cls(model, image, KINDS[msg.kind], preprocess, scale, start, end, low, high)


@dataclass
class ImagePrompt:
    """An IP-Adapter and the reference images of one request."""

    adapter: str
    images: list[Image.Image] = field(default_factory=list)
    scale: float = 1.0

    def key(self) -> tuple[Any, ...]:
        """Requests with equal keys can share a batch: one adapter and scale, as many references."""
        return (self.adapter, round(self.scale, 6), len(self.images))


@dataclass
class RequestControls:
    """What GenerateRequest carries about controls."""

    controls: tuple[Control, ...] = ()
    image_prompt: ImagePrompt | None = None
    return_control_maps: bool = False

    def key(self) -> tuple[Any, ...]:
        return (tuple(c.key() for c in self.controls), self.image_prompt.key() if self.image_prompt else None)

    @property
    def empty(self) -> bool:
        return not self.controls and self.image_prompt is None

    @classmethod
    def from_pb(cls, msg: pb.GenerationParams, limits: Limits) -> RequestControls:
        if len(msg.controls) > limits.max_controls:
            raise InvalidArgument(f"{len(msg.controls)} controls; the limit is {limits.max_controls}")
        controls = tuple(Control.from_pb(c, i, limits) for i, c in enumerate(msg.controls))
        if msg.return_control_maps and not controls:
            raise InvalidArgument("return_control_maps is set but the request has no controls")
        return cls(controls, _image_prompt(msg, limits), msg.return_control_maps)

    def release(self) -> None:
        """Drop the decoded images (a finished job stays in the registry a while)."""
        for c in self.controls:
            c.image = c.control_map = None
        if self.image_prompt is not None:
            self.image_prompt.images = []


def _image_prompt(msg: pb.GenerationParams, limits: Limits) -> ImagePrompt | None:
    if not msg.ip_adapter:
        if msg.reference_images or msg.HasField("ip_adapter_scale"):
            raise InvalidArgument("reference_images / ip_adapter_scale are set but ip_adapter is empty; name the "
                                  "IP-Adapter to use (ListControlNets, kind ip_adapter)")
        return None
    name = _name(msg.ip_adapter, "ip_adapter")
    if not 1 <= len(msg.reference_images) <= limits.max_reference_images:
        raise InvalidArgument(f"ip_adapter {name!r} needs 1..{limits.max_reference_images} reference_images; got "
                              f"{len(msg.reference_images)}")
    images = [decode_image(img.data, max_pixels=limits.max_image_pixels, field=f"reference_images[{i}]")
              for i, img in enumerate(msg.reference_images)]
    scale = _in_range(msg.ip_adapter_scale if msg.HasField("ip_adapter_scale") else 1.0, 0.0, 2.0,
                      "ip_adapter_scale", "[0, 2] (0.5-1 is typical)")
    return ImagePrompt(name, images, scale)


def no_controls(msg: pb.GenerationParams, rpc: str) -> None:
    """INVALID_ARGUMENT when an RPC that takes no controls gets some."""
    if msg.controls or msg.ip_adapter or msg.reference_images or msg.return_control_maps:
        raise InvalidArgument(f"{rpc} takes no controls or IP-Adapter; use TextToImage, ImageToImage or Inpaint")
