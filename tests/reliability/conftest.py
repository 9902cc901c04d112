"""Fixtures of the reliability suite: tiny models once per session, real servers on loopback.

The tiny models are built with the same code as ``unfragile models build-tiny --out DIR``
(``services.cli.build_tiny``), in-process so the session pays the torch/diffusers import
once. In-process servers are started per module with the small queues each test needs;
child-process servers (drain, crash) are started by the tests themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from services.core.client import channel
from services.core.server import RunningServer, start_server


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from services.cli import build_tiny

    out = tmp_path_factory.mktemp("rel-models")
    build_tiny(out)
    return out


@pytest.fixture(scope="session")
def tokens_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secrets") / "tokens"
    path.write_text("# token role name\n"
                    "tok-reader-alice-5f1e reader alice\n"
                    "tok-reader-bob-88c2 reader bob\n"
                    "tok-admin-ops-c0de admin ops\n")
    return path


TOKENS = {"alice": "tok-reader-alice-5f1e", "bob": "tok-reader-bob-88c2", "ops": "tok-admin-ops-c0de"}


class Servers:
    """Starts in-process servers and stops them all at the end of the scope."""

    def __init__(self) -> None:
        self.running: list[RunningServer] = []
        self.channels: list[grpc.Channel] = []

    def vl(self, models_dir: Path, **kw: Any) -> RunningServer:
        from services.visionlanguage.app import Settings, build_service

        s = Settings(port=0, metrics_port=-1, models_dir=models_dir, grace_seconds=1, max_queue_delay_ms=0, **kw)
        return self._start(s, build_service(s))

    def diffusion(self, models_dir: Path, adapters: Path, **kw: Any) -> RunningServer:
        from services.diffusion.app import Settings, build_service

        s = Settings(port=0, metrics_port=-1, models_dir=models_dir, adapters_dir=adapters, grace_seconds=1,
                     default_steps=2, **kw)
        return self._start(s, build_service(s))

    def graph(self, db: Path, **kw: Any) -> RunningServer:
        from services.matchgraph.app import Settings, build_service

        s = Settings(port=0, metrics_port=-1, db_url=f"sqlite:///{db}", grace_seconds=1, bootstrap_rounds=50,
                     graph_bootstrap_rounds=10, **kw)
        return self._start(s, build_service(s))

    def _start(self, settings: Any, service: Any) -> RunningServer:
        srv = start_server(settings, service)
        self.running.append(srv)
        return srv

    def channel(self, srv: RunningServer, **kw: Any) -> grpc.Channel:
        ch = channel(srv.address, **kw)
        self.channels.append(ch)
        return ch

    def close(self) -> None:
        for ch in self.channels:
            ch.close()
        for srv in self.running:
            srv.stop(0)


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    s = Servers()
    yield s
    s.close()


@pytest.fixture(scope="session")
def seed_records() -> Callable[[], list[Any]]:
    """The two seed models plus a few small ones, as protobuf records (deterministic)."""
    def make() -> list[Any]:
        from graph.seed_data import SEED_MODELS
        from services.matchgraph.types import record_to_pb
        from unfragile.matchgraph.v1 import matchgraph_pb2 as pb

        out = [record_to_pb(m) for m in SEED_MODELS]
        for i in range(6):
            out.append(pb.ModelRecord(
                id=f"tool-{i}", name=f"Tool {i}", type=pb.MODEL_TYPE_TOOL,
                pricing=pb.Pricing(tier=pb.PRICING_TIER_FREE),
                adoption=[pb.Signal(kind="stars", value=10.0 * (i + 1) ** 2, source="https://example.org",
                                    observed_at="2026-11-01")],
                capabilities=[pb.Capability(title=f"Capability {i}", description=f"Does thing number {i}.")]))
        return out

    return make
