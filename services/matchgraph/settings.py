"""MatchGraph service settings (environment prefix ``UNFRAGILE_GRAPH_``).

The domain knobs are ``graph.config.EngineConfig``'s, inherited here so each is declared
once and keeps its flat name (``--set bootstrap_rounds=100``).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from graph.config import EngineConfig
from services.core.settings import GrpcServerSettings, settings_config


class Settings(EngineConfig, GrpcServerSettings):
    """MatchGraph settings (environment prefix ``UNFRAGILE_GRAPH_``)."""

    model_config = settings_config("UNFRAGILE_GRAPH_")

    port: int = Field(50053, ge=0, le=65535, description="gRPC port; 0 picks a free one (tests).")
    metrics_port: int = Field(9103, ge=-1, le=65535, description="Prometheus port; 0 = any free, -1 = off.")
    db_path: Path = Field(Path("var/matchgraph.db"), description="SQLite database file (the source of truth).")
    visionlanguage_target: str = Field(
        "", description="host:port of the VisionLanguage service (Embed for search, judge for probes); '' = none.")
    diffusion_target: str = Field("", description="host:port of the Diffusion service (probe images); '' = none.")
    probe_interval_s: float = Field(0.0, ge=0, description="Run probes every this many seconds; 0 = only on RPC.")
    probe_timeout_s: float = Field(120.0, gt=0, description="Deadline of each call to a model service in a probe.")
