"""The real catalogue service's interfaces: search with intents and match records, resolve, passports, feedback
and manifest validation. Thin routes: validate, one or two MatchGraph calls (reads to the readers, match records
and outcomes to the writer), and JSON shaped by ``schemas``, ``passport`` and ``matching``."""

from __future__ import annotations

import json
import logging
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request
from starlette.responses import JSONResponse, Response

from services.gateway import caching, schemas
from services.gateway.api import TEXT_PATTERN, Query_
from services.gateway.catalogue_calls import CatalogueAPI
from services.gateway.errors import PROBLEM_RESPONSES, Problem, problem_response
from services.gateway.matching import (
    FeedbackAnswer,
    FeedbackRequest,
    ResolveAnswer,
    ResolveRequest,
    ValidationAnswer,
    feedback_from_pb,
    resolve_from_pb,
    resolved_models,
    validation_from_pb,
)
from services.gateway.passport import PassportAnswer, passport_from_pb
from services.gateway.upstream import UpstreamError

log = logging.getLogger(__name__)
MAX_MANIFEST_BYTES = 256 * 1024
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml", "text/plain")
router = APIRouter(prefix="/api/v1", tags=["catalogue"], responses=PROBLEM_RESPONSES)
feedback_router = APIRouter(prefix="/api", tags=["catalogue"], responses=PROBLEM_RESPONSES)
Slug = Annotated[str, Path(min_length=1, max_length=200, pattern=TEXT_PATTERN,
                           description="owner--name slug (or the model's id, name or alias).",
                           examples=["microsoft--kosmos-2-patch14-224"])]


def upstream(request: Request) -> CatalogueAPI:
    return request.app.state.matchgraph  # type: ignore[no-any-return]


def base_url(request: Request) -> str:
    return str(request.app.state.settings.public_base_url or request.base_url).rstrip("/")


def _json(model: schemas.BaseModel, status: int = 200, snapshot: int | None = None) -> JSONResponse:
    """An answer that created or changed something: never cached."""
    headers = {"Cache-Control": "no-store"}
    if snapshot is not None:
        headers["X-Snapshot-Version"] = str(snapshot)
    return JSONResponse(model.model_dump(mode="json", by_alias=True), status_code=status, headers=headers)


async def _match_record(request: Request, query: str, matched: list[str]) -> tuple[str | None, str | None]:
    """(id of a new match record of this answer, why there is none)."""
    if not matched or not request.app.state.settings.api_match_records:
        return None, None
    try:
        return await upstream(request).record_match(query, matched), None
    except UpstreamError as err:
        log.warning("match record of %r not stored: %s", query[:80], err)
        return None, (f"the match record could not be stored ({err.code.name}: {err.message}); feedback cannot "
                      f"refer to this answer")


@router.get("/search", response_model=schemas.SearchResults, summary="Search models by intent and text",
            operation_id="search", response_model_by_alias=True)
async def search(
    request: Request,
    q: Query_,
    limit: Annotated[int, Query(ge=1, le=20, description="Most hits to return (1..20).")] = 10,
    type: Annotated[Literal["model", "tool", "api"] | None, Query(description="Only artifacts of this type.")] = None,
) -> Response:
    """The query's intent is classified and matched to the capabilities that serve it, fused with full text
    (and embeddings when the VisionLanguage service is up). Each search with hits creates a match record whose
    id (`matchRecordId`) POST /api/feedback refers to."""
    resp = await upstream(request).search(q, limit, type or "")
    out = schemas.SearchResults.from_pb(q, resp)
    out.match_record_id, out.match_record_error = await _match_record(request, q, [h.model_id for h in resp.hits])
    return _json(out, snapshot=out.snapshot_version)


@router.post("/resolve", response_model=ResolveAnswer, summary="Capabilities and models for an intent",
             operation_id="resolve", response_model_by_alias=True)
