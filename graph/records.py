"""Domain records of the match graph: models/tools, capabilities, readings, search events.

Plain dataclasses with validation, so the store, the ranker and the pages never see a
half-valid record. The gRPC layer (services/matchgraph/types.py) converts protobuf to
these and back; nothing here knows about gRPC.

Every figure about a model is a *reading*: a value with the page it was read from and the
date (``Signal`` for adoption and ecosystem counts, ``Fact`` for licence, release date and
last update, ``QualityEvidence`` for published benchmark results). A figure nobody read is
absent, never 0: the scores then say "not measured".
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass, field

from common.errors import InvalidArgument
from graph.checks import (
    ID_RE,
    KIND_RE,
    MAX_LIST,
    SLUG_RE,
    TASK_RE,
    check_date,
    check_kinds,
    check_list,
    check_text,
    check_url,
)

MODEL_TYPES = ("model", "tool", "api")
PRICING_TIERS = ("unknown", "free", "freemium", "paid")
SERVING_ENDPOINTS = ("", "visionlanguage", "diffusion")
ADOPTION_KINDS = ("downloads", "likes", "stars")
ECOSYSTEM_KINDS = ("integrations", "sdks", "formats")
FACT_NAMES = ("licence", "released", "last_modified")  # released / last_modified hold ISO dates
DATE_FACTS = ("released", "last_modified")
SIGNAL_KIND_RE = re.compile(r"[a-z][a-z0-9_]{0,39}")
# How the real catalogue service names a pricing model (``Pricing.model``; "" = derive it from the tier).
PRICING_MODELS = ("open_source", "free", "usage", "paid", "freemium", "unknown")


def slugify(name: str) -> str:
    """A stable id from a display name: "Stable Diffusion" -> "stable-diffusion"."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", name.strip().lower()).strip("-._")
    return slug[:128]


@dataclass(frozen=True)
class Capability:
    """One decomposed capability as on the seed page."""

    title: str
    description: str
    unique: str = ""
    vs_alternatives: str = ""
    intents: tuple[str, ...] = ()  # user needs it serves, in their words ("caption an image")
    best_for: tuple[str, ...] = ()  # who or what it suits best
    limitations: tuple[str, ...] = ()  # honest failure modes and limits
    input_types: tuple[str, ...] = ()  # lowercase words: "image", "text", "mask", ...
    output_types: tuple[str, ...] = ()  # "text", "boxes", "image", "embedding", ...
    requires: tuple[str, ...] = ()  # prerequisites (hardware, accounts, licences)

    def validate(self, where: str) -> None:
        check_text(self.title, where, name="title", limit=200)
        check_text(self.description, where, name="description")
        check_text(self.unique, where, name="unique", required=False)
        check_text(self.vs_alternatives, where, name="vs_alternatives", required=False)
        check_list(self.intents, where, name="intents", limit=200)
        check_list(self.best_for, where, name="best_for")
        check_list(self.limitations, where, name="limitations")
        check_list(self.requires, where, name="requires")
        check_kinds(self.input_types, where, name="input_types")
        check_kinds(self.output_types, where, name="output_types")


@dataclass(frozen=True)
class Signal:
    """An adoption or ecosystem observation: a number, where it was seen, and when."""

    kind: str
    value: float
    source: str
    observed_at: str
    says: str = ""  # what the page says ("161K"), so a reviewer can check the number
    window: str = ""  # e.g. "last 30 days" for downloads; "" = as the page shows it

    def validate(self, where: str) -> None:
        if not SIGNAL_KIND_RE.fullmatch(self.kind):
            raise InvalidArgument(f"{where}.kind {self.kind!r} must be a lowercase word like 'downloads'")
        if not (self.value >= 0) or self.value == float("inf"):
            raise InvalidArgument(f"{where}.value must be a finite number >= 0, got {self.value}")
        check_text(self.source, where, name="source", limit=500)
        check_date(self.observed_at, where)
        check_text(self.says, where, name="says", required=False, limit=1000)
        check_text(self.window, where, name="window", required=False, limit=100)


