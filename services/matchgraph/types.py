"""Protobuf <-> domain conversion for the MatchGraph API, with request validation.

Each request type has ``from_pb`` (validating, raising InvalidArgument with a message
that says what to fix); each domain result has a ``*_to_pb`` function. The servicer only
chains these around one engine call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from common.errors import InvalidArgument
from graph.compare import CompareResult
from graph.explain import EvidenceRow
from graph.ingest import IngestResult
from graph.intents import Intent
from graph.page_sources import SourceCell
from graph.probes import JudgeModel, ProbeBasis, ProbeRun, ServedModel
from graph.rank import Score, ScoreCard
from graph.records import (
    MODEL_TYPES,
    Capability,
    Fact,
    FailureMode,
    Link,
    MatchEvent,
    ModelRecord,
    Pricing,
    PricingPlan,
    QualityEvidence,
    Signal,
)
from graph.search import SearchResult
from graph.sync import Lag
from graph.verdict import A_LEADS, B_LEADS, NOT_COMPARABLE, NOT_MEASURED, DimensionResult
from unfragile.matchgraph.v1 import matchgraph_pb2 as pb

_TYPE_FROM = {pb.MODEL_TYPE_MODEL: "model", pb.MODEL_TYPE_TOOL: "tool", pb.MODEL_TYPE_API: "api"}
_TYPE_TO = {v: k for k, v in _TYPE_FROM.items()}
_TIER_FROM = {pb.PRICING_TIER_UNSPECIFIED: "unknown", pb.PRICING_TIER_FREE: "free",
              pb.PRICING_TIER_FREEMIUM: "freemium", pb.PRICING_TIER_PAID: "paid"}
_TIER_TO = {v: k for k, v in _TIER_FROM.items()}
_OUTCOME_TO = {A_LEADS: pb.OUTCOME_A_LEADS, B_LEADS: pb.OUTCOME_B_LEADS, NOT_MEASURED: pb.OUTCOME_NOT_MEASURED,
               NOT_COMPARABLE: pb.OUTCOME_NOT_COMPARABLE}
if TYPE_CHECKING:
    from services.matchgraph.roles import RoleInfo
ReadAnswer = TypeVar("ReadAnswer", pb.GetModelResponse, pb.RankResponse, pb.CompareResponse, pb.SearchResponse)


# ---------------------------------------------------------------- records
def capability_from_pb(c: pb.Capability) -> Capability:
    return Capability(c.title, c.description, c.unique, c.vs_alternatives, intents=tuple(c.intents),
                      best_for=tuple(c.best_for), limitations=tuple(c.limitations), input_types=tuple(c.input_types),
                      output_types=tuple(c.output_types), requires=tuple(c.requires))


def capability_to_pb(c: Capability) -> pb.Capability:
    return pb.Capability(title=c.title, description=c.description, unique=c.unique, vs_alternatives=c.vs_alternatives,
                         intents=c.intents, best_for=c.best_for, limitations=c.limitations,
                         input_types=c.input_types, output_types=c.output_types, requires=c.requires)


def _pricing_from_pb(p: pb.Pricing) -> Pricing:
    if p.tier not in _TIER_FROM:
        raise InvalidArgument(f"pricing.tier {p.tier} is not a known PricingTier")
    plans = tuple(PricingPlan(x.name, x.usd_per_month, x.description, x.source, x.source_says, x.observed_at)
                  for x in p.plans)
    return Pricing(_TIER_FROM[p.tier], plans, model=p.model,
                   starting_price=p.starting_price if p.HasField("starting_price") else None)


def _pricing_to_pb(p: Pricing) -> pb.Pricing:
    out = pb.Pricing(tier=_TIER_TO[p.tier], model=p.model, plans=[
        pb.PricingPlan(name=x.name, usd_per_month=x.usd_per_month, description=x.description, source=x.source,
                       source_says=x.source_says, observed_at=x.observed_at) for x in p.plans])
    if p.starting_price is not None:
        out.starting_price = p.starting_price
    return out


def record_from_pb(m: pb.ModelRecord) -> ModelRecord:
    if m.type not in _TYPE_FROM:
        raise InvalidArgument("model.type is unspecified: set MODEL_TYPE_MODEL, MODEL_TYPE_TOOL or MODEL_TYPE_API")
    rec = ModelRecord(
        id=m.id, name=m.name, type=_TYPE_FROM[m.type], aliases=tuple(m.aliases), pricing=_pricing_from_pb(m.pricing),
        adoption=tuple(Signal(s.kind, s.value, s.source, s.observed_at, s.says, s.window) for s in m.adoption),
        ecosystem=tuple(Signal(s.kind, s.value, s.source, s.observed_at, s.says, s.window) for s in m.ecosystem),
        serving_endpoint=m.serving_endpoint, version=m.version,
        capabilities=tuple(capability_from_pb(c) for c in m.capabilities),
        external_quality=tuple(QualityEvidence(q.benchmark, q.score, q.source, q.observed_at, q.task, q.scale, q.says)
                               for q in m.external_quality),
        tasks=tuple(m.tasks), facts=tuple(Fact(f.name, f.value, f.source, f.observed_at, f.says) for f in m.facts),
        hub_id=m.hub_id, organization=m.organization,
        slug=m.slug, url=m.url, pipeline_tag=m.pipeline_tag, tags=tuple(m.tags),
        failure_modes=tuple(FailureMode(f.mode, f.frequency, f.mitigation) for f in m.failure_modes),
        links=tuple(Link(x.rel, x.url) for x in m.links),
    )
    rec.validate()
    return rec


def _signal_to_pb(s: Signal) -> pb.Signal:
    return pb.Signal(kind=s.kind, value=s.value, source=s.source, observed_at=s.observed_at, says=s.says,
                     window=s.window)


def record_to_pb(r: ModelRecord) -> pb.ModelRecord:
    return pb.ModelRecord(
        id=r.id, name=r.name, aliases=list(r.aliases), type=_TYPE_TO[r.type], pricing=_pricing_to_pb(r.pricing),
        adoption=[_signal_to_pb(s) for s in r.adoption], ecosystem=[_signal_to_pb(s) for s in r.ecosystem],
        serving_endpoint=r.serving_endpoint, version=r.version,
        capabilities=[capability_to_pb(c) for c in r.capabilities],
        external_quality=[pb.QualityEvidence(benchmark=q.benchmark, score=q.score, source=q.source,
                                             observed_at=q.observed_at, task=q.task, scale=q.scale, says=q.says)
                          for q in r.external_quality],
        tasks=r.tasks, facts=[pb.Fact(name=f.name, value=f.value, source=f.source, observed_at=f.observed_at,
                                      says=f.says) for f in r.facts],
        hub_id=r.hub_id, organization=r.organization,
        slug=r.slug, url=r.url, pipeline_tag=r.pipeline_tag, tags=list(r.tags),
        failure_modes=[pb.FailureMode(mode=f.mode, frequency=f.frequency, mitigation=f.mitigation)
                       for f in r.failure_modes],
        links=[pb.Link(rel=x.rel, url=x.url) for x in r.links],
    )


def score_to_pb(s: Score) -> pb.Score:
    """A measured score with its numbers; one that is not measured with 0s, ``measured`` false and the reason."""
    if not s.measured:
        return pb.Score(evidence_count=s.evidence_count, measured=False, not_measured_reason=s.reason)
    return pb.Score(value=s.value, low=s.low, high=s.high, evidence_count=s.evidence_count, measured=True,
                    note=s.reason)


def card_to_pb(c: ScoreCard) -> pb.ScoreCard:
    return pb.ScoreCard(rank=score_to_pb(c.rank), adoption=score_to_pb(c.adoption),
                        ecosystem=score_to_pb(c.ecosystem), match_graph=score_to_pb(c.match_graph),
                        quality=score_to_pb(c.quality), times_matched=c.times_matched,
                        times_compared=c.times_compared, times_clicked=c.times_clicked, weights=c.weights,
                        freshness=score_to_pb(c.freshness), rests_on=c.rests_on, rank_weights=c.rank_weights,
                        feedback=score_to_pb(c.feedback))


def served_to_pb(s: ServedModel) -> pb.ServedModel:
    return pb.ServedModel(endpoint=s.endpoint, model_id=s.model_id, architecture=s.architecture,
                          parameters=s.parameters, test_model=s.test_model, test_preset=s.test_preset)


def judge_to_pb(j: JudgeModel) -> pb.ProbeJudge:
    return pb.ProbeJudge(endpoint=j.endpoint, model_id=j.model_id, architecture=j.architecture, version=j.version,
                         test_model=j.test_model, test_preset=j.test_preset, parameters=j.parameters)


def basis_to_pb(b: ProbeBasis) -> pb.ProbeBasis:
    out = pb.ProbeBasis(model=b.model, runs=b.runs, task=b.task)
    if b.served is not None:
        out.served.CopyFrom(served_to_pb(b.served))
    if b.judge is not None:
        out.judge.CopyFrom(judge_to_pb(b.judge))
    return out


def evidence_to_pb(e: EvidenceRow) -> pb.Evidence:
    return pb.Evidence(dimension=e.dimension, kind=e.kind, detail=e.detail, value=e.value,
                       contribution=e.contribution, source=e.source, observed_at=e.observed_at)


def intent_to_pb(i: Intent) -> pb.Intent:
    return pb.Intent(id=i.id, label=i.label, uri=i.uri, confidence=i.confidence, cues=list(i.cues))


# ---------------------------------------------------------------- requests
def required_text(value: str, what: str, hint: str) -> str:
    """A free-text field that must not be blank (else "``what`` is empty: ``hint``"), of at most 512 characters."""
    if not value.strip():
        raise InvalidArgument(f"{what} is empty: {hint}")
    if len(value) > 512:
        raise InvalidArgument(f"{what} is {len(value)} characters; the limit is 512")
    return value


def page_limit(limit: int, default: int, most: int, advice: str = "") -> int:
    """A request's ``limit``: ``default`` when unset (0), never over ``most`` (the error ends with ``advice``)."""
    size = limit or default
    if size > most:
        raise InvalidArgument(f"limit {limit} is over {most}{advice}")
    return size


