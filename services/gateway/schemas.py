"""JSON shapes of the API (they generate the OpenAPI document) and their pb converters.

Field names follow the proto so a client can read the .proto comments for meaning;
enums become lowercase words ("a_leads", "freemium") instead of numbers.
"""

from __future__ import annotations

from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field

from services.gateway.record_schemas import TIER_LABEL as TIER_LABEL
from services.gateway.record_schemas import TYPE_LABEL as TYPE_LABEL
from services.gateway.record_schemas import Capability as Capability
from services.gateway.record_schemas import Fact as Fact
from services.gateway.record_schemas import Model as Model
from services.gateway.record_schemas import ModelTypeName as ModelTypeName
from services.gateway.record_schemas import Pricing as Pricing
from services.gateway.record_schemas import PricingPlan as PricingPlan
from services.gateway.record_schemas import QualityEvidence as QualityEvidence
from services.gateway.record_schemas import Signal as Signal
from services.gateway.record_schemas import TierName as TierName
from unfragile.matchgraph.v1 import matchgraph_pb2 as pb

OutcomeName = Literal["unspecified", "a_leads", "b_leads", "tied", "not_measured", "not_comparable"]

_OUTCOME = {pb.OUTCOME_UNSPECIFIED: "unspecified", pb.OUTCOME_A_LEADS: "a_leads",
            pb.OUTCOME_B_LEADS: "b_leads", pb.OUTCOME_TIED: "tied", pb.OUTCOME_NOT_MEASURED: "not_measured",
            pb.OUTCOME_NOT_COMPARABLE: "not_comparable"}


class Score(BaseModel):
    """A 0..1 sub-score (0..100 for rank) with its 95% bootstrap interval, or not measured (null numbers)."""

    value: float | None = Field(description="Point estimate on the full evidence; null when not measured.")
    low: float | None = Field(description="2.5th percentile of the bootstrap distribution; null when not measured.")
    high: float | None = Field(description="97.5th percentile of the bootstrap distribution; null when not measured.")
    evidence_count: int = Field(ge=0, description="Evidence rows behind it.")
    measured: bool = Field(True, description="False: no evidence, so no number (never to be read as 0).")
    not_measured_reason: str = Field("", description='Why it is not measured, e.g. "no adoption reading recorded".')
    note: str = Field("", description='A note on a measured value, e.g. "prior only: no recorded search has matched '
                                      'it yet".')

    @classmethod
    def from_pb(cls, s: pb.Score) -> Score:
        if not s.measured:
            return cls(value=None, low=None, high=None, evidence_count=s.evidence_count, measured=False,
                       not_measured_reason=s.not_measured_reason)
        return cls(value=s.value, low=s.low, high=s.high, evidence_count=s.evidence_count, note=s.note)


class ScoreCard(BaseModel):
    """UnfragileRank and its sub-scores, with the counts of the match graph."""

    rank: Score = Field(description="UnfragileRank on 0..100: the weighted mean of the measured sub-scores.")
    adoption: Score
    ecosystem: Score
    match_graph: Score
    quality: Score
    freshness: Score
    times_matched: int = Field(ge=0)
    times_compared: int = Field(ge=0)
    times_clicked: int = Field(ge=0)
    weights: dict[str, float] = Field(description="Configured weights of the sub-scores for its artifact type.")
    rests_on: list[str] = Field(description="The sub-scores its rank rests on (the measured ones); empty = no rank.")
    rank_weights: dict[str, float] = Field(description="The weights its rank used: those of rests_on, renormalised.")
    feedback: Score = Field(description="Success rate of feedback on its matches (shrunk; shown, not weighted).")

    @classmethod
    def from_pb(cls, c: pb.ScoreCard) -> ScoreCard:
        return cls(rank=Score.from_pb(c.rank), adoption=Score.from_pb(c.adoption),
                   ecosystem=Score.from_pb(c.ecosystem), match_graph=Score.from_pb(c.match_graph),
                   quality=Score.from_pb(c.quality), freshness=Score.from_pb(c.freshness),
                   times_matched=c.times_matched, times_compared=c.times_compared, times_clicked=c.times_clicked,
                   weights=dict(c.weights), rests_on=list(c.rests_on), rank_weights=dict(c.rank_weights),
                   feedback=Score.from_pb(c.feedback))


