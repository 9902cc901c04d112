"""Domain records of the match graph: models/tools, capabilities, signals, search events.

Plain dataclasses with validation, so the store, the ranker and the pages never see a
half-valid record. The gRPC layer (services/matchgraph/types.py) converts protobuf to
these and back; nothing here knows about gRPC.
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass, field

from common.errors import InvalidArgument

MODEL_TYPES = ("model", "tool", "api")
PRICING_TIERS = ("unknown", "free", "freemium", "paid")
SERVING_ENDPOINTS = ("", "visionlanguage", "diffusion")
ADOPTION_KINDS = ("downloads", "likes", "stars")
ECOSYSTEM_KINDS = ("integrations", "sdks", "formats")
# How the real catalogue service names a pricing model (``Pricing.model``; "" = derive it from the tier).
PRICING_MODELS = ("open_source", "free", "usage", "paid", "freemium", "unknown")
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
# owner--name as the real catalogue service spells it, e.g. "microsoft--kosmos-2-patch14-224"
_SLUG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_KIND_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,39}$")  # input/output types ("image", "text", "boxes")
_URL_RE = re.compile(r"^https?://[^\s/$.?#][^\s]*$")
MAX_TEXT = 8000
MAX_LIST = 50  # items in one list field of a capability or a model (intents, tags, ...)


def slugify(name: str) -> str:
    """A stable id from a display name: "Stable Diffusion" -> "stable-diffusion"."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", name.strip().lower()).strip("-._")
    return slug[:128]


def _check_date(value: str, what: str) -> None:
    try:
        _dt.date.fromisoformat(value)
    except ValueError:
        raise InvalidArgument(f"{what}: observed_at {value!r} is not an ISO date like 2026-11-01") from None


def _check_text(value: str, what: str, *, required: bool = True, limit: int = MAX_TEXT) -> None:
    if required and not value.strip():
        raise InvalidArgument(f"{what} is empty; give a short text")
    if len(value) > limit:
        raise InvalidArgument(f"{what} is {len(value)} characters; the limit is {limit}")


def _check_list(values: tuple[str, ...], what: str, *, limit: int = 500, items: int = MAX_LIST) -> None:
    """Each item a non-empty text of at most ``limit`` characters, at most ``items`` of them, none repeated."""
    if len(values) > items:
        raise InvalidArgument(f"{what} has {len(values)} items; at most {items}")
    for i, v in enumerate(values):
        _check_text(v, f"{what}[{i}]", limit=limit)
    if len(set(values)) != len(values):
        raise InvalidArgument(f"{what} lists an item twice")


def _check_kinds(values: tuple[str, ...], what: str) -> None:
    _check_list(values, what, limit=40, items=20)
    for i, v in enumerate(values):
        if not _KIND_RE.match(v):
            raise InvalidArgument(f"{what}[{i}] {v!r} must be a lowercase word like 'image', 'text' or 'boxes'")


def check_url(value: str, what: str) -> None:
    """An absolute http(s) URL of at most 500 characters (empty is allowed: no URL)."""
    if value and (len(value) > 500 or not _URL_RE.match(value)):
        raise InvalidArgument(f"{what} {value[:80]!r} must be an absolute http(s) URL of at most 500 characters")


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
        _check_text(self.title, f"{where}.title", limit=200)
        _check_text(self.description, f"{where}.description")
        _check_text(self.unique, f"{where}.unique", required=False)
        _check_text(self.vs_alternatives, f"{where}.vs_alternatives", required=False)
        _check_list(self.intents, f"{where}.intents", limit=200)
        _check_list(self.best_for, f"{where}.best_for")
        _check_list(self.limitations, f"{where}.limitations")
        _check_list(self.requires, f"{where}.requires")
        _check_kinds(self.input_types, f"{where}.input_types")
        _check_kinds(self.output_types, f"{where}.output_types")


@dataclass(frozen=True)
class Signal:
    """An adoption or ecosystem observation: a number, where it was seen, and when."""

    kind: str
    value: float
    source: str
    observed_at: str

    def validate(self, where: str) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,39}", self.kind):
            raise InvalidArgument(f"{where}.kind {self.kind!r} must be a lowercase word like 'downloads'")
        if not (self.value >= 0) or self.value == float("inf"):
            raise InvalidArgument(f"{where}.value must be a finite number >= 0, got {self.value}")
        _check_text(self.source, f"{where}.source", limit=500)
        _check_date(self.observed_at, where)