@dataclass(frozen=True)
class Fact:
    """A dated reading of a fact about a model: its licence, release date or last update."""

    name: str  # one of FACT_NAMES
    value: str  # the licence id, or an ISO date for released / last_modified
    source: str
    observed_at: str
    says: str = ""

    def validate(self, where: str) -> None:
        if self.name not in FACT_NAMES:
            raise InvalidArgument(f"{where}.name {self.name!r} must be one of {', '.join(FACT_NAMES)}")
        check_text(self.value, where, name="value", limit=200)
        if self.name in DATE_FACTS:
            try:
                _dt.date.fromisoformat(self.value)
            except ValueError:
                raise InvalidArgument(f"{where}.value {self.value!r} is not an ISO date like 2023-06-27") from None
        check_text(self.source, where, name="source", limit=500)
        check_date(self.observed_at, where)
        check_text(self.says, where, name="says", required=False, limit=1000)


@dataclass(frozen=True)
class QualityEvidence:
    """A published benchmark result of the real model, on the task it measures.

    ``score`` is the number as published on its ``scale`` (e.g. "0..1", "0..100", "CIDEr");
    without a scale it must already be on 0..1. Results are compared only with the same
    benchmark's results of other models of the same task.
    """

    benchmark: str
    score: float
    source: str
    observed_at: str
    task: str = ""  # the capability family it measures ("text-to-image"); "" = the model's only task
    scale: str = ""
    says: str = ""

    def validate(self, where: str) -> None:
        check_text(self.benchmark, where, name="benchmark", limit=200)
        if not self.scale and not (0.0 <= self.score <= 1.0):
            raise InvalidArgument(f"{where}.score must be on 0..1 when no scale is given, got {self.score}")
        if self.score != self.score or abs(self.score) == float("inf"):
            raise InvalidArgument(f"{where}.score must be a finite number")
        if self.task and not TASK_RE.match(self.task):
            raise InvalidArgument(f"{where}.task {self.task!r} must be a task name like 'text-to-image'")
        check_text(self.scale, where, name="scale", required=False, limit=300)
        check_text(self.source, where, name="source", limit=500)
        check_date(self.observed_at, where)
        check_text(self.says, where, name="says", required=False, limit=1000)


@dataclass(frozen=True)
class PricingPlan:
    """One way to get the model, what it costs, and where that was read (so a page can cite it)."""

    name: str
    usd_per_month: float = 0.0
    description: str = ""
    source: str = ""  # URL of the licence or price page the plan was read from
    source_says: str = ""  # what that page says, in a sentence
    observed_at: str = ""  # ISO date the source was read

    def validate(self, where: str) -> None:
        check_text(self.name, where, name="name", limit=200)
        if not (self.usd_per_month >= 0):
            raise InvalidArgument(f"{where}.usd_per_month must be >= 0")
        check_text(self.description, where, name="description", required=False)
        check_text(self.source, where, name="source", required=False, limit=500)
        check_text(self.source_says, where, name="source_says", required=False, limit=1000)
        if self.source_says and not self.source:
            raise InvalidArgument(f"{where}.source_says needs the source it quotes: set {where}.source to its URL")
        if self.observed_at:
            check_date(self.observed_at, where)


@dataclass(frozen=True)
class Pricing:
    tier: str = "unknown"  # one of PRICING_TIERS
    plans: tuple[PricingPlan, ...] = ()
    model: str = ""  # one of PRICING_MODELS as the real catalogue service says it; "" = from the tier
    starting_price: float | None = None  # USD per month of the cheapest paid way in; None = not known

    @property
    def pricing_model(self) -> str:
        """``model`` if set, else the tier's word (unknown, free, freemium, paid)."""
        return self.model or self.tier

    @property
    def free(self) -> bool:
        """Whether there is a free way to use it (open source, free, freemium)."""
        return self.pricing_model in ("open_source", "free", "freemium")

    @property
    def has_free_tier(self) -> bool:
        return self.tier in ("free", "freemium")

    @property
    def sources(self) -> tuple[PricingPlan, ...]:
        """The plans that say where their terms come from."""
        return tuple(p for p in self.plans if p.source)

    @property
    def label(self) -> str:
        return {"unknown": "Unknown", "free": "Free", "freemium": "Freemium", "paid": "Paid"}[self.tier]

    def validate(self) -> None:
        if self.tier not in PRICING_TIERS:
            raise InvalidArgument(f"pricing.tier {self.tier!r} must be one of {', '.join(PRICING_TIERS)}")
        if self.model and self.model not in PRICING_MODELS:
            raise InvalidArgument(f"pricing.model {self.model!r} must be one of {', '.join(PRICING_MODELS)}")
        if self.starting_price is not None and not (0 <= self.starting_price < float("inf")):
            raise InvalidArgument(f"pricing.starting_price must be a finite number >= 0, got {self.starting_price}")
        for i, plan in enumerate(self.plans):
            plan.validate(f"pricing.plans[{i}]")


