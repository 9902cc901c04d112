"""A real MatchGraph server for the tests in front of it (gateway, MCP): port 0, its own database, seeded
over gRPC as a client would seed it. Nothing here ships with the product."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import grpc

from services.core.server import RunningServer, start_server
from services.matchgraph.app import Settings as GraphSettings
from services.matchgraph.app import build_service
from unfragile.matchgraph.v1 import matchgraph_pb2_grpc as pb_grpc

Seed = Callable[[pb_grpc.MatchGraphStub], None]


@contextmanager
def seeded_matchgraph(db_url: str, *seeds: Seed, bootstrap_rounds: int = 50,
                      graph_bootstrap_rounds: int = 10) -> Iterator[RunningServer]:
    """A MatchGraph on ``db_url``, each of ``seeds`` called with a stub to it before it is handed out; stopped
    on exit. Few bootstrap rounds keep the intervals cheap to compute."""
    settings = GraphSettings(port=0, metrics_port=-1, db_url=db_url, bootstrap_rounds=bootstrap_rounds,
                             graph_bootstrap_rounds=graph_bootstrap_rounds)
    server = start_server(settings, build_service(settings))
    try:
        with grpc.insecure_channel(server.address) as ch:
            for seed in seeds:
                seed(pb_grpc.MatchGraphStub(ch))
        yield server
    finally:
        server.stop(0)