@dataclass(frozen=True)
class UpsertModel:
    record: ModelRecord

    @classmethod
    def from_pb(cls, req: pb.UpsertModelRequest) -> UpsertModel:
        if not req.HasField("model"):
            raise InvalidArgument("model is missing: send a ModelRecord with at least id, name and type")
        return cls(record_from_pb(req.model))

    @staticmethod
    def to_pb(stored: ModelRecord, created: bool) -> pb.UpsertModelResponse:
        return pb.UpsertModelResponse(model=record_to_pb(stored), created=created)


@dataclass(frozen=True)
class GetModel:
    model: str
    explain: bool

    @classmethod
    def from_pb(cls, req: pb.GetModelRequest) -> GetModel:
        if not req.model.strip():
            raise InvalidArgument("model is empty: give a model id, name or alias")
        return cls(req.model, req.explain)

    @staticmethod
    def to_pb(record: ModelRecord, card: ScoreCard, evidence: list[EvidenceRow], snapshot: int) -> pb.GetModelResponse:
        return pb.GetModelResponse(model=record_to_pb(record), scores=card_to_pb(card),
                                   evidence=[evidence_to_pb(e) for e in evidence], snapshot_version=snapshot)


@dataclass(frozen=True)
class ImportBatch:
    records: list[ModelRecord]

    @classmethod
    def from_pb(cls, req: pb.ImportModelsRequest, first: int) -> ImportBatch:
        """The batch's records, validated; a bad one is named by its position in the whole stream and its id."""
        out = []
        for k, m in enumerate(req.models):
            try:
                out.append(record_from_pb(m))
            except InvalidArgument as exc:
                raise InvalidArgument(f"models[{first + k}] ({m.id!r}): {exc.message}") from None
        return cls(out)