@dataclass(frozen=True)
class FailureMode:
    """A declared way the model fails (``unfragile.yml`` failure_modes), with how often and what helps."""

    mode: str
    frequency: str = ""  # e.g. "rare", "occasional", "common"
    mitigation: str = ""

    def validate(self, where: str) -> None:
        check_text(self.mode, where, name="mode", limit=500)
        check_text(self.frequency, where, name="frequency", required=False, limit=40)
        check_text(self.mitigation, where, name="mitigation", required=False, limit=1000)


@dataclass(frozen=True)
class Link:
    """A related address: the repository, the homepage, the paper, the licence text."""

    rel: str  # lowercase word: "repository", "homepage", "paper", "license", "docs", ...
    url: str

    def validate(self, where: str) -> None:
        if not KIND_RE.match(self.rel):
            raise InvalidArgument(f"{where}.rel {self.rel!r} must be a lowercase word like 'repository'")
        check_url(self.url, where, name="url")
        if not self.url:
            raise InvalidArgument(f"{where}.url is empty; give the address")


@dataclass(frozen=True)
class ModelRecord:
    """A model, tool or API in the catalogue, with everything its pages show."""

    id: str
    name: str
    type: str = "model"
    aliases: tuple[str, ...] = ()
    pricing: Pricing = field(default_factory=Pricing)
    adoption: tuple[Signal, ...] = ()
    ecosystem: tuple[Signal, ...] = ()
    serving_endpoint: str = ""
    version: str = ""
    capabilities: tuple[Capability, ...] = ()
    external_quality: tuple[QualityEvidence, ...] = ()
    tasks: tuple[str, ...] = ()  # capability families ("image-to-text", "text-to-image"): quality compares within one
    facts: tuple[Fact, ...] = ()  # licence, release date, last update: each a dated reading
    hub_id: str = ""  # Hugging Face repo id ("" = not on the Hub)
    organization: str = ""
    slug: str = ""  # owner--name as the real catalogue service spells it; resolves like an alias
    url: str = ""  # the artifact's own page (e.g. its Hugging Face model page)
    pipeline_tag: str = ""  # the Hub's pipeline tag ("image-to-text"), "" when none
    tags: tuple[str, ...] = ()  # the Hub's tags ("transformers", "license:mit", ...)
    failure_modes: tuple[FailureMode, ...] = ()  # declared by its maintainer (unfragile.yml)
    links: tuple[Link, ...] = ()  # repository, homepage, paper, ...

    @property
    def public_slug(self) -> str:
        """The slug clients address it by: ``slug``, or the id when it has none."""
        return self.slug or self.id

    def fact(self, name: str) -> Fact | None:
        """The newest reading of fact ``name`` (by read date), or None."""
        found = [f for f in self.facts if f.name == name]
        return max(found, key=lambda f: f.observed_at) if found else None

    def validate(self) -> None:
        """Raise InvalidArgument naming the first bad field and how to fix it."""
        if not ID_RE.match(self.id):
            raise InvalidArgument(
                f"model id {self.id!r} must be a lowercase slug ([a-z0-9][a-z0-9._-]*, <=128 chars), "
                f"e.g. {slugify(self.name) or 'stable-diffusion'!r}"
            )
        check_text(self.name, "model.name", limit=200)
        if self.type not in MODEL_TYPES:
            raise InvalidArgument(f"model.type {self.type!r} must be one of {', '.join(MODEL_TYPES)}")
        self.pricing.validate()
        if self.serving_endpoint not in SERVING_ENDPOINTS:
            raise InvalidArgument(
                f"serving_endpoint {self.serving_endpoint!r} must be '', 'visionlanguage' or 'diffusion'"
            )
        check_list(self.aliases, "aliases", limit=200, items=1000, unique=False)
        for i, s in enumerate(self.adoption):
            s.validate(f"adoption[{i}]")
        for i, s in enumerate(self.ecosystem):
            s.validate(f"ecosystem[{i}]")
        for i, c in enumerate(self.capabilities):
            c.validate(f"capabilities[{i}]")
        for i, q in enumerate(self.external_quality):
            q.validate(f"external_quality[{i}]")
        if len(self.capabilities) > 200:
            raise InvalidArgument("at most 200 capabilities per model")
        for i, t in enumerate(self.tasks):
            if not TASK_RE.match(t):
                raise InvalidArgument(f"tasks[{i}] {t!r} must be a task name like 'image-to-text'")
        if len(set(self.tasks)) != len(self.tasks):
            raise InvalidArgument("tasks lists a task twice")
        for i, fact in enumerate(self.facts):
            fact.validate(f"facts[{i}]")
        readings = [("adoption", s.kind, s.source, s.observed_at) for s in self.adoption]
        readings += [("ecosystem", s.kind, s.source, s.observed_at) for s in self.ecosystem]
        readings += [("facts", f.name, f.source, f.observed_at) for f in self.facts]
        if len(set(readings)) != len(readings):
            dup = next(r for r in readings if readings.count(r) > 1)
            raise InvalidArgument(f"{dup[0]} has two readings of {dup[1]!r} from {dup[2]} on {dup[3]}: "
                                  f"a page read on one day gives one value")
        check_text(self.hub_id, "hub_id", required=False, limit=200)
        check_text(self.organization, "organization", required=False, limit=200)
        if self.slug and not SLUG_RE.match(self.slug):
            raise InvalidArgument(f"slug {self.slug!r} must be owner--name in letters, digits, '.', '_' and '-' "
                                  f"(<= 200 characters), e.g. 'microsoft--kosmos-2-patch14-224'")
        check_url(self.url, "url")
        if self.pipeline_tag and not KIND_RE.match(self.pipeline_tag):
            raise InvalidArgument(f"pipeline_tag {self.pipeline_tag!r} must be a lowercase word like 'image-to-text'")
        check_list(self.tags, "tags", limit=100, items=100)
        for i, mode in enumerate(self.failure_modes):
            mode.validate(f"failure_modes[{i}]")
        if len(self.failure_modes) > MAX_LIST:
            raise InvalidArgument(f"failure_modes has {len(self.failure_modes)} items; at most {MAX_LIST}")
        for i, link in enumerate(self.links):
            link.validate(f"links[{i}]")
        if len(self.links) > MAX_LIST:
            raise InvalidArgument(f"links has {len(self.links)} items; at most {MAX_LIST}")


