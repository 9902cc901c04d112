"""The gateway application: ``Settings`` and ``create_app(settings)``.

FastAPI on Starlette (see docs/gateway.md for why): typed query parameters give
validation and the OpenAPI document from the same code, Starlette gives CORS, static
files and a plain ASGI core that uvicorn serves.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response

from services.gateway import api, pages
from services.gateway.errors import install_handlers
from services.gateway.events import SearchRecorder
from services.gateway.metrics import MetricsMiddleware
from services.gateway.settings import Settings
from services.gateway.upstream import ChannelConfig, GrpcMatchGraph, MatchGraphAPI

__all__ = ["Settings", "create_app"]

STATIC = Path(__file__).with_name("static")

# Pages use no inline script and no inline style attributes; inline SVG needs nothing.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                               "script-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every response that does not set them (pure ASGI)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()
                         if k.lower().encode() not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_wrapper)


class HeadAsGet:
    """Answer HEAD like GET without the body (link checkers, ``curl -I``), without listing
    HEAD for every operation in the OpenAPI document."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, send_wrapper)


def default_upstream(settings: Settings) -> MatchGraphAPI:
    return GrpcMatchGraph(ChannelConfig(
        target=settings.matchgraph_target, timeout_s=settings.rpc_timeout_s, root_ca=settings.matchgraph_root_ca,
        client_cert=settings.matchgraph_client_cert, client_key=settings.matchgraph_client_key,
        token=settings.matchgraph_token, max_message_bytes=settings.max_message_bytes))


def _document_caching(op: dict[str, Any]) -> None:
    """ETag on 200, If-None-Match, and 304: handled in caching.py for every /api GET."""
    op.setdefault("parameters", []).append({
        "name": "If-None-Match", "in": "header", "required": False,
        "description": "ETag(s) from an earlier answer; a match gives 304 Not Modified with no body.",
        "schema": {"type": "string"}})
    op["responses"]["200"]["headers"] = {
        "ETag": {"description": "Tag of this representation (changes whenever any number in it does).",
                 "schema": {"type": "string"}},
        "Cache-Control": {"description": "Always `no-cache`: revalidate with If-None-Match.",
                          "schema": {"type": "string"}}}
    op["responses"]["304"] = {"description": "Not Modified: the If-None-Match tag still matches; no body.",
                              "headers": {"ETag": {"schema": {"type": "string"}}}}


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with error bodies declared as application/problem+json (what is sent)."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, summary=app.summary, description=app.description,
                      routes=app.routes)
    for path, item in doc.get("paths", {}).items():
        for op in item.values():
            if path.startswith("/api/"):
                _document_caching(op)
            for status, resp in op.get("responses", {}).items():
                content = resp.get("content", {})
                if status[0] in "45" and "application/json" in content and "Problem" in str(content):
                    resp["content"] = {"application/problem+json": content["application/json"]}
    schemas = doc.get("components", {}).get("schemas", {})
    text = str(doc["paths"])
    for unused in ("HTTPValidationError", "ValidationError"):
        if unused in schemas and unused not in text:
            del schemas[unused]
    app.openapi_schema = doc
    return doc


def create_app(settings: Settings | None = None,
               upstream_factory: Callable[[Settings], MatchGraphAPI] = default_upstream) -> FastAPI:
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
            if task is not None:
                task.cancel()
                await app.state.recorder.flush(force=True)
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
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    install_handlers(app, pages.render_error_page)
    app.include_router(api.router)
    app.include_router(api.health_router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    if settings.metrics_path:
        @app.get(settings.metrics_path, include_in_schema=False)
        async def metrics_endpoint() -> Response:
            return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(SecurityHeaders)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "HEAD", "OPTIONS"],
            allow_headers=["If-None-Match", "Content-Type", "Authorization"],
            expose_headers=["ETag", "X-Snapshot-Version", "Retry-After"], max_age=settings.cors_max_age_s,
        )
    app.add_middleware(HeadAsGet)
    app.add_middleware(MetricsMiddleware)
    return app
