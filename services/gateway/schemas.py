"""JSON shapes of the API (they generate the OpenAPI document) and their pb converters.

Field names follow the proto so a client can read the .proto comments for meaning;
enums become lowercase words ("a_leads", "freemium") instead of numbers.
"""

from __future__ import annotations

from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field

from unfragile.matchgraph.v1 import matchgraph_pb2 as pb

ModelTypeName = Literal["unspecified", "model", "tool", "api"]
TierName = Literal["unknown", "free", "freemium", "paid"]
OutcomeName = Literal["unspecified", "a_leads", "b_leads", "tied"]

_TYPE = {pb.MODEL_TYPE_UNSPECIFIED: "unspecified", pb.MODEL_TYPE_MODEL: "model",
         pb.MODEL_TYPE_TOOL: "tool", pb.MODEL_TYPE_API: "api"}
_TIER = {pb.PRICING_TIER_UNSPECIFIED: "unknown", pb.PRICING_TIER_FREE: "free",
         pb.PRICING_TIER_FREEMIUM: "freemium", pb.PRICING_TIER_PAID: "paid"}
_OUTCOME = {pb.OUTCOME_UNSPECIFIED: "unspecified", pb.OUTCOME_A_LEADS: "a_leads",
            pb.OUTCOME_B_LEADS: "b_leads", pb.OUTCOME_TIED: "tied"}
TIER_LABEL = {"unknown": "Unknown", "free": "Free", "freemium": "Freemium", "paid": "Paid"}
TYPE_LABEL = {"unspecified": "Unspecified", "model": "Model", "tool": "Tool", "api": "API"}


class Score(BaseModel):
    """A 0..1 sub-score (0..100 for rank) with its 95% bootstrap interval."""

    value: float = Field(description="Point estimate on the full evidence.")
    low: float = Field(description="2.5th percentile of the bootstrap distribution.")
    high: float = Field(description="97.5th percentile of the bootstrap distribution.")
    evidence_count: int = Field(ge=0, description="Evidence rows behind it (0 = no evidence).")

    @classmethod
    def from_pb(cls, s: pb.Score) -> Score:
        return cls(value=s.value, low=s.low, high=s.high, evidence_count=s.evidence_count)


class ScoreCard(BaseModel):
    """UnfragileRank and its four sub-scores, with the counts of the match graph."""

    rank: Score = Field(description="UnfragileRank on 0..100.")
    adoption: Score
    ecosystem: Score
    match_graph: Score
    quality: Score
    times_matched: int = Field(ge=0)
    times_compared: int = Field(ge=0)
    times_clicked: int = Field(ge=0)
    weights: dict[str, float] = Field(description="Weights of the sub-scores in the rank.")

    @classmethod
    def from_pb(cls, c: pb.ScoreCard) -> ScoreCard:
        return cls(rank=Score.from_pb(c.rank), adoption=Score.from_pb(c.adoption),
                   ecosystem=Score.from_pb(c.ecosystem), match_graph=Score.from_pb(c.match_graph),
                   quality=Score.from_pb(c.quality), times_matched=c.times_matched,
                   times_compared=c.times_compared, times_clicked=c.times_clicked, weights=dict(c.weights))


class Capability(BaseModel):
    title: str
    description: str
    unique: str
    vs_alternatives: str
    intents: list[str] = Field(default_factory=list, description="The needs it serves, in users' words.")
    best_for: list[str] = Field(default_factory=list)
    limitations: list[str] = Field(default_factory=list)
    input_types: list[str] = Field(default_factory=list)
    output_types: list[str] = Field(default_factory=list)
    requires: list[str] = Field(default_factory=list)

    @classmethod
    def from_pb(cls, c: pb.Capability) -> Capability:
        return cls(title=c.title, description=c.description, unique=c.unique, vs_alternatives=c.vs_alternatives,
                   intents=list(c.intents), best_for=list(c.best_for), limitations=list(c.limitations),
                   input_types=list(c.input_types), output_types=list(c.output_types), requires=list(c.requires))


class Signal(BaseModel):
    kind: str
    value: float
    source: str
    observed_at: str


