"""The trust passport as the real catalogue service shapes it, from a ``GetPassportResponse``.

Plain pydantic models and functions (no FastAPI): the gateway's route and any other front end (an MCP
server) build the same JSON with ``passport_from_pb(resp, base_url).model_dump(by_alias=True)``.

A number that was not measured is ``null`` with a ``<name>_reason`` beside it saying why; it is never 0
for "no evidence". Counts (``matches``) are measured counts, so 0 is a real 0.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from unfragile.matchgraph.v1 import matchgraph_pb2 as pb

PASSPORT_VERSION = "1.0"
_TYPE = {pb.MODEL_TYPE_MODEL: "model", pb.MODEL_TYPE_TOOL: "tool", pb.MODEL_TYPE_API: "api"}
_TIER = {pb.PRICING_TIER_UNSPECIFIED: "unknown", pb.PRICING_TIER_FREE: "free",
         pb.PRICING_TIER_FREEMIUM: "freemium", pb.PRICING_TIER_PAID: "paid"}
NO_OUTCOMES = "no outcome has been reported on a search that matched it"


class RateDetail(BaseModel):
    """A success rate shrunk toward its Beta prior, with its 95% credible interval and the counts behind it."""

    low: float
    high: float
    successes: int = Field(ge=0)
    trials: int = Field(ge=1)


def rate_fields(r: pb.Rate, reason: str = NO_OUTCOMES) -> dict[str, Any]:
    """``success_rate`` (null when not measured), ``success_rate_reason`` and ``success_rate_detail``."""
    if r.trials == 0:
        return {"success_rate": None, "success_rate_reason": reason, "success_rate_detail": None}
    return {"success_rate": r.value, "success_rate_reason": None,
            "success_rate_detail": RateDetail(low=r.low, high=r.high, successes=r.successes, trials=r.trials)}


class Pricing(BaseModel):
    model: str = Field(description="open_source, free, usage, paid, freemium or unknown.")
    free: bool = Field(description="Whether there is a free way to use it.")
    starting_price: float | None = Field(description="USD per month of the cheapest paid way in; null = not known.")


class Artifact(BaseModel):
    id: str
    slug: str
    name: str
    type: str
    url: str | None = Field(description="The artifact's own page; null = not recorded.")
    page_url: str = Field(description="Its page on this deployment.")
    categories: list[str] = Field(description="Categories of the intents its capabilities serve.")
    tags: list[str]
    pricing: Pricing
    status: str = Field(description='"active": listed in the catalogue.')
    verified: bool = Field(description="This deployment serves it, so its behaviour is observed here.")
    pipeline_tag: str | None = None
    aliases: list[str] = Field(default_factory=list)


class PassportCapability(BaseModel):
    id: str
    uri: str = Field(description="capability://<category>.<words of its name>")
    name: str
    description: str
    intents: list[str] = Field(description="Declared: the needs it serves, in users' words.")
    best_for: list[str]
    limitations: list[str]
    requires: list[str]
    input_types: list[str]
    output_types: list[str]
    categories: list[str] = Field(description="Categories of the taxonomy intents its declared intents express.")
    confidence: float | None = Field(description="0..1: how clearly its declared intents map to the intent taxonomy.")
    confidence_reason: str | None = None
    matches: int = Field(ge=0, description="Scanned searches that matched it by an intent it serves.")
    success_rate: float | None = Field(description="Reported outcomes on those searches, shrunk; null = none.")
    success_rate_reason: str | None = None
    success_rate_detail: RateDetail | None = None


class TopIntent(BaseModel):
    intent: str
    label: str
    uri: str
    matches: int


class ObservedOutcomes(BaseModel):
    matches: int = Field(ge=0, description="Searches that matched it.")
    success_rate: float | None
    success_rate_reason: str | None = None
    success_rate_detail: RateDetail | None = None
    avg_confidence: float | None = Field(description="Mean intent confidence of the scanned searches with an intent.")
    avg_confidence_reason: str | None = None
    top_intents: list[TopIntent]
    scanned: int = Field(ge=0, description="The most recent searches read for the per-intent figures.")


class FailureMode(BaseModel):
    mode: str
    frequency: str | None
    mitigation: str | None


class DimensionScore(BaseModel):
    """One dimension of UnfragileRank (0..1) with its 95% interval, or null with why it is not measured."""

    score: float | None
    score_reason: str | None = None
    score_interval: list[float] | None = None
    note: str | None = Field(None, description='On a measured score, e.g. "prior only: no recorded search has '
                                               'matched it yet".')
    weight: float | None = Field(None, description="Its weight in this model's rank (renormalised over the "
                                                   "measured dimensions); null = not in the rank.")


class Trust(BaseModel):
    score: float | None = Field(description="UnfragileRank / 100.")
    score_reason: str | None = None
    score_interval: list[float] | None = Field(description="95% interval of score.")
    rests_on: list[str] = Field(default_factory=list, description="The measured dimensions the score rests on.")
    dimensions: dict[str, DimensionScore] = Field(
        default_factory=dict, description="adoption, quality, ecosystem, match_graph, freshness: each 0..1, or null "
        "with the reason it is not measured (docs/ranking.md).")
    verified: bool
    failure_modes: list[FailureMode] = Field(description="Declared by its maintainer.")
    observed_outcomes: ObservedOutcomes


class Body(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    version_tag: str = Field(PASSPORT_VERSION, alias="@version")
    version: str = Field(description="The MatchGraph snapshot the numbers come from.")
    artifact: Artifact
    capabilities: list[PassportCapability]
    trust: Trust
    links: dict[str, dict[str, str]] = Field(alias="_links")


class Unfragile(BaseModel):
    unfragile: Body


class PassportAnswer(BaseModel):
    """GET /api/v1/passport/{slug}"""

    passport: Unfragile


def _category(i: pb.Intent) -> str:
    return i.uri.removeprefix("capability://")


def _or_none(text: str) -> str | None:
    return text or None


def _capability(m: pb.ModelRecord, c: pb.Capability, o: pb.CapabilityOutcomes | None) -> PassportCapability:
    measured = o is not None and o.confidence_measured
    return PassportCapability(
        id=f"{m.id}__cap_{o.position if o else 0}", uri=o.uri if o else "", name=c.title, description=c.description,
        intents=list(c.intents), best_for=list(c.best_for), limitations=list(c.limitations),
        requires=list(c.requires), input_types=list(c.input_types), output_types=list(c.output_types),
        categories=[_category(i) for i in o.intents] if o else [], confidence=o.confidence if measured and o else None,
        confidence_reason=None if measured else "none of its declared intents maps to the intent taxonomy",
        matches=o.matches if o else 0, **rate_fields(o.success_rate if o else pb.Rate()))


DIMENSIONS = ("adoption", "quality", "ecosystem", "match_graph", "freshness")


def _dimension(s: pb.Score, weight: float | None, scale: float = 1.0) -> DimensionScore:
    if not s.measured:
        return DimensionScore(score=None, score_reason=s.not_measured_reason or "not measured")
    return DimensionScore(score=s.value / scale, score_interval=[s.low / scale, s.high / scale], note=s.note or None,
                          weight=weight)


def _links(m: pb.ModelRecord, slug: str, base: str) -> dict[str, dict[str, str]]:
    out = {"self": {"href": f"{base}/api/v1/passport/{slug}"}, "page": {"href": f"{base}/models/{m.id}"},
           "model": {"href": f"{base}/api/v1/models/{m.id}"}, "feedback": {"href": f"{base}/api/feedback"},
           "resolve": {"href": f"{base}/api/v1/resolve"}}
    if m.url:
        out["artifact"] = {"href": m.url}
    for link in m.links:
        out.setdefault(link.rel, {"href": link.url})
    return out


def passport_from_pb(r: pb.GetPassportResponse, base_url: str) -> PassportAnswer:
    """The passport of ``r`` with absolute links under ``base_url`` (this gateway's address)."""
    m, base = r.model, base_url.rstrip("/")
    slug = m.slug or m.id
    outcomes = list(r.capabilities) + [None] * (len(m.capabilities) - len(r.capabilities))
    caps = [_capability(m, c, o) for c, o in zip(m.capabilities, outcomes)]
    model = m.pricing.model or _TIER.get(m.pricing.tier, "unknown")
    pricing = Pricing(model=model, free=model in ("open_source", "free", "freemium"),
                      starting_price=m.pricing.starting_price if m.pricing.HasField("starting_price") else None)
    categories = sorted({_category(i) for o in r.capabilities for i in o.intents})
    artifact = Artifact(id=m.id, slug=slug, name=m.name, type=_TYPE.get(m.type, "model"), url=_or_none(m.url),
                        page_url=f"{base}/models/{m.id}", categories=categories, tags=list(m.tags), pricing=pricing,
                        status="active", verified=r.served, pipeline_tag=_or_none(m.pipeline_tag),
                        aliases=list(m.aliases))
    o = r.outcomes
    rank = _dimension(r.scores.rank, None, 100.0)
    observed = ObservedOutcomes(
        matches=o.matches, **rate_fields(o.success_rate),
        avg_confidence=o.avg_confidence if o.classified else None,
        avg_confidence_reason=None if o.classified else "no scanned search that matched it expressed a known intent",
        top_intents=[TopIntent(intent=t.intent.id, label=t.intent.label, uri=t.intent.uri, matches=t.matches)
                     for t in o.top_intents], scanned=o.scanned)
    used = r.scores.rank_weights
    trust = Trust(score=rank.score, score_reason=rank.score_reason, score_interval=rank.score_interval,
                  rests_on=list(r.scores.rests_on),
                  dimensions={d: _dimension(getattr(r.scores, d), used[d] if d in used else None)
                              for d in DIMENSIONS},
                  verified=r.served,
                  failure_modes=[FailureMode(mode=f.mode, frequency=_or_none(f.frequency),
                                             mitigation=_or_none(f.mitigation)) for f in m.failure_modes],
                  observed_outcomes=observed)
    body = Body(version=str(r.snapshot_version), artifact=artifact, capabilities=caps, trust=trust,
                links=_links(m, slug, base))
    return PassportAnswer(passport=Unfragile(unfragile=body))
