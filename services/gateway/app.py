"""The gateway application: ``Settings`` and ``create_app(settings)``.

FastAPI on Starlette (see docs/gateway.md for why): typed query parameters give
validation and the OpenAPI document from the same code, Starlette gives CORS, static
files and a plain ASGI core that uvicorn serves.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response

from services.gateway import api, api_catalogue, pages
from services.gateway.errors import install_handlers
from services.gateway.events import SearchRecorder
from services.gateway.metrics import MetricsMiddleware
from services.gateway.middleware import HeadAsGet, SecurityHeaders
from services.gateway.openapi import build_openapi
from services.gateway.settings import Settings
from services.gateway.upstream import MatchGraphAPI, open_matchgraph

__all__ = ["Settings", "create_app"]

STATIC = Path(__file__).with_name("static")


def create_app(settings: Settings | None = None,
               upstream_factory: Callable[[Settings], MatchGraphAPI] = open_matchgraph) -> FastAPI:
    """Build the ASGI app. The MatchGraph channel opens in the lifespan, on the serving loop."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.matchgraph = upstream_factory(settings)
        app.state.recorder = None
        task = None
        if settings.record_searches:
            app.state.recorder = SearchRecorder(app.state.matchgraph, settings.record_flush_s,
                                                settings.record_max_pending)
            task = asyncio.create_task(app.state.recorder.run(1.0 if settings.record_flush_s >= 2 else 0.1))
        try:
            yield
        finally:
            try:
                if task is not None:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                    await app.state.recorder.flush(force=True)
            finally:
                await app.state.matchgraph.close()

    app = FastAPI(
        title="unfragile search gateway",
        version="1.0.0",
        summary="JSON over HTTP for the MatchGraph: search, rank, compare, model detail.",
        description="Every answer comes from the MatchGraph gRPC service. Errors are RFC 9457 problem "
                    "documents; gRPC statuses map to HTTP as documented in docs/gateway.md. GET answers "
                    "carry an ETag; send it back in If-None-Match to get 304 when nothing changed.",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI would load scripts from a CDN; the document is at /openapi.json
        redoc_url=None,
    )
    app.state.settings = settings
    app.openapi = lambda: build_openapi(app)  # type: ignore[method-assign]
    install_handlers(app, pages.render_error_page)
    for router in (api_catalogue.router, api_catalogue.feedback_router, api.router, api.health_router, pages.router):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    if settings.metrics_path:
        @app.get(settings.metrics_path, include_in_schema=False)
        async def metrics_endpoint() -> Response:
            return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(SecurityHeaders)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "HEAD", "OPTIONS", "POST"],
            allow_headers=["If-None-Match", "Content-Type", "Authorization"],
            expose_headers=["ETag", "X-Snapshot-Version", "Retry-After"], max_age=settings.cors_max_age_s,
        )
    app.add_middleware(HeadAsGet)
    app.add_middleware(MetricsMiddleware)
    return app
