"""Dynamic int8 quantization of the model's ``nn.Linear`` layers (CPU).

Weights are stored as int8 with one scale per output channel; activations are
quantized per call. The kernels are torch's own fbgemm ones
(``torch.ao.quantization.quantize_dynamic``). torchao's ``quantize_`` with
``Int8DynamicActivationInt8WeightConfig`` is the successor API and runs on this CPU
build, but in eager mode it is slower than fp32 here, so it is not used; the
measurements are in docs/visionlanguage.md ("Precision").
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from common.errors import InvalidArgument

KINDS = ("", "int8")


def check_quantization(kind: str, device: torch.device) -> None:
    """Refuse a quantization the device cannot run, before any weights are read."""
    if kind not in KINDS:
        raise InvalidArgument(f"quantize={kind!r} is not supported; use '' or 'int8'")
    if kind and device.type != "cpu":
        raise InvalidArgument(f"int8 dynamic quantization runs on CPU only, not on {device}; set device=cpu or "
                              f"quantize=''")


def quantize_model(model: nn.Module, kind: str, device: torch.device) -> nn.Module:
    """``model`` with every ``nn.Linear`` swapped for a dynamic int8 one (fp32 activations)."""
    check_quantization(kind, device)
    model = model.float()
    with warnings.catch_warnings():  # deprecated in favour of torchao, whose CPU path is slower (see above)
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
