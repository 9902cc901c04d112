"""What a model server says about its model (the ``ModelInfo`` RPC), one type for every service."""

from __future__ import annotations

from dataclasses import dataclass, field

from unfragile.common.v1 import common_pb2


@dataclass(frozen=True)
class ModelInfo:
    """Identity, placement and size of the served model, plus architecture-specific details."""

    model_id: str
    architecture: str
    device: str
    dtype: str
    parameters: int
    quantization: str = ""
    details: dict[str, str] = field(default_factory=dict)

    def to_pb(self) -> common_pb2.ModelInfoResponse:
        return common_pb2.ModelInfoResponse(model_id=self.model_id, architecture=self.architecture,
                                            device=self.device, dtype=self.dtype, parameters=self.parameters,
                                            quantization=self.quantization, details=self.details)
