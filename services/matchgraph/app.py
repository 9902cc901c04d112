"""MatchGraph service assembly: ``build_engine`` and ``build_service`` for the core server.

"Loading the model" for this service means opening the database (SQLite or PostgreSQL) and rebuilding the
in-memory graph and PageRank from it (a reader: from the writer's newest published snapshot); health turns
SERVING only after that. ``roles.py`` says what else each role runs.
"""

from __future__ import annotations

import gc
from typing import Any

from graph.config import EngineConfig
from graph.engine import Engine
from graph.store import StoreConfig, open_store
from services.core.names import full_name
from services.core.server import GrpcService
from services.core.settings import section
from services.matchgraph import metrics
from services.matchgraph.roles import Role, writes_refused
from services.matchgraph.servicer import MatchGraphServicer
from services.matchgraph.settings import Settings
from unfragile.matchgraph.v1 import matchgraph_pb2_grpc as pb_grpc

FULL_NAME = full_name("matchgraph")
# RPCs that write the source of truth (or spend the model services' compute): admin role once auth is on.
ADMIN_METHODS = frozenset({"RecordMatches", "UpsertModel", "ImportModels", "RunProbes", "RecordFeedback",
                           "ImportManifest"})
__all__ = ["FULL_NAME", "Settings", "build_engine", "build_service"]


def build_engine(settings: Settings, embedder: Any = None, probe_backend: Any = None) -> Engine:
    """An engine over the store ``settings.db_url`` names; model-service clients are made from the targets
    unless given."""
    if embedder is None and settings.visionlanguage_target:
        from services.matchgraph.backends import GrpcEmbedder

        embedder = GrpcEmbedder(settings.visionlanguage_target, settings.probe_timeout_s)
    if probe_backend is None and settings.visionlanguage_target and settings.diffusion_target:
        from services.matchgraph.backends import GrpcProbeBackend

        probe_backend = GrpcProbeBackend(settings.visionlanguage_target, settings.diffusion_target,
                                         settings.probe_timeout_s, settings.judge_target)
    store = open_store(settings.db_url, section(settings, StoreConfig))
    return Engine(store, section(settings, EngineConfig), embedder, probe_backend, writes_refused(settings))


def build_service(settings: Settings, engine: Engine | None = None) -> GrpcService:
    engine = engine or build_engine(settings)
    engine.on_refresh = lambda iterations, seconds: metrics.observe_graph(
        engine.model_count(), engine.edge_count(), engine.graph_version(), iterations, seconds)
    role = Role(settings, engine)

    def load() -> None:
        role.load()
        engine.state()
        # Millions of long-lived graph objects: move them out of the cyclic GC's way so full
        # collections do not stall requests (objects are still freed by reference counting).
        gc.freeze()
        metrics.observe_graph(engine.model_count(), engine.edge_count(), engine.graph_version())
        role.start()

    def close() -> None:
        role.stop()
        try:
            engine.close()  # the leader's final checkpoint is still written under its term
        finally:
            role.release()

    servicer = MatchGraphServicer(engine, role.info)
    return GrpcService(name="matchgraph", full_name=FULL_NAME, servicer=servicer,
                       add_to_server=pb_grpc.add_MatchGraphServicer_to_server, load=load, close=close,
                       admin_methods=ADMIN_METHODS, listening=role.listening)