@dataclass(frozen=True)
class MatchEvent:
    """One search: the query, the models it matched, what the user compared and clicked."""

    event_id: str
    query: str
    matched: tuple[str, ...]
    compared: tuple[str, ...] = ()
    clicked: tuple[str, ...] = ()
    timestamp_ms: int = 0

    def validate(self, where: str = "event") -> None:
        # Runs once per ingested event: cheap checks first, sets only when needed.
        if not self.event_id or len(self.event_id) > 200:
            raise InvalidArgument(f"{where}.event_id must be 1..200 characters (it is the idempotency key)")
        q = self.query
        if not q or len(q) > 1000 or q.isspace():
            raise InvalidArgument(f"{where}.query must be 1..1000 characters of search text")
        m = self.matched
        if not m:
            raise InvalidArgument(f"{where}.matched is empty: an event records at least one matched model")
        if len(m) > 100:
            raise InvalidArgument(f"{where}.matched has {len(m)} models; at most 100")
        if len(m) > 1 and len(set(m)) != len(m):
            raise InvalidArgument(f"{where}.matched lists a model twice")
        if self.compared or self.clicked:
            extra = (set(self.compared) | set(self.clicked)) - set(m)
            if extra:
                raise InvalidArgument(f"{where}: compared/clicked {sorted(extra)} are not in matched")
        if self.timestamp_ms < 0:
            raise InvalidArgument(f"{where}.timestamp_ms must be >= 0 (unix epoch milliseconds)")