class Evidence(BaseModel):
    """One evidence row behind a number."""

    dimension: str
    kind: str
    detail: str
    value: float
    contribution: float
    source: str
    observed_at: str


class ModelDetail(BaseModel):
    """GET /api/v1/models/{model}: the record, its scores and (explain=true) the evidence."""

    model: Model
    scores: ScoreCard
    evidence: list[Evidence] = Field(description="Empty unless explain=true.")
    links: dict[str, str] = Field(description="Related pages: the model page.")
    snapshot_version: int | None = Field(
        None, description="Score snapshot the answer was computed from (also in X-Snapshot-Version and the ETag); "
                          "equal ids mean every number is the same.")

    @classmethod
    def from_pb(cls, r: pb.GetModelResponse) -> ModelDetail:
        return cls(model=Model.from_pb(r.model), scores=ScoreCard.from_pb(r.scores),
                   evidence=[Evidence(dimension=e.dimension, kind=e.kind, detail=e.detail, value=e.value,
                                      contribution=e.contribution, source=e.source, observed_at=e.observed_at)
                             for e in r.evidence],
                   links={"page": f"/models/{r.model.id}"}, snapshot_version=snapshot_version(r))


class RankedModel(BaseModel):
    position: int = Field(ge=1, description="1-based, ordered by the lower bound of the rank interval.")
    id: str
    name: str
    scores: ScoreCard


class RankList(BaseModel):
    """GET /api/v1/rank: models ordered by the lower bound of their UnfragileRank interval."""

    models: list[RankedModel]
    total: int = Field(ge=0, description="Models that passed the capability filter.")
    limit: int
    offset: int
    snapshot_version: int | None = Field(
        None, description="Score snapshot the answer was computed from (also in X-Snapshot-Version and the ETag); "
                          "equal ids mean every number is the same.")

    @classmethod
    def from_pb(cls, r: pb.RankResponse, limit: int, offset: int) -> RankList:
        return cls(models=[RankedModel(position=m.position, id=m.id, name=m.name, scores=ScoreCard.from_pb(m.scores))
                           for m in r.models], total=r.total, limit=limit, offset=offset,
                   snapshot_version=snapshot_version(r))


class Dimension(BaseModel):
    """One dimension of a comparison, with the statistics its verdict sentence rests on."""

    dimension: str = Field(description='"rank", "adoption", "quality", "ecosystem", "match_graph" or "freshness".')
    a: Score
    b: Score
    diff: float | None = Field(description="a - b on the full evidence (null when not measured for both).")
    diff_low: float | None = Field(description="Lower end of the 95% interval of a - b.")
    diff_high: float | None = Field(description="Upper end of the 95% interval of a - b.")
    outcome: OutcomeName
    records_to_flip: int = Field(description="Evidence rows whose removal flips the order; 0 tied, -1 never.")
    fragile: bool
    comparable: bool = Field(True, description="False: the two share no task (quality).")
    note: str = Field("", description="Why it is not comparable or not measured.")

    @classmethod
    def from_pb(cls, d: pb.DimensionComparison) -> Dimension:
        outcome = _OUTCOME.get(d.outcome, "unspecified")
        missing = outcome in ("not_measured", "not_comparable")
        return cls(dimension=d.dimension, a=Score.from_pb(d.a), b=Score.from_pb(d.b),
                   diff=None if missing else d.diff, diff_low=None if missing else d.diff_low,
                   diff_high=None if missing else d.diff_high, outcome=outcome,  # type: ignore[arg-type]
                   records_to_flip=d.records_to_flip, fragile=d.fragile, comparable=d.comparable, note=d.note)


