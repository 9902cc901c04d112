"""Run the gateway: ``run(settings)`` blocks under uvicorn; ``start(settings)`` runs it in a
thread (tests, ``unfragile up``) and returns once it accepts connections.

The serving itself (socket bound here so ``port=0`` works, SIGTERM/SIGINT drain in-flight
requests for ``grace_seconds`` and return) is ``services.core.http_server``'s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import FastAPI

from services.core import http_server
from services.core.http_server import RunningHttpServer
from services.gateway.app import create_app
from services.gateway.settings import Settings

log = logging.getLogger(__name__)

AppFactory = Callable[[Settings], FastAPI]
RunningGateway = RunningHttpServer[Settings]
"""A gateway serving from a background thread."""


def run(settings: Settings, app_factory: AppFactory = create_app) -> None:
    """Serve until SIGTERM/SIGINT, then drain and return (blocking; call from the main thread).
    ``app_factory`` builds the application (``services.mcp.http.gateway_app`` adds the MCP endpoint)."""

    def announce(port: int) -> None:
        log.info("gateway on %s (MatchGraph at %s)", settings.base_url(port), settings.matchgraph_target)

    http_server.run(settings, app_factory, "gateway", announce)


def start(settings: Settings, timeout: float = 30.0, app_factory: AppFactory = create_app) -> RunningGateway:
    """Start in a daemon thread (no signal handlers there) and wait until it serves."""
    return http_server.start(settings, app_factory, "gateway", "gateway", timeout)


def compare_url(base_url: str, a: str, b: str) -> str:
    """Address of the comparison page of models ``a`` and ``b`` (``make run`` prints the seed pair's)."""
    return f"{base_url.rstrip('/')}/compare/{a}-vs-{b}"
