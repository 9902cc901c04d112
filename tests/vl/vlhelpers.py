"""Helpers shared by the VisionLanguage tests (import as tests.vl.vlhelpers)."""

from __future__ import annotations

import io
from pathlib import Path

import grpc
from PIL import Image

from services.core.server import RunningServer, start_server
from services.visionlanguage.app import Settings, build_service
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