@dataclass(frozen=True)
class QualityEvidence:
    """A benchmark result for a model this deployment does not probe itself."""

    benchmark: str
    score: float
    source: str
    observed_at: str

    def validate(self, where: str) -> None:
        _check_text(self.benchmark, f"{where}.benchmark", limit=200)
        if not (0.0 <= self.score <= 1.0):
            raise InvalidArgument(f"{where}.score must be normalised to 0..1, got {self.score}")
        _check_text(self.source, f"{where}.source", limit=500)
        _check_date(self.observed_at, where)


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
        _check_text(self.name, f"{where}.name", limit=200)
        if not (self.usd_per_month >= 0):
            raise InvalidArgument(f"{where}.usd_per_month must be >= 0")
        _check_text(self.description, f"{where}.description", required=False)
        _check_text(self.source, f"{where}.source", required=False, limit=500)
        _check_text(self.source_says, f"{where}.source_says", required=False, limit=1000)
        if self.source_says and not self.source:
            raise InvalidArgument(f"{where}.source_says needs the source it quotes: set {where}.source to its URL")
        if self.observed_at:
            _check_date(self.observed_at, where)


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
        _check_text(self.mode, f"{where}.mode", limit=500)
        _check_text(self.frequency, f"{where}.frequency", required=False, limit=40)
        _check_text(self.mitigation, f"{where}.mitigation", required=False, limit=1000)


@dataclass(frozen=True)
class Link:
    """A related address: the repository, the homepage, the paper, the licence text."""

    rel: str  # lowercase word: "repository", "homepage", "paper", "license", "docs", ...
    url: str

    def validate(self, where: str) -> None:
        if not _KIND_RE.match(self.rel):
            raise InvalidArgument(f"{where}.rel {self.rel!r} must be a lowercase word like 'repository'")
        check_url(self.url, f"{where}.url")
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

    def validate(self) -> None:
        """Raise InvalidArgument naming the first bad field and how to fix it."""
        if not _ID_RE.match(self.id):
            raise InvalidArgument(
                f"model id {self.id!r} must be a lowercase slug ([a-z0-9][a-z0-9._-]*, <=128 chars), "
                f"e.g. {slugify(self.name) or 'stable-diffusion'!r}"
            )
        _check_text(self.name, "model.name", limit=200)
        if self.type not in MODEL_TYPES:
            raise InvalidArgument(f"model.type {self.type!r} must be one of {', '.join(MODEL_TYPES)}")
        self.pricing.validate()
        if self.serving_endpoint not in SERVING_ENDPOINTS:
            raise InvalidArgument(
                f"serving_endpoint {self.serving_endpoint!r} must be '', 'visionlanguage' or 'diffusion'"
            )
        for i, alias in enumerate(self.aliases):
            _check_text(alias, f"aliases[{i}]", limit=200)
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
        if self.slug and not _SLUG_RE.match(self.slug):
            raise InvalidArgument(f"slug {self.slug!r} must be owner--name in letters, digits, '.', '_' and '-' "
                                  f"(<= 200 characters), e.g. 'microsoft--kosmos-2-patch14-224'")
        check_url(self.url, "url")
        if self.pipeline_tag and not _KIND_RE.match(self.pipeline_tag):
            raise InvalidArgument(f"pipeline_tag {self.pipeline_tag!r} must be a lowercase word like 'image-to-text'")
        _check_list(self.tags, "tags", limit=100, items=100)
        for i, f in enumerate(self.failure_modes):
            f.validate(f"failure_modes[{i}]")
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


OUTCOMES = ("success", "failure")
_SOURCE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,99}$")


@dataclass(frozen=True)
class Feedback:
    """What became of a search: the outcome a user (or an agent) reports on one match record.

    ``artifact`` names the result the outcome is about (an id, slug or alias among the event's matched
    models); without it the outcome credits the event's clicked models, else its first matched one.
    """

    match_id: str  # the event_id of the match record (a search's or resolve's matchRecordId)
    outcome: str  # one of OUTCOMES
    clicked_through: bool = False
    source: str = ""  # who reports it: "web", "mcp", "api", an agent's name (a short word)
    comment: str = ""
    artifact: str = ""

    def validate(self) -> None:
        if not self.match_id or len(self.match_id) > 200:
            raise InvalidArgument("matchRecordId must be 1..200 characters: the matchRecordId of a search or "
                                  "resolve answer")
        if self.outcome not in OUTCOMES:
            raise InvalidArgument(f"outcome {self.outcome!r} must be 'success' or 'failure'")
        if self.source and not _SOURCE_RE.match(self.source):
            raise InvalidArgument(f"source {self.source[:40]!r} must be a short word (letters, digits, '_.:/-', "
                                  f"<= 100 characters), e.g. 'web' or 'mcp'")
        _check_text(self.comment, "comment", required=False, limit=2000)
        _check_text(self.artifact, "artifact", required=False, limit=200)
