"""Fixtures: a real MatchGraph (port 0, its own SQLite file, the seed models and a few catalogue records) that
the MCP servers under test call (sessions over stdio and HTTP: tests/mcp/sessions.py). The two seed models get
a downloads reading and a release date (test readings, not real figures) so that answers hold measured
dimensions next to ones that are not measured."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from services.core.server import RunningServer
from tests.catalogue_records import seed_test_catalogue
from tests.graphserver import seeded_matchgraph
from unfragile.matchgraph.v1 import matchgraph_pb2 as pb
from unfragile.matchgraph.v1 import matchgraph_pb2_grpc as pb_grpc

# (model, downloads): the second leads adoption
READINGS = (("kosmos-2-patch14-224", 1_000), ("stable-diffusion", 1_000_000))
# A record no test query finds (so no match record ever measures its match graph): nothing measured, ever.
UNREAD = pb.ModelRecord(id="listener-e", name="Listener E", type=pb.MODEL_TYPE_MODEL, slug="test-org--listener-e",
                        capabilities=[pb.Capability(title="Speech transcription", description="Writes down speech.",
                                                    intents=["transcribe speech"], input_types=["audio"],
                                                    output_types=["transcript"])])


def add_test_readings(stub: pb_grpc.MatchGraphStub) -> None:
    for model_id, downloads in READINGS:
        m = stub.GetModel(pb.GetModelRequest(model=model_id)).model
        source = f"https://example.org/test-readings/{model_id}"
        m.adoption.append(pb.Signal(kind="downloads", value=downloads, source=source, observed_at="2026-11-30",
                                    says=f"{downloads} downloads"))
        m.facts.append(pb.Fact(name="released", value="2024-06-01", source=source, observed_at="2026-11-30"))
        stub.UpsertModel(pb.UpsertModelRequest(model=m))
    stub.UpsertModel(pb.UpsertModelRequest(model=UNREAD))


@pytest.fixture(scope="module")
def matchgraph(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    db = tmp_path_factory.mktemp("mcp-graph") / "graph.db"
    with seeded_matchgraph(f"sqlite:///{db}", seed_test_catalogue, add_test_readings) as server:
        yield server


@pytest.fixture(scope="module")
def stub(matchgraph: RunningServer) -> Iterator[pb_grpc.MatchGraphStub]:
    with grpc.insecure_channel(matchgraph.address) as ch:
        yield pb_grpc.MatchGraphStub(ch)
