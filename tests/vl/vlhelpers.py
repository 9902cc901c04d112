"""Helpers shared by the VisionLanguage tests and the OpenAI frontend's (import as tests.vl.vlhelpers)."""

from __future__ import annotations

import io
import time
from pathlib import Path

import grpc
import torch
from PIL import Image

from services.core.server import RunningServer, start_server
from services.visionlanguage.app import Settings, build_service
from services.visionlanguage.batch import DecodeBatch, PrefillItem, StepOutput
from services.visionlanguage.runner import Kosmos2Runner
from unfragile.common.v1 import common_pb2
from unfragile.visionlanguage.v1 import visionlanguage_pb2 as pb


def png(size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = (200, 40, 40), noise: int = 0) -> bytes:
    img = Image.new("RGB", size, color)
    if noise:
        img = Image.blend(img, Image.effect_noise(size, noise).convert("RGB"), 0.5)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def image_pb(data: bytes) -> common_pb2.Image:
    return common_pb2.Image(data=data, mime_type="image/png")


def start(model: Path, **overrides: object) -> RunningServer:
    settings = Settings(port=0, metrics_port=0, model=str(model), grace_seconds=1, **overrides)
    return start_server(settings, build_service(settings))


def caption_request(data: bytes | None = None, **kw: object) -> pb.CaptionRequest:
    sampling = kw.pop("sampling", None)
    req = pb.CaptionRequest(image=image_pb(data if data is not None else png()), **kw)  # type: ignore[arg-type]
    if sampling is not None:
        req.sampling.CopyFrom(sampling)  # type: ignore[arg-type]
    return req


def rpc_code(fn, *args, **kwargs) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    try:
        fn(*args, **kwargs)
    except grpc.RpcError as err:
        return err.code(), err.details()
    return grpc.StatusCode.OK, ""


class ScriptedRunner(Kosmos2Runner):
    """The real runner; ``script`` (token ids, then </s>) forces the next tokens when set, and ``delay_s``
    sleeps before each decode step when set."""

    script: list[int] | None = None
    delay_s: float = 0.0

    def _force(self, out: StepOutput, steps: list[int]) -> StepOutput:
        if self.script is None:
            return out
        logits = torch.full_like(out.logits, -1e4)
        for row, k in enumerate(steps):
            logits[row, self.script[k] if k < len(self.script) else self.eos_id] = 0.0
        return StepOutput(logits, out.attention)

    def prefill(self, items: list[PrefillItem], with_attention: bool = False) -> tuple[DecodeBatch, StepOutput]:
        batch, out = super().prefill(items, with_attention)
        batch.step = [0] * batch.size  # type: ignore[attr-defined]
        return batch, self._force(out, batch.step)  # type: ignore[attr-defined]

    def decode(self, batch: DecodeBatch, tokens: list[int], with_attention: bool = False) -> StepOutput:
        if self.delay_s:
            time.sleep(self.delay_s)
        out = super().decode(batch, tokens, with_attention)
        batch.step = [k + 1 for k in getattr(batch, "step", [0] * batch.size)]  # type: ignore[attr-defined]
        return self._force(out, batch.step)  # type: ignore[attr-defined]

    def set_script(self, text: str | None) -> None:
        self.script = None if text is None else list(self.tokenizer(text, add_special_tokens=False).input_ids)
