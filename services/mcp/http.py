"""Streamable HTTP at the gateway's ``mcp_path`` (``/mcp``): ``gateway_app(settings)`` is the gateway's
application with the MCP endpoint added, what ``unfragile serve gateway`` (and so ``unfragile up`` and the
gateway image) serves.

The endpoint shares the gateway's MatchGraph channels (reads to ``matchgraph_target``, records and outcomes
to ``matchgraph_writer_target``), its match-record setting and its public address. It is stateless (no MCP
session is kept between requests, so any gateway replica answers any request) and answers JSON rather than
an event stream (every tool answers once). Bound to a loopback address, it checks Host and Origin against
loopback names (and ``public_base_url``'s host) as the SDK does, against DNS rebinding.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI
from mcp.server.transport_security import TransportSecuritySettings
from starlette.routing import Match, Route
from starlette.types import Scope

from services.gateway.app import create_app
from services.gateway.settings import Settings
from services.mcp.server import build_server
from services.mcp.tools import Backend

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class NamedRoute(Route):
    """A route that names itself in the request scope, as FastAPI's do: the gateway's metrics label requests by
    route template (``route="/mcp"``), never "unmatched"."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match != Match.NONE:
            child["route"] = self
        return match, child


def gateway_app(settings: Settings) -> FastAPI:
    """The gateway's app, with the MCP endpoint at ``settings.mcp_path`` unless that is ""."""
    app = create_app(settings)
    if settings.mcp_path:
        mount(app, settings)
    return app


def transport_security(settings: Settings) -> TransportSecuritySettings | None:
    """Host/Origin checks for a loopback gateway (None: bound to a routable address, checks are the proxy's)."""
    if settings.host not in LOOPBACK:
        return None
    hosts = ["127.0.0.1:*", "localhost:*", "[::1]:*"]
    origins = [f"{scheme}://{host}" for scheme in ("http", "https") for host in hosts]
    if settings.public_base_url:
        public = urlsplit(settings.public_base_url)
        hosts += [public.netloc, f"{public.hostname}:*"]
        origins += [f"{public.scheme}://{public.netloc}"]
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts,
                                     allowed_origins=origins)


def mount(app: FastAPI, settings: Settings) -> None:
    """Add the endpoint to ``app``; its session manager runs inside the gateway's lifespan (after the
    MatchGraph channels open, before they close)."""
    backend = Backend(upstream=lambda: app.state.matchgraph, public_base_url=settings.public_base_url,
                      match_records=settings.api_match_records)
    server = build_server(backend)
    endpoint = server.streamable_http_app(streamable_http_path=settings.mcp_path, stateless_http=True,
                                          json_response=True, transport_security=transport_security(settings),
                                          host=settings.host)
    app.router.routes[:0] = [NamedRoute(r.path, r.endpoint, methods=r.methods) if isinstance(r, Route) else r
                             for r in endpoint.routes]  # before the pages' catch-all routes
    gateway_lifespan = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        async with gateway_lifespan(a) as state, server.session_manager.run():
            yield state

    app.router.lifespan_context = lifespan
