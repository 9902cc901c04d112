"""MatchGraph service settings (environment prefix ``UNFRAGILE_GRAPH_``).

The domain knobs are ``graph.config.EngineConfig``'s, the storage knobs
``graph.store.StoreConfig``'s and the writer/reader knobs ``graph.config.FollowConfig``'s,
inherited here so each is declared once and keeps its flat name (``--set
bootstrap_rounds=100``, ``--set sqlite_synchronous=NORMAL``, ``--set max_staleness_s=5``).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from graph.config import EngineConfig, FollowConfig
from graph.store import StoreConfig, parse_db_url, sqlite_url
from services.core.settings import GrpcServerSettings, settings_config


class Settings(EngineConfig, FollowConfig, StoreConfig, GrpcServerSettings):
    """MatchGraph settings (environment prefix ``UNFRAGILE_GRAPH_``)."""

    model_config = settings_config("UNFRAGILE_GRAPH_")

    port: int = Field(50053, ge=0, le=65535, description="gRPC port; 0 picks a free one (tests).")
    metrics_port: int = Field(9103, ge=-1, le=65535, description="Prometheus port; 0 = any free, -1 = off.")
    db_url: str = Field(
        "sqlite:///var/matchgraph.db", description="The source of truth: sqlite:///relative/path.db, "
        "sqlite:////absolute/path.db (embedded, the default) or postgresql://user@host:port/dbname (shared server "
        "for one writer and many readers).")
    db_path: Path | None = Field(
        None, description="Deprecated: an SQLite file path, the same as db_url=sqlite:///<db_path>.")
    role: Literal["all", "writer", "reader"] = Field(
        "all", description="all: one process does everything (the default); writer: takes RecordMatches, UpsertModel "
        "and RunProbes and publishes snapshots (on PostgreSQL any number of writers: the holder of the leadership "
        "lock writes, the others stand by serving reads and take over when it dies); reader: serves GetModel, Rank, "
        "Compare and Search from the leader's newest snapshot (any number of them, on PostgreSQL).")
    writer_address: str = Field(
        "", description="Reader: host:port of the writer, named in the FAILED_PRECONDITION answer to write RPCs "
        "('' = the leader named by the newest publication).")
    advertise_address: str = Field(
        "", description="Writer: the host:port other processes and clients reach this one at, recorded when it becomes "
        "the leader and named by standbys and readers ('' = host:port, with the machine's host name when host is "
        "0.0.0.0; in Kubernetes set it to $(POD_IP):50053).")
    visionlanguage_target: str = Field(
        "", description="host:port of the VisionLanguage service (Embed for search, captions for probes); '' = none.")
    diffusion_target: str = Field("", description="host:port of the Diffusion service (probe images); '' = none.")
    probe_interval_s: float = Field(0.0, ge=0, description="Run probes every this many seconds; 0 = only on RPC.")
    probe_timeout_s: float = Field(120.0, gt=0, description="Deadline of each call to a model service in a probe.")
    hub_refresh_interval_s: float = Field(
        0.0, ge=0, description="Writer: every this many seconds, re-read each catalogue model that has a Hugging Face "
        "id from the Hub (downloads, likes, tags, licence, dates) and store the readings as dated observations; "
        "0 = off.")
    hub_endpoint: str = Field("", description="Hub the refresh reads ('' = the HF_ENDPOINT environment variable, "
                              "else https://huggingface.co).")
    judge_target: str = Field(
        "", description="host:port of the VisionLanguage service whose Judge RPC (its judge_model) scores quality "
        "probes; '' = visionlanguage_target.")

    @field_validator("db_url")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        parse_db_url(value)
        return value

    @model_validator(mode="after")
    def _readers_share_a_server(self) -> Settings:
        if self.role != "all" and parse_db_url(self.db_url)[1] == ":memory:":
            raise ValueError(f"role={self.role} needs a database other processes can open: set db_url to "
                             f"postgresql://... (or an SQLite file for a local reader)")
        return self

    @model_validator(mode="after")
    def _db_path_alias(self) -> Settings:
        if self.db_path is not None:
            if "db_url" in self.model_fields_set:
                raise ValueError("set db_url only (db_path is its deprecated SQLite-only alias)")
            warnings.warn("db_path is deprecated: use db_url=sqlite:///<path>", DeprecationWarning, stacklevel=2)
            self.db_url = sqlite_url(self.db_path)
        return self
