"""Storage knobs of the MatchGraph (the backend itself is chosen by ``db_url``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class StoreConfig(BaseModel):
    """Storage knobs of the MatchGraph (the backend itself is chosen by ``db_url``)."""

    sqlite_synchronous: Literal["FULL", "NORMAL"] = Field(
        "FULL", description="SQLite: FULL fsyncs the WAL at every commit, so an acknowledged event survives "
        "power loss; NORMAL fsyncs only at checkpoints (faster; survives a process crash, not a power cut).")
    pg_pool_min_size: int = Field(2, ge=1, description="PostgreSQL: connections the pool keeps open.")
    pg_pool_max_size: int = Field(8, ge=1, description="PostgreSQL: most connections the pool opens under load.")
    pg_pool_timeout_s: float = Field(
        5.0, gt=0, description="PostgreSQL: longest wait for a pooled connection; past it (e.g. the server is "
        "down) a call answers UNAVAILABLE with a retry hint instead of hanging.")
    pg_connect_timeout_s: int = Field(3, ge=1, description="PostgreSQL: timeout of each connection attempt.")
    change_poll_interval_s: float = Field(
        0.2, gt=0, description="Polling period of the waits for new events and snapshots when no LISTEN "
        "connection can be used (SQLite, or PostgreSQL hot standbys and outages).")
