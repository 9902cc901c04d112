"""Protobuf <-> domain conversion for passports, outcomes (feedback), resolve and manifests.

The companion of ``types.py`` (records, scores, search): requests validated in ``from_pb`` with
messages that say what to fix, results converted by ``to_pb``.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.errors import InvalidArgument
from graph.feedback import Feedback
from graph.manifest import MAX_BYTES, Issue, ManifestResult
from graph.passport import Passport
from graph.records import MatchEvent, ModelRecord
from graph.resolve import ResolveResult
from graph.shrinkage import Rate
from graph.store import FeedbackRow
from services.matchgraph.types import card_to_pb, intent_to_pb, page_limit, record_to_pb, required_text, score_to_pb
from unfragile.matchgraph.v1 import matchgraph_pb2 as pb

_OUTCOME_FROM = {pb.MATCH_OUTCOME_SUCCESS: "success", pb.MATCH_OUTCOME_FAILURE: "failure"}
_OUTCOME_TO = {v: k for k, v in _OUTCOME_FROM.items()}


def rate_to_pb(r: Rate) -> pb.Rate:
    return pb.Rate(value=r.value, low=r.low, high=r.high, successes=r.successes, trials=r.trials)


def event_to_pb(e: MatchEvent, fb: FeedbackRow | None) -> pb.MatchEvent:
    return pb.MatchEvent(event_id=e.event_id, query=e.query, matched=e.matched, compared=e.compared,
                         clicked=e.clicked, timestamp_ms=e.timestamp_ms,
                         outcome=_OUTCOME_TO[fb.outcome] if fb else pb.MATCH_OUTCOME_UNSPECIFIED)


def feedback_to_pb(fb: FeedbackRow) -> pb.Feedback:
    return pb.Feedback(outcome=_OUTCOME_TO[fb.outcome], clicked_through=fb.clicked_through, source=fb.source,
                       comment=fb.comment, credited=fb.credited, timestamp_ms=fb.ts_ms)


def _model_ref(value: str, what: str) -> str:
    if not value.strip():
        raise InvalidArgument(f"{what} is empty: give a model id, slug, name or alias")
    if len(value) > 200:
        raise InvalidArgument(f"{what} is {len(value)} characters; at most 200")
    return value


@dataclass(frozen=True)
class PassportQuery:
    model: str

    @classmethod
    def from_pb(cls, req: pb.GetPassportRequest) -> PassportQuery:
        return cls(_model_ref(req.model, "model"))

    @staticmethod
    def to_pb(p: Passport) -> pb.GetPassportResponse:
        caps = [pb.CapabilityOutcomes(position=c.position, uri=c.uri, intents=[intent_to_pb(i) for i in c.intents],
                                      confidence=c.confidence, confidence_measured=c.confidence_measured,
                                      matches=c.matches, success_rate=rate_to_pb(c.success_rate))
                for c in p.capabilities]
        o = p.outcomes
        top = [pb.IntentCount(intent=intent_to_pb(i), matches=n) for i, n in o.top_intents]
        outcomes = pb.Outcomes(matches=o.matches, scanned=o.scanned, success_rate=rate_to_pb(o.success_rate),
                               avg_confidence=o.avg_confidence, classified=o.classified, top_intents=top)
        return pb.GetPassportResponse(model=record_to_pb(p.record), scores=card_to_pb(p.card), capabilities=caps,
                                      outcomes=outcomes, snapshot_version=p.snapshot,
                                      served=bool(p.record.serving_endpoint))


def feedback_from_pb(req: pb.RecordFeedbackRequest) -> Feedback:
    if req.outcome not in _OUTCOME_FROM:
        raise InvalidArgument("outcome is unspecified: set MATCH_OUTCOME_SUCCESS or MATCH_OUTCOME_FAILURE")
    fb = Feedback(req.match_id, _OUTCOME_FROM[req.outcome], req.clicked_through, req.source, req.comment,
                  req.artifact)
    fb.validate()
    return fb


def feedback_answer(event: MatchEvent, fb: FeedbackRow, duplicate: bool) -> pb.RecordFeedbackResponse:
    return pb.RecordFeedbackResponse(match=event_to_pb(event, fb), feedback=feedback_to_pb(fb), duplicate=duplicate)


def match_answer(event: MatchEvent, fb: FeedbackRow | None) -> pb.GetMatchResponse:
    out = pb.GetMatchResponse(match=event_to_pb(event, fb))
    if fb is not None:
        out.feedback.CopyFrom(feedback_to_pb(fb))
    return out


@dataclass(frozen=True)
class ResolveQuery:
    intent: str
    limit: int

    @classmethod
    def from_pb(cls, req: pb.ResolveRequest) -> ResolveQuery:
        intent = required_text(req.intent, "intent", "say what you need, e.g. 'caption an image'")
        return cls(intent, page_limit(req.limit, 5, 20))

    @staticmethod
    def to_pb(r: ResolveResult) -> pb.ResolveResponse:
        out = pb.ResolveResponse(snapshot_version=r.snapshot, capabilities=[
            pb.ResolvedCapability(intent=intent_to_pb(i), artifacts=[
                pb.ResolvedArtifact(model_id=a.model_id, slug=a.slug, name=a.name, capability=a.capability,
                                    match_score=a.match_score, rank=score_to_pb(a.rank),
                                    success_rate=rate_to_pb(a.success_rate)) for a in arts])
            for i, arts in r.groups])
        if r.intents:
            out.intent.CopyFrom(intent_to_pb(r.intents[0]))
        return out


def manifest_text(req: pb.ValidateManifestRequest) -> str:
    if len(req.text.encode()) > MAX_BYTES:
        raise InvalidArgument(f"the manifest is over {MAX_BYTES // 1024} KiB")
    return req.text


def _issues(items: tuple[Issue, ...]) -> list[pb.ManifestIssue]:
    return [pb.ManifestIssue(path=i.path, code=i.code, message=i.message) for i in items]


def validation_to_pb(result: ManifestResult, record: ModelRecord | None, updates: str) -> pb.ValidateManifestResponse:
    out = pb.ValidateManifestResponse(valid=not result.errors, errors=_issues(result.errors),
                                      warnings=_issues(result.warnings), updates=updates)
    if record is not None:
        out.model.CopyFrom(record_to_pb(record))
    return out


def import_to_pb(stored: ModelRecord, created: bool, result: ManifestResult) -> pb.ImportManifestResponse:
    return pb.ImportManifestResponse(model=record_to_pb(stored), created=created, warnings=_issues(result.warnings))
