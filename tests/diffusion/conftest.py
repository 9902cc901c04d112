"""Shared fixtures: one tiny SD checkpoint and one real server per test session.

Importing diffusers costs ~8 s and loading the pipelines ~1 s, so the model folder and
the main server are session-scoped; tests that need special settings start their own
server on the same folder.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from PIL import Image

from services.core.client import channel
from services.core.server import RunningServer, start_server
from services.diffusion.app import Settings, build_service
from services.diffusion.tiny import build_tiny_sd
from unfragile.diffusion.v1 import diffusion_pb2 as pb
from unfragile.diffusion.v1 import diffusion_pb2_grpc as pb_grpc


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data-root")


def make_settings(model: Path, adapters: Path, data_root: Path | None = None, **kw: object) -> Settings:
    # torch_threads=1: on a shared 2-core box, OpenMP spinning with 2 threads made steps ~20x slower
    base: dict[str, object] = dict(port=0, metrics_port=0, default_steps=4, torch_threads=1)
    base.update(kw)
    return Settings(model=str(model), adapters_dir=adapters, data_root=data_root, **base)


def start(settings: Settings) -> RunningServer:
    return start_server(settings, build_service(settings))


@pytest.fixture(scope="session")
def server(tiny_sd: Path, tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Iterator[RunningServer]:
    running = start(make_settings(tiny_sd, tmp_path_factory.mktemp("adapters"), data_root))
    yield running
    running.stop(0)


@pytest.fixture(scope="session")
def channel_(server: RunningServer) -> Iterator[grpc.Channel]:
    with channel(server.address) as ch:
        yield ch


@pytest.fixture(scope="session")
def stub(channel_: grpc.Channel) -> pb_grpc.DiffusionStub:
    return pb_grpc.DiffusionStub(channel_)


def params(prompt: str = "a photo of a cat", **kw: object) -> pb.GenerationParams:
    base: dict[str, object] = dict(prompt=prompt, width=64, height=64, steps=3, seed=1234)
    base.update(kw)
    return pb.GenerationParams(**base)


def result_of(events: list[pb.GenerateEvent]) -> pb.GeneratedImages:
    assert events[-1].WhichOneof("event") == "result", [e.WhichOneof("event") for e in events]
    return events[-1].result


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def decode(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))
