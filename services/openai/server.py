"""Run the frontend: ``run(settings)`` blocks under uvicorn (``unfragile serve openai``);
``start(settings)`` serves from a thread and returns once it accepts connections (tests).

As for the gateway, the serving itself (socket bound here so ``port=0`` works, TCP_NODELAY,
SIGTERM/SIGINT drain in-flight requests for ``grace_seconds`` and return, so the process exits 0)
is ``services.core.http_server``'s.
"""

from __future__ import annotations

import logging

from services.core import http_server
from services.core.http_server import RunningHttpServer
from services.openai.app import create_app
from services.openai.settings import Settings

log = logging.getLogger(__name__)

RunningFrontend = RunningHttpServer[Settings]
"""A frontend serving from a background thread."""


def run(settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT, then drain and return (blocking; call from the main thread)."""

    def announce(port: int) -> None:
        log.info("OpenAI-compatible API on %s/v1 (VisionLanguage at %s, Diffusion at %s)", settings.base_url(port),
                 settings.visionlanguage_target or "-", settings.diffusion_target or "-")

    http_server.run(settings, create_app, "openai", announce)


def start(settings: Settings, timeout: float = 30.0) -> RunningFrontend:
    """Start in a daemon thread (no signal handlers there) and wait until it serves."""
    return http_server.start(settings, create_app, "openai", "openai frontend", timeout)