def event_from_pb(e: pb.MatchEvent) -> MatchEvent:
    if e.outcome != pb.MATCH_OUTCOME_UNSPECIFIED:
        raise InvalidArgument(f"event {e.event_id!r} carries an outcome: outcomes come after the search; record the "
                              f"event without it, then send the outcome with RecordFeedback")
    return MatchEvent(e.event_id, e.query, tuple(e.matched), tuple(e.compared), tuple(e.clicked), e.timestamp_ms)


def ingest_to_pb(total: IngestResult, batches: int) -> pb.RecordMatchesResponse:
    return pb.RecordMatchesResponse(received=total.received, inserted=total.inserted, duplicates=total.duplicates,
                                    batches=batches, graph_version=total.graph_version)


@dataclass(frozen=True)
class RankQuery:
    capability: str
    limit: int
    offset: int

    @classmethod
    def from_pb(cls, req: pb.RankRequest) -> RankQuery:
        limit = page_limit(req.limit, 20, 1000, "; page with offset instead")
        if len(req.capability) > 512:
            raise InvalidArgument("capability filter is longer than 512 characters")
        return cls(req.capability, limit, req.offset)

    @staticmethod
    def to_pb(rows: list[tuple[str, str, ScoreCard]], total: int, snapshot: int, offset: int) -> pb.RankResponse:
        return pb.RankResponse(total=total, snapshot_version=snapshot, models=[
            pb.RankedModel(position=offset + k + 1, id=i, name=n, scores=card_to_pb(c))
            for k, (i, n, c) in enumerate(rows)])


