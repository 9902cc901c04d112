"""``build_server(backend)``: the MCP server (the SDK's ``MCPServer``) with the tools and resource templates,
and ``run_stdio(settings)``: serve it on stdin/stdout with its own MatchGraph channels."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import anyio
from mcp.server.mcpserver import MCPServer

from services.gateway.upstream import GrpcMatchGraph, open_matchgraph
from services.mcp.resources import Resources
from services.mcp.settings import Settings
from services.mcp.tools import Backend, Tools

log = logging.getLogger(__name__)
NAME = "unfragile"
INSTRUCTIONS = (
    "The unfragile match graph: which AI model (image captioning, grounding, VQA, text-to-image, ...) serves a "
    "need, and how far to trust it. Start with `search` (or `resolve_capability` for capability URIs); read a "
    "model's `trust_passport` or `compare` two. Every number comes with its interval or, when there is no "
    "evidence, null and a reason: never present a missing number as 0. After the user tried a result, report "
    "success or failure with `feedback` and the answer's matchRecordId.")


def _version() -> str:
    try:
        return version("unfragile")
    except PackageNotFoundError:
        return "0"


Lifespan = Callable[[MCPServer[Any]], AbstractAsyncContextManager[Any]]


def build_server(backend: Backend, lifespan: Lifespan | None = None) -> MCPServer[Any]:
    """The server with every tool and resource template, calling the MatchGraph through ``backend``."""
    server: MCPServer[Any] = MCPServer(NAME, title="unfragile match graph", instructions=INSTRUCTIONS,
                                       version=_version(), lifespan=lifespan)
    for fn, title, hints in Tools(backend).entries():
        server.add_tool(fn, title=title, annotations=hints, structured_output=True)
    for uri, read, name, mime_type, description in Resources(backend).entries():
        server.resource(uri, name=name, mime_type=mime_type, description=description)(read)
    return server


def stdio_server(settings: Settings) -> MCPServer[Any]:
    """The server for stdio: its channels open when the session starts (on its event loop) and close after."""
    held: dict[str, GrpcMatchGraph] = {}

    @asynccontextmanager
    async def lifespan(_server: MCPServer[Any]) -> AsyncIterator[None]:
        held["upstream"] = open_matchgraph(settings)
        try:
            yield
        finally:
            await held.pop("upstream").close()

    backend = Backend(upstream=lambda: held["upstream"], public_base_url=settings.public_base_url,
                      match_records=settings.match_records)
    return build_server(backend, lifespan)


def run_stdio(settings: Settings) -> None:
    """Serve one MCP session on stdin/stdout until the client closes it (blocking)."""
    log.info("MCP on stdio (MatchGraph at %s)", settings.matchgraph_target)
    anyio.run(stdio_server(settings).run_stdio_async)
