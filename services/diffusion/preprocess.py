"""Server-side preprocessors: a request's control image -> the control map a ControlNet expects.

Each preprocessor is a small object with a ``name`` and ``__call__(image, control) -> map``;
the map is RGB at the size it was given (the runner resizes the image to the output size
first, as A1111 / ComfyUI do before detecting). More can be added by registering another
object in ``Preprocessors``:

- ``none``: the image already is the control map.
- ``canny``: OpenCV's Canny edge detector with the request's hysteresis thresholds, white
  edges on black, as the released canny ControlNets were trained on.
- ``depth``: a transformers depth-estimation model (DPT, Depth Anything: whatever
  ``AutoModelForDepthEstimation`` loads from the ``depth_model`` setting), its predicted depth
  resized to the image and min-max scaled to 0..255 (near = bright), as the released depth
  ControlNets take it. The model is loaded on first use (through the control-model cache) and
  runs on the engine's worker thread, like every other model call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from PIL import Image

from common.errors import FailedPrecondition
from services.diffusion.controltypes import PREPROCESSORS, Control


class Preprocessor(Protocol):
    name: str

    def __call__(self, image: Image.Image, control: Control) -> Image.Image: ...


class NoPreprocess:
    name = "none"

    def __call__(self, image: Image.Image, control: Control) -> Image.Image:
        return image.convert("RGB")


class Canny:
    name = "canny"

    def __call__(self, image: Image.Image, control: Control) -> Image.Image:
        import cv2
        import numpy as np

        edges = cv2.Canny(np.asarray(image.convert("L")), control.low_threshold, control.high_threshold)
        return Image.fromarray(np.stack([edges] * 3, axis=-1), "RGB")


DepthModel = tuple[Any, Any]  # (AutoModelForDepthEstimation, its image processor)


class Depth:
    name = "depth"

    def __init__(self, load: Callable[[], DepthModel]) -> None:
        self.load = load

    def __call__(self, image: Image.Image, control: Control) -> Image.Image:
        import torch

        model, processor = self.load()
        inputs = processor(images=image.convert("RGB"), return_tensors="pt").to(model.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        with torch.no_grad():
            depth = model(**inputs).predicted_depth  # (1, h, w)
            depth = torch.nn.functional.interpolate(depth[:, None].float(), size=(image.height, image.width),
                                                    mode="bicubic", align_corners=False)[0, 0]
        low, high = depth.min(), depth.max()
        scaled = ((depth - low) / (high - low).clamp_min(1e-6) * 255).round().clamp(0, 255).to(torch.uint8)
        return Image.fromarray(scaled.cpu().numpy(), "L").convert("RGB")


class Preprocessors:
    """The preprocessors this server runs, by name."""

    def __init__(self, depth: Callable[[], DepthModel] | None) -> None:
        found: list[Preprocessor] = [NoPreprocess(), Canny()]
        if depth is not None:
            found.append(Depth(depth))
        self.by_name = {p.name: p for p in found}

    def names(self) -> list[str]:
        return [n for n in PREPROCESSORS if n in self.by_name]

    def check(self, name: str) -> None:
        if name not in self.by_name:
            raise FailedPrecondition(
                f"preprocessor {name!r} is not available on this server (it runs {', '.join(self.names())}); "
                f"\"depth\" needs the depth_model setting (a transformers depth-estimation model such as DPT or "
                f"Depth Anything), or send a ready depth map with preprocess \"none\"")

    def control_map(self, control: Control, width: int, height: int) -> Image.Image:
        """The map of ``control`` at ``width`` x ``height`` (computed once per request)."""
        if control.control_map is None:
            assert control.image is not None, "maps are made before the inputs are released"
            image = control.image.convert("RGB")
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.LANCZOS)
            control.control_map = self.by_name[control.preprocess](image, control)
        return control.control_map
