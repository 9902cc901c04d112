"""Fixtures: real MatchGraph servers on port 0 over real gRPC channels, each on its own database.

Servers run on the backend of the ``db_backend`` fixture (tests/conftest.py): every test that
uses them runs on SQLite and on a real PostgreSQL, unless it pins one backend with
``@pytest.mark.parametrize("db_backend", ["sqlite"])`` (validation and scoring maths only).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from graph.probes import JudgeModel, JudgeScores, ServedModel
from graph.records import Fact, ModelRecord, QualityEvidence, Signal
from services.core.server import RunningServer, start_server
from services.matchgraph.app import Settings, build_engine, build_service
from unfragile.matchgraph.v1 import matchgraph_pb2 as pb
from unfragile.matchgraph.v1 import matchgraph_pb2_grpc as pb_grpc

JUDGE = JudgeModel("/models/judge-clip", "CLIPModel", "sha256:0123456789abcdef", parameters=1000)


class FakeProbes:
    """The model services, faked: a generator's image and a captioner's caption name the model that made them
    ("<model>|<prompt>", "<model> says ..."), and the judge scores each pair by that model: ``scores`` per
    model, else ``image_score`` for generators and ``caption_score`` for captioners."""

    def __init__(self, image_score: float = 0.8, caption_score: float = 0.3, test_models: bool = False,
                 judge: JudgeModel | None = JUDGE, scores: dict[str, float] | None = None) -> None:
        self.image_score, self.caption_score = image_score, caption_score
        self.test_models = test_models
        self.judge_info = judge
        self.scores = scores or {}
        self.seeds: list[int] = []
        self.judged: list[tuple[bytes, str]] = []  # every pair the judge scored

    def served_model(self, endpoint: str) -> ServedModel:
        return ServedModel(endpoint, f"/models/{endpoint}", f"{endpoint.title()}Arch", 1000,
                           self.test_models, "tiny" if self.test_models else "")

    def judge_model(self) -> JudgeModel | None:
        return self.judge_info

    def text_to_image(self, model: str, endpoint: str, prompt: str, seed: int) -> bytes:
        assert endpoint == "diffusion"
        self.seeds.append(seed)
        return f"{model}|{prompt}".encode()

    def caption(self, model: str, endpoint: str, image: bytes) -> str:
        assert endpoint == "visionlanguage" and image.startswith(b"\x89PNG")  # a probe image
        return f"{model} says what it sees"

    def judge(self, images: list[bytes], texts: list[str]) -> JudgeScores:
        assert self.judge_info is not None and len(images) == len(texts)
        cosine = []
        for image, text in zip(images, texts):
            self.judged.append((image, text))
            if image.startswith(b"\x89PNG"):  # a caption of a probe image
                model = text.split(" says ")[0]
                cosine.append(self.scores.get(model, self.caption_score))
            else:  # a generated image for its prompt
                model, prompt = image.decode().split("|")
                assert prompt == text
                cosine.append(self.scores.get(model, self.image_score))
        return JudgeScores(tuple(cosine), self.judge_info)


class GraphServer:
    """A running server, its stub, and how to restart it on the same database."""

    def __init__(self, settings: Settings, **engine_kwargs: Any) -> None:
        self.settings = settings
        self.engine_kwargs = engine_kwargs
        self.running: RunningServer | None = None
        self.channel: grpc.Channel | None = None
        self.start()

    def start(self) -> None:
        engine = build_engine(self.settings, **self.engine_kwargs)
        self.engine = engine
        self.running = start_server(self.settings, build_service(self.settings, engine))
        self.channel = grpc.insecure_channel(self.running.address)
        self.stub = pb_grpc.MatchGraphStub(self.channel)

    def stop(self) -> None:
        if self.channel is not None:
            self.channel.close()
        if self.running is not None:
            self.running.stop(0)

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture()
def make_server(graph_dbs: Any) -> Iterator[Callable[..., GraphServer]]:
    made: list[GraphServer] = []

    def make(name: str = "graph.db", **overrides: Any) -> GraphServer:
        engine_kwargs = {k: overrides.pop(k) for k in ("embedder", "probe_backend") if k in overrides}
        kwargs: dict[str, Any] = dict(port=0, metrics_port=-1, db_url=graph_dbs.url(name), bootstrap_rounds=200,
                                      graph_bootstrap_rounds=20)
        settings = Settings(**{**kwargs, **overrides})
        server = GraphServer(settings, **engine_kwargs)
        made.append(server)
        return server

    yield make
    for s in made:
        s.stop()


def seed(stub: pb_grpc.MatchGraphStub) -> None:
    """UpsertModel the two seed models over gRPC."""
    from graph.seed_data import SEED_MODELS
    from services.matchgraph.types import record_to_pb

    for m in SEED_MODELS:
        stub.UpsertModel(pb.UpsertModelRequest(model=record_to_pb(m)))


@pytest.fixture()
def upsert_seed() -> Callable[[pb_grpc.MatchGraphStub], None]:
    return seed


@pytest.fixture()
def seeded(make_server: Callable[..., GraphServer]) -> GraphServer:
    server = make_server()
    seed(server.stub)
    return server


# ---------------------------------------------------------------- readings for tests
# Test readings in the catalogue's shape (sources on example.org say they are not real figures):
# Stable Diffusion has ten times Kosmos-2's downloads, each model one task.
T = "https://example.org/test-readings"
SAMPLE_CATALOGUE = Path(__file__).resolve().parent / "data" / "catalogue_sample.jsonl"


def with_readings(rec: ModelRecord) -> ModelRecord:
    """A seed record with test readings: adoption, ecosystem, dates and one published benchmark."""
    if rec.id == "kosmos-2-patch14-224":
        return replace(rec, adoption=(Signal("downloads", 160_000, f"{T}/kosmos-2", "2026-11-01", "160K",
                                             "last 30 days"),
                                      Signal("likes", 170, f"{T}/kosmos-2", "2026-11-01", "170")),
                       ecosystem=(Signal("finetunes", 12, f"{T}/kosmos-2", "2026-11-01", "12"),),
                       facts=(Fact("licence", "mit", f"{T}/kosmos-2", "2026-11-01"),
                              Fact("released", "2023-06-27", f"{T}/kosmos-2", "2026-11-01"),
                              Fact("last_modified", "2024-01-15", f"{T}/kosmos-2", "2026-11-01")),
                       external_quality=(QualityEvidence("COCO Captions CIDEr", 110.0, f"{T}/paper", "2026-11-01",
                                                         "image-to-text", "CIDEr"),))
    return replace(rec, adoption=(Signal("downloads", 1_500_000, f"{T}/sd", "2026-11-01", "1.5M", "last 30 days"),
                                  Signal("likes", 12_000, f"{T}/sd", "2026-11-01", "12K")),
                   ecosystem=(Signal("finetunes", 3_000, f"{T}/sd", "2026-11-01", "3K"),),
                   facts=(Fact("released", "2022-10-20", f"{T}/sd", "2026-11-01"),),
                   external_quality=(QualityEvidence("GenEval overall", 0.43, f"{T}/paper", "2026-11-01",
                                                     "text-to-image", "0..1"),))


def import_records(stub: pb_grpc.MatchGraphStub, records: list[ModelRecord]) -> pb.ImportModelsResponse:
    from services.matchgraph.types import record_to_pb

    return stub.ImportModels(iter([pb.ImportModelsRequest(models=[record_to_pb(r) for r in records])]))


def seed_with_readings(stub: pb_grpc.MatchGraphStub) -> None:
    """The seed models with test readings, plus the sample catalogue's BLIP and SDXL (one per task)."""
    from graph import catalogue_file
    from graph.seed_data import SEED_MODELS

    import_records(stub, [with_readings(m) for m in SEED_MODELS] + catalogue_file.load(SAMPLE_CATALOGUE))


@pytest.fixture()
def evidenced(make_server: Callable[..., GraphServer]) -> GraphServer:
    server = make_server()
    seed_with_readings(server.stub)
    return server
