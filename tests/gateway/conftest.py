"""Fixtures: a real MatchGraph server (port 0, its own SQLite file, seeded through its own
seeding code and a few recorded searches) and the real gateway in front of it (port 0)."""

from __future__ import annotations

import importlib.util
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from services.core.server import RunningServer
from services.gateway.server import RunningGateway, start
from services.gateway.settings import Settings as GatewaySettings
from tests.graphserver import seeded_matchgraph
from unfragile.matchgraph.v1 import matchgraph_pb2 as pb
from unfragile.matchgraph.v1 import matchgraph_pb2_grpc as pb_grpc

KOSMOS = "kosmos-2-patch14-224"
SD = "stable-diffusion"
FRONTEND_ORIGIN = "https://frontend.example"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

# A handful of searches so Times Matched, the co-match graph and the pages have data.
SEARCHES = [
    ("gw-e1", "image captioning", [KOSMOS, SD], [KOSMOS, SD], [KOSMOS]),
    ("gw-e2", "text to image", [SD, KOSMOS], [], [SD]),
    ("gw-e3", "grounded captions with boxes", [KOSMOS], [], [KOSMOS]),
    ("gw-e4", "inpainting", [SD], [], [SD]),
    ("gw-e5", "describe a photo", [KOSMOS, SD], [KOSMOS, SD], [KOSMOS]),
]


def seed_matchgraph(stub: pb_grpc.MatchGraphStub) -> None:
    """The two seed models (the service's own seed records) with test readings, and a few search events,
    over gRPC."""
    from graph.seed_data import SEED_MODELS
    from services.matchgraph.types import record_to_pb
    from tests.graph.conftest import with_readings

    for m in SEED_MODELS:
        stub.UpsertModel(pb.UpsertModelRequest(model=record_to_pb(with_readings(m))))
    now = int(time.time() * 1000)
    events = [pb.MatchEvent(event_id=i, query=q, matched=m, compared=c, clicked=k, timestamp_ms=now)
              for i, q, m, c, k in SEARCHES]
    stub.RecordMatches(iter([pb.RecordMatchesRequest(events=events)]))


@pytest.fixture(scope="session")
def matchgraph(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    db = tmp_path_factory.mktemp("gateway-graph") / "graph.db"
    with seeded_matchgraph(f"sqlite:///{db}", seed_matchgraph, bootstrap_rounds=200,
                           graph_bootstrap_rounds=20) as server:
        yield server


@pytest.fixture(scope="session")
def stub(matchgraph: RunningServer) -> Iterator[pb_grpc.MatchGraphStub]:
    with grpc.insecure_channel(matchgraph.address) as ch:
        yield pb_grpc.MatchGraphStub(ch)


@pytest.fixture(scope="session")
def gateway(matchgraph: RunningServer) -> Iterator[RunningGateway]:
    # API searches create no match records here: the shared graph stays as seeded (tests/gateway/test_gw_catalogue.py
    # records them on graphs of their own).
    settings = GatewaySettings(port=0, metrics_port=-1, matchgraph_target=matchgraph.address,
                               cors_origins=[FRONTEND_ORIGIN], log_level="WARNING", api_match_records=False)
    gw = start(settings)
    yield gw
    gw.stop()


@pytest.fixture(scope="session")
def base_url(gateway: RunningGateway) -> str:
    return gateway.url


@pytest.fixture()
def fresh_graph(tmp_path: Path):
    """A MatchGraph of its own for tests that change data (the shared one stays as seeded,
    so its pages and screenshots are the same on every run)."""
    with seeded_matchgraph(f"sqlite:///{tmp_path / 'g.db'}", seed_matchgraph) as server, \
            grpc.insecure_channel(server.address) as ch:
        yield server, pb_grpc.MatchGraphStub(ch)


def chromium_missing_reason() -> str | None:
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        return f"{CHROMIUM} not found: install Debian's chromium package (apt-get install -y chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright Python package is not installed"
    return None
