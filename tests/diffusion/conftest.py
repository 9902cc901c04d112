"""Shared fixtures: one tiny SD checkpoint and one real server per test session.

Importing diffusers costs ~8 s and loading the pipelines ~1 s, so the model folder and
the main server are session-scoped; tests that need special settings start their own
server on the same folder.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from PIL import Image

from services.core.client import channel
from services.core.server import RunningServer, start_server
from services.diffusion.app import Settings, build_service
from services.diffusion.tiny import build_tiny_sd
from services.diffusion.types import GenerateRequest
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


# ----------------------------------------------------------------------------- every family, both formats
FAMILIES = ("sd", "sdxl", "sd3", "flux")
# FLUX.1 single files: diffusers' converter assumes the released 3072-wide transformer, so a tiny one
# cannot go through from_single_file (test_diffusion_flux checks how such files are recognised).
SINGLE_FILE_FAMILIES = ("sd", "sdxl", "sd3")
FORMATS = ("folder", "single-file")
FAMILY_FORMATS = [pytest.param(f, fmt, id=f"{f}-{fmt}") for f in FAMILIES for fmt in FORMATS
                  if fmt == "folder" or f in SINGLE_FILE_FAMILIES]
TITLES = {"sd": "Stable Diffusion 1.x/2.x", "sdxl": "Stable Diffusion XL", "sd3": "Stable Diffusion 3",
          "flux": "FLUX.1"}


@pytest.fixture(scope="session")
def tiny_models(tiny_sd: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny checkpoint folder of each family (built once per session)."""
    from services.diffusion.tiny import build_tiny_flux, build_tiny_sd3, build_tiny_sdxl

    root = tmp_path_factory.mktemp("families")
    return {"sd": tiny_sd, "sdxl": build_tiny_sdxl(root / "tiny-sdxl"), "sd3": build_tiny_sd3(root / "tiny-sd3"),
            "flux": build_tiny_flux(root / "tiny-flux")}


@pytest.fixture(scope="session")
def single_files(tiny_models: dict[str, Path],
                 tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Each tiny model as one .safetensors file in its original layout, plus a weight-free config folder."""
    from services.diffusion.singlefile import copy_configs, export_single_file

    root = tmp_path_factory.mktemp("single-files")
    return {f: (export_single_file(folder, root / f"tiny-{f}.safetensors"), copy_configs(folder, root / f"{f}-config"))
            for f, folder in tiny_models.items() if f in SINGLE_FILE_FAMILIES}


@pytest.fixture(scope="session")
def lora_dir(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Community LoRA files of every family in both layouts (one SDXL file without trainer metadata)."""
    from tests.diffusion.lora_files import write_lora

    root = tmp_path_factory.mktemp("loras")
    for family, folder in tiny_models.items():
        for seed, layout in enumerate(("diffusers", "kohya")):
            write_lora(folder, family, root / f"{family}-{layout}.safetensors", layout, seed=seed)
    write_lora(tiny_models["sdxl"], "sdxl", root / "sdxl plain.v2.safetensors", "kohya", rank=2, seed=7,
               metadata=False)
    return root


@pytest.fixture(scope="session")
def tiny_controls(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """ControlNets (folders and single files), T2I-Adapters, IP-Adapters and a depth model for every family."""
    from services.diffusion.tinycontrol import build_tiny_controls

    return build_tiny_controls(tiny_models, tmp_path_factory.mktemp("controls"))


class FamilyServers:
    """One server per (family, format), started on first use; all share one adapters dir, lora_dir and control
    model folders."""

    def __init__(self, models: dict[str, Path], files: dict[str, tuple[Path, Path]], adapters: Path,
                 loras: Path, controls: dict[str, Path]) -> None:
        self.models, self.files, self.adapters, self.loras = models, files, adapters, loras
        self.controls = {k: str(v) for k, v in controls.items()}
        self.running: dict[tuple[str, str], tuple[RunningServer, grpc.Channel]] = {}

    def settings(self, family: str, fmt: str, **kw: object) -> Settings:
        kw = {**self.controls, **kw}
        if fmt == "folder":
            return make_settings(self.models[family], self.adapters, metrics_port=-1, lora_dir=self.loras, **kw)
        file, config = self.files[family]
        return make_settings(file, self.adapters, metrics_port=-1, lora_dir=self.loras, single_file_config=config,
                             **kw)

    def stub(self, family: str, fmt: str = "folder") -> pb_grpc.DiffusionStub:
        if (family, fmt) not in self.running:
            server = start(self.settings(family, fmt))
            self.running[(family, fmt)] = (server, channel(server.address))
        return pb_grpc.DiffusionStub(self.running[(family, fmt)][1])

    def address(self, family: str, fmt: str = "folder") -> str:
        self.stub(family, fmt)
        return self.running[(family, fmt)][0].address

    def close(self) -> None:
        for server, ch in self.running.values():
            ch.close()
            server.stop(0)


@pytest.fixture(scope="session")
def family_servers(tiny_models: dict[str, Path], single_files: dict[str, tuple[Path, Path]], lora_dir: Path,
                   tiny_controls: dict[str, Path],
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[FamilyServers]:
    servers = FamilyServers(tiny_models, single_files, tmp_path_factory.mktemp("family-adapters"), lora_dir,
                            tiny_controls)
    yield servers
    servers.close()


def events_of(call: object, request: object, timeout: float = 60) -> list[pb.GenerateEvent]:
    return list(call(request, timeout=timeout))  # type: ignore[operator]  # a stub method, untyped


def kinds(events: list[pb.GenerateEvent], kind: str) -> list[object]:
    return [getattr(e, kind) for e in events if e.WhichOneof("event") == kind]


class StubRunner:
    """What a test's runner of the engine leaves as it is: requests unchanged, no adapters, no model facts, no
    previews. A subclass writes ``run`` (and ``preview`` when it shows them)."""

    def prepare(self, request: GenerateRequest) -> GenerateRequest:
        return request

    def list_adapters(self) -> list[Any]:
        return []

    def facts(self) -> Any:
        raise NotImplementedError

    def preview(self, latents: Any, mode: str) -> list[Image.Image]:
        return []
