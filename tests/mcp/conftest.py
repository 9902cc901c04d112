"""Fixtures: a real MatchGraph (port 0, its own SQLite file, the seed models and a few catalogue records) that
the MCP servers under test call (sessions over stdio and HTTP: tests/mcp/sessions.py)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from services.core.server import RunningServer, start_server
from services.matchgraph.app import Settings as GraphSettings
from services.matchgraph.app import build_service
from tests.catalogue_records import seed_test_catalogue
from unfragile.matchgraph.v1 import matchgraph_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
def matchgraph(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    db = tmp_path_factory.mktemp("mcp-graph") / "graph.db"
    settings = GraphSettings(port=0, metrics_port=-1, db_url=f"sqlite:///{db}", bootstrap_rounds=50,
                             graph_bootstrap_rounds=10)
    server = start_server(settings, build_service(settings))
    with grpc.insecure_channel(server.address) as ch:
        seed_test_catalogue(pb_grpc.MatchGraphStub(ch))
    yield server
    server.stop(0)


@pytest.fixture(scope="module")
def stub(matchgraph: RunningServer) -> Iterator[pb_grpc.MatchGraphStub]:
    with grpc.insecure_channel(matchgraph.address) as ch:
        yield pb_grpc.MatchGraphStub(ch)
