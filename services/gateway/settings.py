"""The gateway's typed settings (env prefix ``UNFRAGILE_GATEWAY_``).

Kept apart from ``app.py`` so the server runner and the tests can import them without
building an application.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field, ValidationInfo, field_validator
from pydantic_settings import NoDecode

from services.core.client import DEFAULT_MAX_MESSAGE_BYTES
from services.core.settings import HttpListenerSettings, listed, settings_config


class MatchGraphClient(BaseModel):
    """How to reach the MatchGraph: where reads and writes go, TLS, token, limits (the gateway's, and the stdio
    MCP server's, which shares the gateway's MatchGraph client)."""

    matchgraph_target: str = Field(
        "127.0.0.1:50053", description="host:port of the MatchGraph gRPC service the reads go to: one process, or "
        "the readers: dns:///readers-headless:50053 or a comma-separated host:port list (round robin over the ones "
        "whose health is SERVING; a read that meets a dying one is retried once on another).")
    matchgraph_writer_target: str = Field(
        "", description="Where the writes (match records, feedback outcomes, the gateway's recorded searches) go: "
        "host:port of the MatchGraph writer (or of a Service in front of the leader), or a comma-separated list of "
        "writer-capable MatchGraphs, of which the leader is found and followed; '' = matchgraph_target (one "
        "MatchGraph process).")
    matchgraph_root_ca: Path | None = Field(None, description="PEM CA to verify a TLS MatchGraph (unset = plaintext).")
    matchgraph_client_cert: Path | None = Field(None, description="PEM client certificate for mutual TLS.")
    matchgraph_client_key: Path | None = Field(None, description="PEM key of matchgraph_client_cert.")
    matchgraph_token: str = Field("", description="Bearer token sent to MatchGraph when its auth is on (\"\" = none).")
    max_message_bytes: int = Field(
        DEFAULT_MAX_MESSAGE_BYTES, gt=0, description="Largest gRPC message sent to or accepted from MatchGraph.")
    rpc_timeout_s: float = Field(10.0, gt=0, description="Deadline of each MatchGraph call; past it the gateway "
                                 "answers 504, an MCP tool an error saying so.")


class Settings(MatchGraphClient, HttpListenerSettings):
    """HTTP gateway settings. ``port`` is the HTTP port here (not a gRPC one).

    Inherited ``tls_cert_file``/``tls_key_file``/``tls_client_ca_file`` make it serve HTTPS
    (client certificates required when the CA is set). The API is read-only; the gateway
    itself authenticates to the MatchGraph with ``matchgraph_token`` / a client certificate.
    """

    model_config = settings_config("UNFRAGILE_GATEWAY_")

    port: int = Field(8080, ge=0, le=65535, description="HTTP port of the gateway; 0 picks a free one (tests).")
    metrics_port: int = Field(
        -1, ge=-1, le=65535,
        description="Extra Prometheus port like the gRPC services use (0 = any free port, -1 = none); "
                    "the same metrics are always on `metrics_path` of the HTTP port too.",
    )
    metrics_path: str = Field("/metrics", description='Path of the Prometheus endpoint on the HTTP port ("" = off).')
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description='Origins allowed to call the JSON API from a browser, e.g. ["https://search.example"]; '
                    '["*"] allows any; empty = no CORS headers.',
    )
    cors_max_age_s: int = Field(600, ge=0, description="How long browsers may cache a CORS preflight answer.")
    public_base_url: str = Field(
        "", description="Absolute URL the gateway is reached at (for printed links); \"\" = http://host:port."
    )
    record_searches: bool = Field(
        False, description="Send each search made on the pages (query, results, what was opened/compared) to "
                           "MatchGraph RecordMatches. Off by default: it stores what users typed.")
    record_flush_s: float = Field(30.0, ge=0, description="Send a search event once it was quiet this long.")
    record_max_pending: int = Field(10_000, ge=1, description="Most unsent search events held in memory.")
    site_name: str = Field("unfragile", description="Name shown in page headers and titles.")
    api_match_records: bool = Field(
        True, description="Each /api/v1/search and /api/v1/resolve answer with results creates a match record "
                          "(a MatchEvent on the writer: the query and the models answered) whose id POST "
                          "/api/feedback refers to, as the real catalogue service does.")
    mcp_path: str = Field(
        "/mcp", description="Path of the MCP endpoint (streamable HTTP: the match graph's tools for agents, "
                            "docs/mcp.md) that `unfragile serve gateway` adds when the mcp package is installed "
                            "(the `mcp` extra); \"\" = off.")

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins(cls, v: Any) -> Any:
        """Accept a JSON list or a comma-separated string (env vars, ``--set cors_origins=a,b``)."""
        return listed(v)

    @field_validator("metrics_path", "mcp_path")
    @classmethod
    def _path(cls, v: str, info: ValidationInfo) -> str:
        if v and not v.startswith("/"):
            raise ValueError(f"{info.field_name} must start with '/' (or be empty to turn it off), got {v!r}")
        return v

    def base_url(self, port: int | None = None) -> str:
        """Where a browser reaches this gateway: public_base_url, else http://host:port."""
        if self.public_base_url:
            return self.public_base_url.rstrip("/")
        return super().base_url(port)
