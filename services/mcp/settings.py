"""Settings of the stdio MCP server (env prefix ``UNFRAGILE_MCP_``).

Over streamable HTTP the server is part of the gateway (``/mcp``; its ``mcp_path`` setting) and uses the
gateway's MatchGraph settings instead.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings

from services.core.client import DEFAULT_MAX_MESSAGE_BYTES
from services.core.settings import settings_config


class Settings(BaseSettings):
    """``unfragile serve mcp --stdio``: where the MatchGraph is and how answers link to pages."""

    model_config = settings_config("UNFRAGILE_MCP_")

    matchgraph_target: str = Field(
        "127.0.0.1:50053", description="host:port of the MatchGraph gRPC service the reads go to (search, compare, "
        "passports, resolve): one process, or the readers (dns:///readers-headless:50053 spreads the calls).")
    matchgraph_writer_target: str = Field(
        "", description="host:port of the MatchGraph writer, for match records and feedback outcomes (or of a "
        "Service in front of the leader), or a comma-separated list of writer-capable MatchGraphs, of which the "
        "leader is found and followed; '' = matchgraph_target (one MatchGraph process).")
    matchgraph_root_ca: Path | None = Field(None, description="PEM CA to verify a TLS MatchGraph (unset = plaintext).")
    matchgraph_client_cert: Path | None = Field(None, description="PEM client certificate for mutual TLS.")
    matchgraph_client_key: Path | None = Field(None, description="PEM key of matchgraph_client_cert.")
    matchgraph_token: str = Field("", description="Bearer token sent to MatchGraph when its auth is on (\"\" = none).")
    max_message_bytes: int = Field(
        DEFAULT_MAX_MESSAGE_BYTES, gt=0, description="Largest gRPC message sent to or accepted from MatchGraph.")
    rpc_timeout_s: float = Field(10.0, gt=0, description="Deadline of each MatchGraph call; past it the tool "
                                 "answers an error saying so.")
    public_base_url: str = Field(
        "http://127.0.0.1:8080", description="Where the gateway's pages are (links in answers: model pages, "
        "passports, comparisons); the default is the gateway of `unfragile up`.")
    match_records: bool = Field(
        True, description="Each search and resolve_capability answer with results creates a match record (a "
                          "MatchEvent on the writer) whose matchRecordId the feedback tool refers to.")
    log_level: str = Field("INFO", description="Python logging level (logs go to stderr; stdout is the protocol).")
