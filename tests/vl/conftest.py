"""Shared fixtures: one tiny Kosmos-2 built per session and one real server over gRPC."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.core.client import channel as make_channel
from services.core.server import RunningServer
from services.visionlanguage.tiny import build_tiny_kosmos2
from tests.vl.vlhelpers import start
from unfragile.visionlanguage.v1 import visionlanguage_pb2_grpc as pb_grpc


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_kosmos2(tmp_path_factory.mktemp("models") / "tiny-kosmos2")


@pytest.fixture(scope="session")
def server(tiny_model: Path) -> Iterator[RunningServer]:
    srv = start(tiny_model, max_batch_size=8, max_queue_delay_ms=5)
    yield srv
    srv.stop(0)


@pytest.fixture(scope="session")
def stub(server: RunningServer) -> Iterator[pb_grpc.VisionLanguageStub]:
    ch = make_channel(server.address)
    yield pb_grpc.VisionLanguageStub(ch)
    ch.close()
