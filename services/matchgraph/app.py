"""MatchGraph service assembly: ``build_engine`` and ``build_service`` for the core server.

"Loading the model" for this service means opening the database (SQLite or PostgreSQL) and rebuilding the
in-memory graph and PageRank from it; health turns SERVING only after that.
"""

from __future__ import annotations

import gc
import logging
import threading
from typing import Any

from graph.config import EngineConfig
from graph.engine import Engine
from graph.store import StoreConfig, open_store
from services.core.names import full_name
from services.core.server import GrpcService
from services.core.settings import section
from services.matchgraph import metrics
from services.matchgraph.servicer import MatchGraphServicer
from services.matchgraph.settings import Settings
from unfragile.matchgraph.v1 import matchgraph_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
FULL_NAME = full_name("matchgraph")
# RPCs that write the source of truth (or spend the model services' compute): admin role once auth is on.
ADMIN_METHODS = frozenset({"RecordMatches", "UpsertModel", "RunProbes"})
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
                                         settings.probe_timeout_s)
    store = open_store(settings.db_url, section(settings, StoreConfig))
    return Engine(store, section(settings, EngineConfig), embedder, probe_backend)


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
            except Exception:
                log.exception("scheduled probe run failed")


def build_service(settings: Settings, engine: Engine | None = None) -> GrpcService:
    engine = engine or build_engine(settings)
    engine.on_refresh = lambda iterations, seconds: metrics.observe_graph(
        engine.model_count(), engine.edge_count(), engine.graph_version(), iterations, seconds)
    schedule = _ProbeSchedule(engine, settings.probe_interval_s) if settings.probe_interval_s > 0 else None

    def load() -> None:
        engine.load()
        engine.state()
        # Millions of long-lived graph objects: move them out of the cyclic GC's way so full
        # collections do not stall requests (objects are still freed by reference counting).
        gc.freeze()
        metrics.observe_graph(engine.model_count(), engine.edge_count(), engine.graph_version())
        if schedule is not None and engine.can_probe:
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