class ServedModel(BaseModel):
    """What a model service had loaded when it was probed (its ModelInfo)."""

    endpoint: str = Field(description='"visionlanguage" or "diffusion".')
    model_id: str = Field(description="Hub id or folder the service loaded.")
    architecture: str
    parameters: int = Field(ge=0)
    test_model: bool = Field(description="A random-weight test model: its quality says nothing about the real model.")
    test_preset: str = Field(description='Build preset of a test model ("tiny", "bench"); "" otherwise.')


class ProbeBasis(BaseModel):
    """Which served model the quality probes of one compared model ran on."""

    model: str = Field(description="Catalogue model id.")
    served: ServedModel | None = Field(description="null: the served model was not recorded.")
    runs: int = Field(ge=0, description="Probe runs on this served model behind the quality score.")

    @classmethod
    def from_pb(cls, b: pb.ProbeBasis) -> ProbeBasis:
        s = b.served
        served = ServedModel(endpoint=s.endpoint, model_id=s.model_id, architecture=s.architecture,
                             parameters=s.parameters, test_model=s.test_model,
                             test_preset=s.test_preset) if b.HasField("served") else None
        return cls(model=b.model, served=served, runs=b.runs)


class FeatureRow(BaseModel):
    feature: str
    a: str
    b: str


class SourceCell(BaseModel):
    """One reading: the figure as shown, the page it was read from, the date, what the page says."""

    text: str
    source: str
    observed_at: str
    says: str = ""


class SourceRow(BaseModel):
    """One kind of figure for both models; an empty list = no reading."""

    label: str
    a: list[SourceCell]
    b: list[SourceCell]

    @classmethod
    def from_pb(cls, r: pb.SourceRow) -> SourceRow:
        cell = lambda c: SourceCell(text=c.text, source=c.source, observed_at=c.observed_at, says=c.says)  # noqa: E731
        return cls(label=r.label, a=[cell(c) for c in r.a], b=[cell(c) for c in r.b])


class Comparison(BaseModel):
    """GET /api/v1/compare: two models side by side, verdict and the page as Markdown."""

    a: Model
    b: Model
    a_scores: ScoreCard
    b_scores: ScoreCard
    dimensions: list[Dimension]
    rows: list[FeatureRow] = Field(description="The feature table, formatted as on the page.")
    headline: str
    verdict: list[str] = Field(description="Verdict sentences in page order.")
    probe_basis: list[ProbeBasis] = Field(
        description="What the quality probes of a and b ran on (empty when neither was probed).")
    sources: list[SourceRow] = Field(default_factory=list,
                                     description="Every reading the scores rest on, with its source and date.")
    markdown: str = Field(description="The whole comparison page as Markdown.")
    links: dict[str, str] = Field(description="The HTML comparison page and each model's page.")
    snapshot_version: int | None = Field(
        None, description="Score snapshot the answer was computed from (also in X-Snapshot-Version and the ETag); "
                          "equal ids mean every number is the same.")

    @classmethod
    def from_pb(cls, r: pb.CompareResponse) -> Comparison:
        return cls(a=Model.from_pb(r.a), b=Model.from_pb(r.b), a_scores=ScoreCard.from_pb(r.a_scores),
                   b_scores=ScoreCard.from_pb(r.b_scores), dimensions=[Dimension.from_pb(d) for d in r.dimensions],
                   rows=[FeatureRow(feature=x.feature, a=x.a, b=x.b) for x in r.rows], headline=r.headline,
                   verdict=list(r.verdict), probe_basis=[ProbeBasis.from_pb(b) for b in r.probe_basis],
                   sources=[SourceRow.from_pb(x) for x in r.sources],
                   markdown=r.markdown,
                   links={"page": f"/compare/{r.a.id}-vs-{r.b.id}", "a": f"/models/{r.a.id}",
                          "b": f"/models/{r.b.id}"}, snapshot_version=snapshot_version(r))


