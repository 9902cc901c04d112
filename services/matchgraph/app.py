"""MatchGraph service assembly: typed settings and ``build_service`` for the core server.

"Loading the model" for this service means opening the SQLite database and rebuilding the
in-memory graph and PageRank from it; health turns SERVING only after that.
"""

from __future__ import annotations

import gc
import logging
import threading
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from graph.engine import Engine, EngineConfig
from graph.matchgraph import PageRankParams
from graph.store import Store
from services.core.server import GrpcService
from services.core.settings import ServiceSettings
from services.matchgraph import metrics
from services.matchgraph.servicer import MatchGraphServicer
from unfragile.matchgraph.v1 import matchgraph_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
FULL_NAME = "unfragile.matchgraph.v1.MatchGraph"
# RPCs that write the source of truth (or spend the model services' compute): admin role once auth is on.
ADMIN_METHODS = frozenset({"RecordMatches", "UpsertModel", "RunProbes"})


class Settings(ServiceSettings):
    """MatchGraph settings (env prefix UNFRAGILE_GRAPH_)."""

    model_config = SettingsConfigDict(env_prefix="UNFRAGILE_GRAPH_", extra="ignore", protected_namespaces=())

    db_path: Path = Field(Path("var/matchgraph.db"), description="SQLite database file (the source of truth).")
    visionlanguage_target: str = Field(
        "", description="host:port of the VisionLanguage service (Embed for search, judge for probes); '' = none.")
    diffusion_target: str = Field("", description="host:port of the Diffusion service (probe images); '' = none.")
    weight_adoption: float = Field(0.25, ge=0, description="Weight of Adoption in UnfragileRank.")
    weight_ecosystem: float = Field(0.25, ge=0, description="Weight of Ecosystem in UnfragileRank.")
    weight_match_graph: float = Field(0.25, ge=0, description="Weight of Match Graph in UnfragileRank.")
    weight_quality: float = Field(0.25, ge=0, description="Weight of Quality in UnfragileRank.")
    bootstrap_rounds: int = Field(200, ge=10, le=5000, description="Bootstrap replicates behind every 95% interval.")
    graph_bootstrap_rounds: int = Field(
        50, ge=5, le=1000, description="PageRank bootstrap replicates (each is a PageRank run; reused cyclically).")
    graph_bootstrap_tol: float = Field(
        1e-7, gt=0, description="PageRank tolerance (L1) of each bootstrap replicate (looser than the point estimate).")
    seed: int = Field(0, ge=0, description="Seed of every bootstrap draw: same evidence -> same intervals.")
    bt_prior: float = Field(1.0, ge=0, description="Bradley-Terry pseudo-games per pair (keeps strengths finite).")
    pagerank_damping: float = Field(0.85, gt=0, lt=1, description="PageRank damping factor.")
    pagerank_tol: float = Field(1e-10, gt=0, description="PageRank stops when the L1 change is below this.")
    fragility_threshold: int = Field(5, ge=0, description="A lead erased by removing <= this many records is fragile.")
    fragility_max_records: int = Field(100, ge=1, description="Most removals tried when measuring robustness.")
    fragility_max_edges: int = Field(
        200_000, ge=0, description="Above this many co-match edges the match-graph robustness is not computed.")
    probe_tie_margin: float = Field(0.02, ge=0, le=1, description="Probe scores closer than this are a tie.")
    probe_interval_s: float = Field(0.0, ge=0, description="Run probes every this many seconds; 0 = only on RPC.")
    probe_timeout_s: float = Field(120.0, gt=0, description="Deadline of each call to a model service in a probe.")
    rrf_k: int = Field(60, ge=1, description="Reciprocal rank fusion constant k (score = sum 1/(k + rank)).")
    max_batch_events: int = Field(50_000, ge=1, description="Most events accepted in one RecordMatches message.")
    checkpoint_every_events: int = Field(
        200_000, ge=1, description="Checkpoint the derived co-match counts after this many new events "
        "(a restart replays at most this many events).")
    explain_scan_events: int = Field(
        20_000, ge=1, description="GetModel explain: most recent events scanned for a model's top queries.")

    @model_validator(mode="after")
    def _weights_positive(self) -> "Settings":
        if self.weight_adoption + self.weight_ecosystem + self.weight_match_graph + self.weight_quality <= 0:
            raise ValueError("at least one weight_* must be > 0")
        return self

    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            weights={"adoption": self.weight_adoption, "ecosystem": self.weight_ecosystem,
                     "match_graph": self.weight_match_graph, "quality": self.weight_quality},
            bootstrap_rounds=self.bootstrap_rounds, graph_bootstrap_rounds=self.graph_bootstrap_rounds,
            graph_bootstrap_tol=self.graph_bootstrap_tol, seed=self.seed, bt_prior=self.bt_prior,
            pagerank=PageRankParams(self.pagerank_damping, self.pagerank_tol),
            fragility_threshold=self.fragility_threshold, fragility_max_records=self.fragility_max_records,
            fragility_max_edges=self.fragility_max_edges, probe_tie_margin=self.probe_tie_margin,
            rrf_k=self.rrf_k, max_batch_events=self.max_batch_events,
            checkpoint_every_events=self.checkpoint_every_events, explain_scan_events=self.explain_scan_events,
        )


