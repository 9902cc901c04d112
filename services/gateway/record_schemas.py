"""JSON shapes of a model record (the API's ``Model`` and its parts) and their pb converters."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from unfragile.matchgraph.v1 import matchgraph_pb2 as pb

ModelTypeName = Literal["unspecified", "model", "tool", "api"]
TierName = Literal["unknown", "free", "freemium", "paid"]
_TYPE = {pb.MODEL_TYPE_UNSPECIFIED: "unspecified", pb.MODEL_TYPE_MODEL: "model",
         pb.MODEL_TYPE_TOOL: "tool", pb.MODEL_TYPE_API: "api"}
_TIER = {pb.PRICING_TIER_UNSPECIFIED: "unknown", pb.PRICING_TIER_FREE: "free",
         pb.PRICING_TIER_FREEMIUM: "freemium", pb.PRICING_TIER_PAID: "paid"}
TIER_LABEL = {"unknown": "Unknown", "free": "Free", "freemium": "Freemium", "paid": "Paid"}
TYPE_LABEL = {"unspecified": "Unspecified", "model": "Model", "tool": "Tool", "api": "API"}


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
    says: str = ""
    window: str = ""


class Fact(BaseModel):
    """A dated reading of a fact: licence, released or last_modified."""

    name: str
    value: str
    source: str
    observed_at: str
    says: str = ""


class QualityEvidence(BaseModel):
    benchmark: str
    score: float
    source: str
    observed_at: str
    task: str = ""
    scale: str = ""
    says: str = ""


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
    tasks: list[str] = Field(default_factory=list, description="Capability families; quality compares within one.")
    facts: list[Fact] = Field(default_factory=list)
    slug: str = Field("", description='owner--name slug ("" = none: the id serves).')
    hub_id: str = ""
    url: str = Field("", description="The artifact's own page.")
    organization: str = ""
    pipeline_tag: str = ""
    tags: list[str] = Field(default_factory=list)
    links: dict[str, str] = Field(default_factory=dict, description="Repository, homepage, paper, ...")

    @classmethod
    def from_pb(cls, m: pb.ModelRecord) -> Model:
        tier = _TIER.get(m.pricing.tier, "unknown")
        sig = lambda s: Signal(kind=s.kind, value=s.value, source=s.source, observed_at=s.observed_at,  # noqa: E731 - a one-line converter used twice below
                               says=s.says, window=s.window)
        return cls(
            id=m.id, name=m.name, aliases=list(m.aliases), type=_TYPE.get(m.type, "unspecified"),
            pricing=Pricing(tier=tier, label=TIER_LABEL[tier], plans=[PricingPlan.from_pb(p) for p in m.pricing.plans],
                            model=m.pricing.model, starting_price=m.pricing.starting_price
                            if m.pricing.HasField("starting_price") else None),
            adoption=[sig(s) for s in m.adoption], ecosystem=[sig(s) for s in m.ecosystem],
            serving_endpoint=m.serving_endpoint, version=m.version,
            capabilities=[Capability.from_pb(c) for c in m.capabilities], links={x.rel: x.url for x in m.links},
            external_quality=[QualityEvidence(benchmark=q.benchmark, score=q.score, source=q.source,
                                              observed_at=q.observed_at, task=q.task, scale=q.scale, says=q.says)
                              for q in m.external_quality],
            tasks=list(m.tasks), facts=[Fact(name=f.name, value=f.value, source=f.source, observed_at=f.observed_at,
                                             says=f.says) for f in m.facts],
            slug=m.slug, hub_id=m.hub_id, url=m.url, organization=m.organization, pipeline_tag=m.pipeline_tag,
            tags=list(m.tags),
        )