class QualityEvidence(BaseModel):
    benchmark: str
    score: float
    source: str
    observed_at: str


class PricingPlan(BaseModel):
    name: str
    usd_per_month: float
    description: str
    source: str = Field(description='URL of the licence or price page the plan was read from ("" = none).')
    source_says: str = Field(description="What that page says, in a sentence.")
    observed_at: str = Field(description='ISO date the source was read ("" = not recorded).')

    @classmethod
    def from_pb(cls, p: pb.PricingPlan) -> PricingPlan:
        return cls(name=p.name, usd_per_month=p.usd_per_month, description=p.description, source=p.source,
                   source_says=p.source_says, observed_at=p.observed_at)


class Pricing(BaseModel):
    tier: TierName
    label: str = Field(description='As shown on pages: "Free", "Freemium", "Paid" or "Unknown".')
    plans: list[PricingPlan]
    model: str = Field("", description='open_source, free, usage, paid, freemium or unknown ("" = the tier\'s).')
    starting_price: float | None = Field(None, description="USD per month of the cheapest paid way in; null = "
                                                           "not known.")


class Model(BaseModel):
    """A model or tool record as stored by the MatchGraph."""

    id: str
    name: str
    aliases: list[str]
    type: ModelTypeName
    pricing: Pricing
    adoption: list[Signal]
    ecosystem: list[Signal]
    serving_endpoint: str = Field(description='"visionlanguage", "diffusion" or "" (not served here).')
    version: str
    capabilities: list[Capability]
    external_quality: list[QualityEvidence]
    slug: str = Field("", description='owner--name slug ("" = none: the id serves).')
    url: str = Field("", description="The artifact's own page.")
    pipeline_tag: str = ""
    tags: list[str] = Field(default_factory=list)
    links: dict[str, str] = Field(default_factory=dict, description="Repository, homepage, paper, ...")

    @classmethod
    def from_pb(cls, m: pb.ModelRecord) -> Model:
        tier = _TIER.get(m.pricing.tier, "unknown")
        sig = lambda s: Signal(kind=s.kind, value=s.value, source=s.source, observed_at=s.observed_at)  # noqa: E731 - a one-line converter used twice below
        return cls(
            id=m.id, name=m.name, aliases=list(m.aliases), type=_TYPE.get(m.type, "unspecified"),
            pricing=Pricing(tier=tier, label=TIER_LABEL[tier], plans=[PricingPlan.from_pb(p) for p in m.pricing.plans],
                            model=m.pricing.model, starting_price=m.pricing.starting_price
                            if m.pricing.HasField("starting_price") else None),
            adoption=[sig(s) for s in m.adoption], ecosystem=[sig(s) for s in m.ecosystem],
            serving_endpoint=m.serving_endpoint, version=m.version,
            capabilities=[Capability.from_pb(c) for c in m.capabilities], slug=m.slug, url=m.url,
            pipeline_tag=m.pipeline_tag, tags=list(m.tags), links={x.rel: x.url for x in m.links},
            external_quality=[QualityEvidence(benchmark=q.benchmark, score=q.score, source=q.source,
                                              observed_at=q.observed_at) for q in m.external_quality],
        )


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

    dimension: str = Field(description='"rank", "adoption", "ecosystem", "match_graph" or "quality".')
    a: Score
    b: Score
    diff: float = Field(description="a - b on the full evidence.")
    diff_low: float = Field(description="Lower end of the 95% interval of a - b.")
    diff_high: float = Field(description="Upper end of the 95% interval of a - b.")
    outcome: OutcomeName
    records_to_flip: int = Field(description="Evidence rows whose removal flips the order; 0 tied, -1 never.")
    fragile: bool

    @classmethod
    def from_pb(cls, d: pb.DimensionComparison) -> Dimension:
        return cls(dimension=d.dimension, a=Score.from_pb(d.a), b=Score.from_pb(d.b), diff=d.diff,
                   diff_low=d.diff_low, diff_high=d.diff_high, outcome=_OUTCOME.get(d.outcome, "unspecified"),
                   records_to_flip=d.records_to_flip, fragile=d.fragile)


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
