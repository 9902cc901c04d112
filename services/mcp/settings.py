"""Settings of the stdio MCP server (env prefix ``UNFRAGILE_MCP_``).

Over streamable HTTP the server is part of the gateway (``/mcp``; its ``mcp_path`` setting) and uses the
gateway's MatchGraph settings instead.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings

from services.core.settings import settings_config
from services.gateway.settings import MatchGraphClient


class Settings(MatchGraphClient, BaseSettings):
    """``unfragile serve mcp --stdio``: where the MatchGraph is (the gateway's MatchGraph client settings) and how
    answers link to pages."""

    model_config = settings_config("UNFRAGILE_MCP_")

    public_base_url: str = Field(
        "http://127.0.0.1:8080", description="Where the gateway's pages are (links in answers: model pages, "
        "passports, comparisons); the default is the gateway of `unfragile up`.")
    match_records: bool = Field(
        True, description="Each search and resolve_capability answer with results creates a match record (a "
                          "MatchEvent on the writer) whose matchRecordId the feedback tool refers to.")
    log_level: str = Field("INFO", description="Python logging level (logs go to stderr; stdout is the protocol).")
