"""One real stack for every module here: VisionLanguage and Diffusion gRPC servers on the tiny models (port 0,
in this process so their metrics can be read), and the OpenAI-compatible frontend in front of them
(port 0), driven with the official ``openai`` SDK.

The Kosmos-2 runner is the real one; a test may *script* its next tokens (a random model never
writes grounding tags) or slow its decode steps (so a disconnect lands mid-generation). Both are
off unless a test turns them on.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
import torch
from PIL import Image

from services.core.server import RunningServer, start_server
from services.diffusion.app import Settings as DiffusionSettings
from services.diffusion.app import build_service as build_diffusion
from services.openai.server import RunningFrontend, start
from services.openai.settings import Settings
from services.visionlanguage.app import Settings as VLSettings
from services.visionlanguage.app import build_service as build_vl
from tests.vl.vlhelpers import ScriptedRunner

API_KEY = "sk-test-key"


@dataclass
class OpenAIStack:
    vl: RunningServer
    diffusion: RunningServer
    frontend: RunningFrontend
    runner: ScriptedRunner
    vl_model: str
    sd_model: str

    @property
    def base_url(self) -> str:
        return f"{self.frontend.url}/v1"

    def client(self, **kw: Any) -> openai.OpenAI:
        kw.setdefault("api_key", API_KEY)
        kw.setdefault("max_retries", 0)
        return openai.OpenAI(base_url=self.base_url, **kw)

    def frontend_settings(self, **kw: Any) -> Settings:
        base: dict[str, Any] = dict(port=0, visionlanguage_target=self.vl.address,
                                    diffusion_target=self.diffusion.address, log_level="WARNING")
        return Settings(**(base | kw))


@pytest.fixture(scope="package")
def stack(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenAIStack]:
    holder: dict[str, ScriptedRunner] = {}

    def factory() -> ScriptedRunner:
        holder["r"] = ScriptedRunner(tiny_models_dir / "tiny-kosmos2", torch.device("cpu"), torch.float32)
        return holder["r"]

    vl_settings = VLSettings(port=0, metrics_port=-1, model=str(tiny_models_dir / "tiny-kosmos2"), grace_seconds=1,
                             max_batch_size=8, max_queue_delay_ms=1)
    vl = start_server(vl_settings, build_vl(vl_settings, runner_factory=factory))
    # max_queue=1 lets a test fill the queue (429) with two requests, behind a job of max_steps that runs until
    # that test leaves; torch_threads=1 as the other tests
    sd_settings = DiffusionSettings(port=0, metrics_port=-1, model=str(tiny_models_dir / "tiny-sd"), default_steps=4,
                                    torch_threads=1, max_queue=1, max_steps=1000, grace_seconds=1,
                                    adapters_dir=tmp_path_factory.mktemp("adapters"))
    diffusion = start_server(sd_settings, build_diffusion(sd_settings))
    settings = Settings(port=0, visionlanguage_target=vl.address, diffusion_target=diffusion.address,
                        api_keys=[API_KEY], max_image_bytes=256 * 1024, max_body_bytes=1024 * 1024,
                        log_level="WARNING")
    frontend = start(settings)
    try:
        yield OpenAIStack(vl, diffusion, frontend, holder["r"], str(tiny_models_dir / "tiny-kosmos2"),
                          str(tiny_models_dir / "tiny-sd"))
    finally:
        frontend.stop()
        vl.stop(0)
        diffusion.stop(0)


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def image_message(url: str, text: str | None = None) -> list[dict[str, Any]]:
    content: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": url}}]
    if text:
        content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


def decode_b64(b64: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    img.load()
    return img
