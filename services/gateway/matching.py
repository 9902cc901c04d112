"""JSON of resolve, feedback and manifest validation (the real catalogue service's shapes), from the MatchGraph's
protobuf answers. Plain pydantic models and functions (no FastAPI), shared by every front end."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from services.gateway.passport import RateDetail, rate_fields
from services.gateway.schemas import Intent
from unfragile.matchgraph.v1 import matchgraph_pb2 as pb

OUTCOMES = {"success": pb.MATCH_OUTCOME_SUCCESS, "failure": pb.MATCH_OUTCOME_FAILURE}
_OUTCOME_NAME = {v: k for k, v in OUTCOMES.items()}


class ResolveRequest(BaseModel):
    """POST /api/v1/resolve"""

    intent: str = Field(min_length=1, max_length=512, description="The need in the user's words.",
                        examples=["caption an image"])
    limit: int = Field(5, ge=1, le=20, description="Most models per capability.")


class ResolvedArtifact(BaseModel):
    id: str
    slug: str
    name: str
    capability: str = Field(description="Its capability that serves the intent.")
    match_score: float = Field(ge=0, le=1)
    rank: float | None = Field(description="UnfragileRank, 0..100; null = not measured (rank_reason says why).")
    rank_reason: str | None = None
    rank_interval: list[float] | None = Field(description="Its 95% interval; null when the rank is not measured.")
    success_rate: float | None
    success_rate_reason: str | None = None
    success_rate_detail: RateDetail | None = None
    page_url: str
    passport_url: str


class ResolvedCapability(BaseModel):
    uri: str
    intent: str
    label: str
    confidence: float = Field(ge=0, le=1, description="How well the request matches this intent.")
    artifacts: list[ResolvedArtifact] = Field(description="Best first.")


class ResolveAnswer(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    query: str
    intent: Intent | None = Field(description="The best matching intent; null = none recognised.")
    capabilities: list[ResolvedCapability] = Field(description="Best first.")
    match_record_id: str | None = Field(None, alias="matchRecordId",
                                        description="The match record this answer created, for POST /api/feedback.")
    match_record_error: str | None = None
    snapshot_version: int


def _rank(s: pb.Score) -> dict[str, float | str | list[float] | None]:
    if not s.measured:
        return {"rank": None, "rank_reason": s.not_measured_reason or "not measured", "rank_interval": None}
    return {"rank": s.value, "rank_reason": None, "rank_interval": [s.low, s.high]}


def resolve_from_pb(query: str, r: pb.ResolveResponse, base_url: str) -> ResolveAnswer:
    base = base_url.rstrip("/")
    caps = [ResolvedCapability(
        uri=c.intent.uri, intent=c.intent.id, label=c.intent.label, confidence=min(1.0, max(0.0, c.intent.confidence)),
        artifacts=[ResolvedArtifact(
            id=a.model_id, slug=a.slug or a.model_id, name=a.name, capability=a.capability,
            match_score=min(1.0, max(0.0, a.match_score)), **_rank(a.rank),
            page_url=f"{base}/models/{a.model_id}", passport_url=f"{base}/api/v1/passport/{a.slug or a.model_id}",
            **rate_fields(a.success_rate)) for a in c.artifacts]) for c in r.capabilities]
    return ResolveAnswer(query=query, intent=Intent.from_pb(r.intent) if r.HasField("intent") else None,
                         capabilities=caps, snapshot_version=r.snapshot_version)


def resolved_models(r: pb.ResolveResponse) -> list[str]:
    """Every model of a resolve answer once, in answer order (what its match record matched)."""
    return list(dict.fromkeys(a.model_id for c in r.capabilities for a in c.artifacts))[:100]


class FeedbackRequest(BaseModel):
    """POST /api/feedback"""

    model_config = ConfigDict(populate_by_name=True)

    match_record_id: str = Field(alias="matchRecordId", min_length=1, max_length=200,
                                 description="matchRecordId of a search or resolve answer.")
    outcome: Literal["success", "failure"]
    clicked_through: bool = Field(False, alias="clickedThrough")
    source: str = Field("", max_length=100, description='Who reports it: "web", "mcp", "api", ...')
    comment: str = Field("", max_length=2000)
    artifact: str = Field("", max_length=200, description="The result it is about (id or slug); default: the "
                          "record's clicked models, else its first result.")

    def to_pb(self) -> pb.RecordFeedbackRequest:
        return pb.RecordFeedbackRequest(match_id=self.match_record_id, outcome=OUTCOMES[self.outcome],
                                        clicked_through=self.clicked_through, source=self.source,
                                        comment=self.comment, artifact=self.artifact)


class FeedbackAnswer(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    recorded: bool = Field(description="true: the outcome is stored (now, or already by an identical report).")
    duplicate: bool = Field(description="The record already had this outcome: nothing changed.")
    match_record_id: str = Field(alias="matchRecordId")
    outcome: str
    credited: list[str] = Field(description="The models the outcome counts for.")
    clicked_through: bool = Field(alias="clickedThrough")
    source: str
    query: str = Field(description="The search the record is of.")


def feedback_from_pb(r: pb.RecordFeedbackResponse) -> FeedbackAnswer:
    f = r.feedback
    return FeedbackAnswer(recorded=True, duplicate=r.duplicate, match_record_id=r.match.event_id,
                          outcome=_OUTCOME_NAME.get(f.outcome, "unspecified"), credited=list(f.credited),
                          clicked_through=f.clicked_through, source=f.source, query=r.match.query)


class ManifestIssue(BaseModel):
    path: str = Field(description='JSON Pointer of the field ("" = the whole document).')
    code: str
    message: str


class ValidationAnswer(BaseModel):
    """POST /api/v1/validate"""

    valid: bool
    errors: list[ManifestIssue]
    warnings: list[ManifestIssue]
    artifact: dict[str, object] | None = Field(description="What importing it would store (id, slug, name, type, "
                                               "capabilities); null when invalid.")
    updates: str | None = Field(description="Id of the existing model importing it would update; null = a new one.")


def validation_from_pb(r: pb.ValidateManifestResponse) -> ValidationAnswer:
    def issues(items: list[pb.ManifestIssue]) -> list[ManifestIssue]:
        return [ManifestIssue(path=i.path, code=i.code, message=i.message) for i in items]

    m = r.model
    artifact: dict[str, object] | None = {
        "id": m.id, "slug": m.slug or m.id, "name": m.name, "capabilities": [c.title for c in m.capabilities],
        "type": {pb.MODEL_TYPE_TOOL: "tool", pb.MODEL_TYPE_API: "api"}.get(m.type, "model"),
    } if r.valid else None
    return ValidationAnswer(valid=r.valid, errors=issues(list(r.errors)), warnings=issues(list(r.warnings)),
                            artifact=artifact, updates=r.updates or None)