async def resolve(request: Request, body: ResolveRequest) -> Response:
    """The capabilities that serve the intent (best match first), each with the models that have it (best
    first); creates a match record like a search."""
    resp = await upstream(request).resolve(body.intent, body.limit)
    out = resolve_from_pb(body.intent, resp, base_url(request))
    out.match_record_id, out.match_record_error = await _match_record(request, body.intent, resolved_models(resp))
    return _json(out, snapshot=resp.snapshot_version)


@router.get("/passport/{slug}", response_model=PassportAnswer, summary="Trust passport of a model",
            operation_id="passport", response_model_by_alias=True)
async def passport(request: Request, slug: Slug) -> Response:
    """The artifact, its capabilities with their intents, conditions and observed outcomes, and its trust
    summary. Numbers not measured are null with a `*_reason` beside them."""
    resp = await upstream(request).passport(slug)
    body = passport_from_pb(resp, base_url(request)).model_dump_json(by_alias=True).encode()
    return caching.conditional(request, body, "application/json", resp.snapshot_version,
                               stale_seconds=resp.stale_seconds)


@feedback_router.post("/feedback", response_model=FeedbackAnswer, status_code=201, operation_id="feedback",
                      summary="Report the outcome of a search", response_model_by_alias=True,
                      responses={200: {"model": FeedbackAnswer, "description": "The same outcome was already "
                                       "recorded on this match record: nothing changed."},
                                 409: {"model": Problem, "description": "The match record already has another "
                                       "outcome."}})
async def feedback(request: Request, body: FeedbackRequest) -> Response:
    """Records success or failure on a match record (one outcome per record; repeating it is harmless).
    It feeds the success rates of the models it credits: `artifact`, else the record's clicked models, else
    its first result."""
    resp = await upstream(request).record_feedback(body.to_pb())
    return _json(feedback_from_pb(resp), status=200 if resp.duplicate else 201)


@router.post("/validate", response_model=ValidationAnswer, summary="Check an unfragile.yml manifest",
             operation_id="validate", openapi_extra={"requestBody": {"required": True, "content": {
                 "application/yaml": {"schema": {"type": "string"}},
                 "application/json": {"schema": {"type": "object", "description": "The manifest as JSON, or "
                                                 "{\"manifest\": \"<YAML text>\"}"}}}}})
async def validate(request: Request) -> Response:
    """Every problem of the manifest with the JSON Pointer of its field, and warnings; 200 whether it is valid
    or not (`valid` says). Writes nothing."""
    text = await _manifest_text(request)
    if isinstance(text, Response):
        return text
    return _json(validation_from_pb(await upstream(request).validate_manifest(text)))


async def _manifest_text(request: Request) -> str | Response:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json" and kind not in YAML_TYPES:
        return problem_response(415, f"send the manifest as application/yaml (or application/json), not "
                                     f"{kind or 'no content type'}")
    raw = await request.body()
    if len(raw) > MAX_MANIFEST_BYTES:
        return problem_response(413, f"the manifest is {len(raw)} bytes; at most {MAX_MANIFEST_BYTES}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return problem_response(400, "the manifest is not UTF-8 text")
    return _from_json(text) if kind == "application/json" else text


def _from_json(text: str) -> str | Response:
    """The manifest of a JSON body: {"manifest": "<YAML text>"}, or the manifest itself (JSON is YAML)."""
    try:
        doc = json.loads(text or "null")
    except json.JSONDecodeError as exc:
        return problem_response(400, f"the body is not JSON: {exc}")
    wrapped = isinstance(doc, dict) and set(doc) == {"manifest"} and isinstance(doc["manifest"], str)
    out = str(doc["manifest"]) if wrapped else json.dumps(doc, ensure_ascii=False)
    try:
        out.encode("utf-8")
    except UnicodeEncodeError:
        return problem_response(400, "the JSON holds an escaped unpaired UTF-16 surrogate (\\ud800-\\udfff)")
    return out