class SearchHit(BaseModel):
    model_id: str
    name: str
    slug: str = Field(description="owner--name slug (the id when it has none): /api/v1/passport/{slug}.")
    type: str = Field(description='"model", "tool" or "api".')
    capability: str = Field(description='Best matching capability title ("" if the model row matched).')
    capability_uri: str = Field(description='capability://... of that capability ("" if none).')
    intent: str = Field(description='Id of the query intent that capability serves ("" = matched on text only).')
    match_score: float = Field(ge=0, le=1, description="0..1: how well it answers the query (intent and text).")
    intent_score: float = Field(ge=0, le=1, description="0..1: the intent part of match_score.")
    text_score: float = Field(ge=0, le=1, description="0..1: the full-text (and embedding) part of match_score.")
    score: float = Field(description="Same as match_score (kept for older clients).")
    fts_rank: int = Field(ge=0, description="1-based rank in the full-text (BM25) list; 0 = not in it.")
    embedding_rank: int = Field(ge=0, description="1-based rank by embedding similarity; 0 = not used.")
    snippet: str = Field(description="Matching text with [brackets] around the hits.")
    url: str = Field(description="The model's page.")
    passport_url: str = Field(description="Its trust passport.")


class Intent(BaseModel):
    """A query intent from the intent taxonomy."""

    id: str
    label: str
    uri: str
    confidence: float = Field(ge=0, le=1, description="How clearly the text expresses it.")
    cues: list[str] = Field(description="The words or phrases that matched.")

    @classmethod
    def from_pb(cls, i: pb.Intent) -> Intent:
        return cls(id=i.id, label=i.label, uri=i.uri, confidence=i.confidence, cues=list(i.cues))


class SearchResults(BaseModel):
    """GET /api/v1/search: models and capabilities matching free text, with the query's classified intent."""

    model_config = ConfigDict(populate_by_name=True)

    query: str
    intent: Intent | None = Field(None, description="The query's intent; null = none recognised.")
    hits: list[SearchHit]
    match_record_id: str | None = Field(
        None, alias="matchRecordId", description="Id of the match record this search created: send it back with "
        "POST /api/feedback. null = none (no hit, recording off, or it failed: see match_record_error).")
    match_record_error: str | None = Field(None, description="Why no match record was created, when it failed.")
    embeddings_used: bool
    degraded_reason: str = Field(description='Why embeddings were not used ("" when they were).')
    snapshot_version: int | None = Field(
        None, description="Score snapshot the answer was computed from (also in X-Snapshot-Version and the ETag); "
                          "equal ids mean every number is the same.")

    @classmethod
    def from_pb(cls, query: str, r: pb.SearchResponse) -> SearchResults:
        return cls(query=query, embeddings_used=r.embeddings_used, degraded_reason=r.degraded_reason,
                   snapshot_version=snapshot_version(r),
                   intent=Intent.from_pb(r.intent) if r.HasField("intent") else None,
                   hits=[SearchHit(model_id=h.model_id, name=h.name, slug=h.slug or h.model_id,
                                   type=h.model_type or "model", capability=h.capability,
                                   capability_uri=h.capability_uri, intent=h.intent,
                                   match_score=_unit(h.match_score), intent_score=_unit(h.intent_score),
                                   text_score=_unit(h.text_score), score=h.score, fts_rank=h.fts_rank,
                                   embedding_rank=h.embedding_rank, snippet=h.snippet, url=f"/models/{h.model_id}",
                                   passport_url=f"/api/v1/passport/{h.slug or h.model_id}") for h in r.hits])


def _unit(x: float) -> float:
    """Clamped into 0..1 (floating-point sums may land a hair outside)."""
    return min(1.0, max(0.0, x))


def snapshot_version(message: object) -> int | None:
    """The rank snapshot version of a response (None for a proto without the field, so the
    gateway still works against an older MatchGraph)."""
    desc = getattr(message, "DESCRIPTOR", None)
    if desc is not None and "snapshot_version" in desc.fields_by_name:
        return int(cast(Any, message).snapshot_version)
    return None


def stale_seconds(message: object) -> float:
    """How far behind the store a MatchGraph reader's answer is (0: current, or a proto without the field)."""
    desc = getattr(message, "DESCRIPTOR", None)
    if desc is not None and "stale_seconds" in desc.fields_by_name:
        return float(message.stale_seconds)  # type: ignore[attr-defined]
    return 0.0