@dataclass(frozen=True)
class CompareQuery:
    a: str
    b: str

    @classmethod
    def from_pb(cls, req: pb.CompareRequest) -> CompareQuery:
        if not req.a.strip() or not req.b.strip():
            raise InvalidArgument("both a and b are required: give two model ids, names or aliases")
        return cls(req.a, req.b)

    @staticmethod
    def to_pb(r: CompareResult) -> pb.CompareResponse:
        c = r.comparison
        return pb.CompareResponse(
            a=record_to_pb(c.a), b=record_to_pb(c.b), a_scores=card_to_pb(c.a_scores),
            b_scores=card_to_pb(c.b_scores), dimensions=[_dim_to_pb(d) for d in (c.rank, *c.dimensions)],
            rows=[pb.FeatureRow(feature=f, a=x, b=y) for f, x, y in c.rows], headline=c.headline,
            verdict=list(c.verdict), markdown=r.markdown, html=r.html, snapshot_version=r.snapshot,
            probe_basis=[basis_to_pb(b) for b in c.probe_basis],
            sources=[pb.SourceRow(label=row.label, a=[_cell_to_pb(x) for x in row.a], b=[_cell_to_pb(x) for x in row.b])
                     for row in c.sources])


def _cell_to_pb(c: SourceCell) -> pb.SourceCell:
    return pb.SourceCell(text=c.text, source=c.source, observed_at=c.observed_at, says=c.says)


def _dim_to_pb(d: DimensionResult) -> pb.DimensionComparison:
    out = pb.DimensionComparison(dimension=d.dimension, a=score_to_pb(d.a), b=score_to_pb(d.b),
                                 outcome=_OUTCOME_TO.get(d.outcome, pb.OUTCOME_TIED),
                                 records_to_flip=d.records_to_flip, fragile=d.fragile, comparable=d.comparable,
                                 note=d.note)
    if d.outcome not in (NOT_MEASURED, NOT_COMPARABLE):  # no difference of numbers that are not there
        out.diff, out.diff_low, out.diff_high = d.diff.diff, d.diff.low, d.diff.high
    return out


