"""Export Kosmos-2's image path (vision encoder + image-to-text projection) to ONNX.

The exported graph maps ``pixel_values`` [batch, 3, 224, 224] to ``image_embeds``
[batch, 64, hidden]: exactly the features the text decoder consumes (and that the
server caches per image), so an ONNX Runtime deployment can precompute them.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common.errors import InvalidArgument


class ImageFeatureModule(nn.Module):
    """pixel_values -> post-layernorm -> L2 normalise -> projection (64 latent slots)."""

    def __init__(self, model: Any) -> None:  # a Kosmos2ForConditionalGeneration
        super().__init__()
        self.vision_model: Any = model.vision_model
        self.projection: Any = model.image_to_text_projection

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.vision_model(pixel_values=pixel_values)[0]
        hidden = self.vision_model.model.post_layernorm(hidden)
        hidden = nn.functional.normalize(hidden, dim=-1)
        return self.projection(hidden)[0]


def export_vision_onnx(model_dir: str | Path, out: Path, opset: int = 18) -> Path:
    """Load the model with from_pretrained and write ``out`` (.onnx); returns ``out``."""
    from transformers import Kosmos2ForConditionalGeneration

    from services.core.loading import pretrained_source

    source, extra = pretrained_source(model_dir)
    model = Kosmos2ForConditionalGeneration.from_pretrained(source, attn_implementation="eager", **extra).eval()
    size = int(model.config.vision_config.image_size)
    if opset < 14:
        raise InvalidArgument("opset must be >= 14")
    module = ImageFeatureModule(model).eval()
    example = torch.zeros(1, 3, size, size)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the 224x224 size check is constant-folded
        torch.onnx.export(module, (example,), str(out), input_names=["pixel_values"], output_names=["image_embeds"],
                          dynamic_axes={"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}},
                          opset_version=opset, dynamo=False)
    return out