def build_engine(settings: Settings, embedder: Any = None, probe_backend: Any = None) -> Engine:
    """An engine over ``settings.db_path``; model-service clients are made from the targets unless given."""
    if embedder is None and settings.visionlanguage_target:
        from services.matchgraph.backends import GrpcEmbedder

        embedder = GrpcEmbedder(settings.visionlanguage_target, settings.probe_timeout_s)
    if probe_backend is None and settings.visionlanguage_target and settings.diffusion_target:
        from services.matchgraph.backends import GrpcProbeBackend

        probe_backend = GrpcProbeBackend(settings.visionlanguage_target, settings.diffusion_target,
                                         settings.probe_timeout_s)
    return Engine(Store(settings.db_path), settings.engine_config(), embedder, probe_backend)


class _ProbeSchedule:
    """Runs probes every ``interval`` seconds in a daemon thread until stopped."""

    def __init__(self, engine: Engine, interval: float) -> None:
        self.engine, self.interval = engine, interval
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="probe-schedule", daemon=True)

    def _loop(self) -> None:
        while not self.stop_event.wait(self.interval):
            try:
                with metrics.probe_run("schedule"):
                    self.engine.run_probes([], 0, 0)
            except Exception:  # noqa: BLE001 - a failed scheduled run must not kill the loop
                log.exception("scheduled probe run failed")


def build_service(settings: Settings, engine: Engine | None = None) -> GrpcService:
    engine = engine or build_engine(settings)
    engine.on_refresh = lambda iterations, seconds: metrics.observe_graph(
        len(engine.graph.nodes), engine.graph.w.nnz // 2, engine.graph.version, iterations, seconds)
    schedule = _ProbeSchedule(engine, settings.probe_interval_s) if settings.probe_interval_s > 0 else None

    def load() -> None:
        engine.load()
        engine.state()
        # Millions of long-lived graph objects: move them out of the cyclic GC's way so full
        # collections do not stall requests (objects are still freed by reference counting).
        gc.freeze()
        g = engine.graph
        metrics.observe_graph(len(g.nodes), g.w.nnz // 2, g.version)
        if schedule is not None and engine.probe_backend is not None:
            schedule.thread.start()

    def close() -> None:
        if schedule is not None:
            schedule.stop_event.set()
            if schedule.thread.is_alive():
                schedule.thread.join(timeout=settings.probe_timeout_s)
        engine.close()

    return GrpcService(name="matchgraph", full_name=FULL_NAME, servicer=MatchGraphServicer(engine),
                       add_to_server=pb_grpc.add_MatchGraphServicer_to_server, load=load, close=close,
                       admin_methods=ADMIN_METHODS)
