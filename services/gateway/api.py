"""JSON endpoints under /api/v1: rank, compare, model detail (search, resolve, passports, feedback and
manifests are in ``api_catalogue``).

Each handler validates its parameters (FastAPI, so the limits are in the OpenAPI
document), makes exactly one MatchGraph call, converts the protobuf answer to the
schema in ``schemas.py`` and returns it with an ETag. Errors are raised, never
returned: ``errors.install_handlers`` turns them into problem documents.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from services.gateway import caching, schemas
from services.gateway.errors import PROBLEM_RESPONSES
from services.gateway.upstream import MatchGraphAPI

# No control characters: they are never part of a search or a model name, and
# rejecting them here keeps them out of SQLite FTS queries and log lines.
TEXT_PATTERN = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"

Query_ = Annotated[str, Query(min_length=1, max_length=512, pattern=TEXT_PATTERN,
                              description="Free text, 1..512 characters.", examples=["image captioning"])]
ModelRef = Annotated[str, Path(min_length=1, max_length=200, pattern=TEXT_PATTERN,
                               description="Model id, name or alias (case-insensitive).",
                               examples=["kosmos-2-patch14-224"])]


def upstream(request: Request) -> MatchGraphAPI:
    return request.app.state.matchgraph  # type: ignore[no-any-return]


def json_answer(request: Request, model: BaseModel, resp: object) -> Response:
    """``model`` as JSON with the ETag of ``resp``'s snapshot (and its staleness, if any)."""
    return caching.conditional(request, model.model_dump_json().encode(), "application/json",
                               schemas.snapshot_version(resp), stale_seconds=schemas.stale_seconds(resp))


router = APIRouter(prefix="/api/v1", tags=["match graph"], responses=PROBLEM_RESPONSES)


@router.get("/rank", response_model=schemas.RankList, summary="Models by UnfragileRank", operation_id="rank")
async def rank(
    request: Request,
    capability: Annotated[str, Query(max_length=512, pattern=TEXT_PATTERN,
                                     description="Only models with a matching capability (free text).")] = "",
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size.")] = 20,
    offset: Annotated[int, Query(ge=0, le=1_000_000, description="Models to skip.")] = 0,
) -> Response:
    """Models ordered by the lower bound of their UnfragileRank interval: a model with
    little evidence (a wide interval) does not outrank a well-evidenced one by luck."""
    if (cached := await caching.revalidate(request, upstream(request))) is not None:
        return cached
    resp = await upstream(request).rank(capability, limit, offset)
    return json_answer(request, schemas.RankList.from_pb(resp, limit, offset), resp)


@router.get("/compare", response_model=schemas.Comparison, summary="Compare two models", operation_id="compare")
async def compare(
    request: Request,
    a: Annotated[str, Query(min_length=1, max_length=200, pattern=TEXT_PATTERN,
                            description="First model: id, name or alias.", examples=["kosmos-2-patch14-224"])],
    b: Annotated[str, Query(min_length=1, max_length=200, pattern=TEXT_PATTERN,
                            description="Second model: id, name or alias; must differ from a.",
                            examples=["stable-diffusion"])],
) -> Response:
    """Two models side by side: per-dimension differences with 95% intervals, robustness
    (records to flip), the feature table, the verdict and the whole page as Markdown."""
    if (cached := await caching.revalidate(request, upstream(request))) is not None:
        return cached
    resp = await upstream(request).compare(a, b)
    return json_answer(request, schemas.Comparison.from_pb(resp), resp)


@router.get("/models/{model}", response_model=schemas.ModelDetail, summary="One model with its scores",
            operation_id="getModel")
async def model_detail(
    request: Request,
    model: ModelRef,
    explain: Annotated[bool, Query(description="Include the evidence rows behind every number.")] = False,
) -> Response:
    """A model record with its UnfragileRank, sub-scores and intervals; `explain=true`
    adds the evidence rows each number is computed from."""
    if (cached := await caching.revalidate(request, upstream(request))) is not None:
        return cached
    resp = await upstream(request).get_model(model, explain)
    return json_answer(request, schemas.ModelDetail.from_pb(resp), resp)


class Health(BaseModel):
    status: str = Field(description='"ok" (liveness) or "ready"/"not ready" (readiness).')
    matchgraph: str = Field(description="The MatchGraph target this gateway calls.")


health_router = APIRouter(tags=["health"])


@health_router.get("/healthz", response_model=Health, summary="Liveness", operation_id="healthz")
async def healthz(request: Request) -> Health:
    """The gateway process answers (says nothing about the MatchGraph)."""
    return Health(status="ok", matchgraph=request.app.state.settings.matchgraph_target)


@health_router.get("/readyz", response_model=Health, summary="Readiness", operation_id="readyz",
                   responses={503: {"model": Health, "description": "MatchGraph is not SERVING"}})
async def readyz(request: Request) -> Response:
    """Ready when the MatchGraph health check says SERVING; 503 otherwise."""
    ok = await upstream(request).ready()
    body = Health(status="ready" if ok else "not ready", matchgraph=request.app.state.settings.matchgraph_target)
    return Response(body.model_dump_json(), status_code=200 if ok else 503, media_type="application/json")
