"""The OpenAI-compatible frontend: ``create_app(settings)``.

FastAPI on Starlette, like the gateway: the request bodies are pydantic models (a bad field
is a 400 naming it), responses are built by hand in OpenAI's shapes, and streams are
server-sent events. Every route converts and hands off to a gRPC service; nothing here
loads a model.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import JSONResponse, Response

from services.openai import chat, controls, embeddings, images
from services.openai.errors import APIError, install_handlers
from services.openai.metrics import MetricsMiddleware
from services.openai.middleware import ApiKeys, BodyLimit
from services.openai.settings import Settings
from services.openai.upstream import Upstreams

__all__ = ["Settings", "create_app"]

models_router = APIRouter()


@models_router.get("/v1/models", summary="The served models, ids as the services report them")
async def list_models(request: Request) -> Response:
    ups: Upstreams = request.app.state.upstreams
    settings: Settings = request.app.state.settings
    created = request.app.state.created
    data = [{"id": m.id, "object": "model", "created": created, "owned_by": settings.owned_by,
             "service": m.service, "architecture": m.architecture} for m in await ups.models()]
    return JSONResponse({"object": "list", "data": data})


@models_router.get("/v1/models/{model_id:path}", summary="One served model")
async def get_model(model_id: str, request: Request) -> Response:
    ups: Upstreams = request.app.state.upstreams
    settings: Settings = request.app.state.settings
    for m in await ups.models():
        if m.id == model_id:
            return JSONResponse({"id": m.id, "object": "model", "created": request.app.state.created,
                                 "owned_by": settings.owned_by, "service": m.service,
                                 "architecture": m.architecture})
    raise APIError(404, f"model {model_id!r} does not exist here; GET /v1/models lists the models",
                   param="model", code="model_not_found")


health_router = APIRouter()


@health_router.get("/health", summary="Liveness: the process answers")
async def health() -> Response:
    return JSONResponse({"status": "ok"})


@health_router.get("/readyz", summary="Readiness: at least one service reports SERVING")
async def readyz(request: Request) -> Response:
    ups: Upstreams = request.app.state.upstreams
    services = await ups.ready()
    ok = any(status == "SERVING" for status in services.values())
    return JSONResponse({"status": "ok" if ok else "unavailable", "services": services},
                        status_code=200 if ok else 503)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the ASGI app; the gRPC channels open in the lifespan, on the serving loop."""
    settings = settings or Settings()
    keys = settings.all_api_keys()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.upstreams = Upstreams(settings)
        try:
            yield
        finally:
            await app.state.upstreams.close()

    app = FastAPI(title="unfragile OpenAI-compatible API", version="1.0.0", lifespan=lifespan,
                  summary="Kosmos-2 chat and embeddings, Stable Diffusion images, over the OpenAI HTTP API.",
                  docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.created = int(time.time())
    install_handlers(app)
    app.include_router(models_router)
    app.include_router(chat.router)
    app.include_router(embeddings.router)
    app.include_router(images.router)
    app.include_router(controls.router)
    app.include_router(health_router)

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(ApiKeys, keys=keys)
    app.add_middleware(MetricsMiddleware)
    return app