@dataclass(frozen=True)
class SearchQuery:
    query: str
    limit: int
    type: str = ""

    @classmethod
    def from_pb(cls, req: pb.SearchRequest) -> SearchQuery:
        query = required_text(req.query, "query", "type some words to search for")
        limit = page_limit(req.limit, 10, 100)
        if req.type and req.type not in MODEL_TYPES:
            raise InvalidArgument(f"type {req.type!r} must be one of {', '.join(MODEL_TYPES)} (or empty for all)")
        return cls(query, limit, req.type)

    @staticmethod
    def to_pb(r: SearchResult, snapshot: int) -> pb.SearchResponse:
        out = pb.SearchResponse(embeddings_used=r.embeddings_used, degraded_reason=r.degraded_reason,
                                snapshot_version=snapshot, hits=[
            pb.SearchHit(model_id=h.model_id, name=h.name, capability=h.capability, score=h.score,
                         fts_rank=h.fts_rank, embedding_rank=h.embedding_rank, snippet=h.snippet,
                         match_score=h.score, slug=h.slug, model_type=h.model_type, intent=h.intent,
                         intent_score=h.intent_score, text_score=h.text_score, capability_uri=h.capability_uri)
            for h in r.hits])
        if r.intents:
            out.intent.CopyFrom(intent_to_pb(r.intents[0]))
        return out


@dataclass(frozen=True)
class ProbeQuery:
    models: list[str]
    max_prompts: int
    seed: int

    @classmethod
    def from_pb(cls, req: pb.RunProbesRequest) -> ProbeQuery:
        if req.max_prompts > 64:
            raise InvalidArgument(f"max_prompts {req.max_prompts} is over 64")
        if req.seed > 2**31 - 1:
            raise InvalidArgument("seed must fit in 31 bits")
        return cls(list(req.models), req.max_prompts, req.seed)

    @staticmethod
    def to_pb(run: ProbeRun, quality: dict[str, Score]) -> pb.RunProbesResponse:
        resp = pb.RunProbesResponse(
            run_id=run.run_id, skipped=list(run.skipped),
            results=[pb.ProbeResult(model_id=r.model_id, model_version=r.model_version, prompt=r.prompt,
                                    score=r.score, detail=r.detail, task=r.task, judge_id=r.judge_id,
                                    judge_version=r.judge_version, probe_set=r.probe_set, scorable=r.scorable,
                                    reason=r.reason) for r in run.results],
            outcomes=[pb.ProbeOutcome(prompt=o.prompt, model_a=o.model_a, model_b=o.model_b, a_score=o.a_score,
                                      task=o.task, judge_id=o.judge_id, judge_version=o.judge_version,
                                      probe_set=o.probe_set, scorable=o.scorable, reason=o.reason)
                      for o in run.outcomes],
            quality={m: score_to_pb(s) for m, s in quality.items()},
            served=[basis_to_pb(b) for b in run.basis],
            scores=[pb.ProbeScore(task=x.task, model_id=x.model_id, model_version=x.model_version,
                                  judge_id=x.judge_id, judge_version=x.judge_version, probe_set=x.probe_set,
                                  mean=x.mean, n=x.n, scorable=x.scorable, reason=x.reason) for x in run.scores])
        if run.judge is not None:
            resp.judge.CopyFrom(judge_to_pb(run.judge))
        return resp


# ---------------------------------------------------------------- snapshots
def stale(resp: ReadAnswer, stale_seconds: float) -> ReadAnswer:
    """A read answer marked with how far behind the store it is (left 0, so unchanged, when current)."""
    if stale_seconds > 0:
        resp.stale_seconds = stale_seconds
    return resp


def snapshot_to_pb(snapshot: int, graph_version: int, lag: Lag, role: RoleInfo) -> pb.GetSnapshotResponse:
    return pb.GetSnapshotResponse(
        snapshot_version=snapshot, role=role.role, graph_version=graph_version,
        store_graph_version=max(lag.store_seq, graph_version), lag_events=lag.events, lag_seconds=lag.seconds,
        stale=lag.stale, max_staleness_s=role.max_staleness_s, writer_address=role.writer_address,
        publication=lag.publication, term=role.term, leader_address=role.leader_address)
