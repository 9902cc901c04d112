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
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
MAX_TEXT = 8000


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


@dataclass(frozen=True)
class Capability:
    """One decomposed capability as on the seed page."""

    title: str
    description: str
    unique: str = ""
    vs_alternatives: str = ""

    def validate(self, where: str) -> None:
        _check_text(self.title, f"{where}.title", limit=200)
        _check_text(self.description, f"{where}.description")
        _check_text(self.unique, f"{where}.unique", required=False)
        _check_text(self.vs_alternatives, f"{where}.vs_alternatives", required=False)


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
        if self.pricing.tier not in PRICING_TIERS:
            raise InvalidArgument(f"pricing.tier {self.pricing.tier!r} must be one of {', '.join(PRICING_TIERS)}")
        for i, plan in enumerate(self.pricing.plans):
            plan.validate(f"pricing.plans[{i}]")
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
