"""The MatchGraph gRPC servicer: protobuf in, one engine call, protobuf out.

Errors are typed domain errors raised by types.py or the engine; the core interceptor
maps them to status codes. Nothing here aborts a context.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc

from graph.engine import Engine
from graph.ingest import IngestResult
from services.core.cancel import CancelToken
from services.matchgraph import metrics
from services.matchgraph import passport_types as pt
from services.matchgraph import types as t
from services.matchgraph.roles import RoleInfo
from unfragile.matchgraph.v1 import matchgraph_pb2 as pb
from unfragile.matchgraph.v1 import matchgraph_pb2_grpc as pb_grpc


class MatchGraphServicer(pb_grpc.MatchGraphServicer):
    def __init__(self, engine: Engine, role: Callable[[], RoleInfo] | None = None) -> None:
        self.engine = engine
        self.role = role or RoleInfo  # what GetSnapshot says about this process (it changes on a takeover)

    def RecordMatches(self, request_iterator: Iterator[pb.RecordMatchesRequest],
                      context: grpc.ServicerContext) -> pb.RecordMatchesResponse:
        token = CancelToken.from_context(context)
        total, batches = IngestResult(0, 0, 0, self.engine.graph_version()), 0
        for req in request_iterator:
            token.raise_if_cancelled()
            r = self.engine.record_events([t.event_from_pb(e) for e in req.events])
            metrics.observe_ingest(r, len(req.events), self.engine.model_count())
            total = IngestResult(total.received + r.received, total.inserted + r.inserted,
                                 total.duplicates + r.duplicates, r.graph_version)
            batches += 1
        return t.ingest_to_pb(total, batches)

    def UpsertModel(self, request: pb.UpsertModelRequest, context: grpc.ServicerContext) -> pb.UpsertModelResponse:
        req = t.UpsertModel.from_pb(request)
        return t.UpsertModel.to_pb(*self.engine.upsert(req.record))

    def GetModel(self, request: pb.GetModelRequest, context: grpc.ServicerContext) -> pb.GetModelResponse:
        req = t.GetModel.from_pb(request)
        return t.stale(t.GetModel.to_pb(*self.engine.get(req.model, req.explain)), self.engine.stale_seconds())

    def Rank(self, request: pb.RankRequest, context: grpc.ServicerContext) -> pb.RankResponse:
        req = t.RankQuery.from_pb(request)
        resp = t.RankQuery.to_pb(*self.engine.rank(req.capability, req.limit, req.offset), req.offset)
        return t.stale(resp, self.engine.stale_seconds())

    def Compare(self, request: pb.CompareRequest, context: grpc.ServicerContext) -> pb.CompareResponse:
        req = t.CompareQuery.from_pb(request)
        return t.stale(t.CompareQuery.to_pb(self.engine.compare(req.a, req.b)), self.engine.stale_seconds())

    def Search(self, request: pb.SearchRequest, context: grpc.ServicerContext) -> pb.SearchResponse:
        req = t.SearchQuery.from_pb(request)
        result, snapshot = self.engine.search(req.query, req.limit, req.type)
        metrics.observe_search(result)
        return t.stale(t.SearchQuery.to_pb(result, snapshot), self.engine.stale_seconds())

    def RunProbes(self, request: pb.RunProbesRequest, context: grpc.ServicerContext) -> pb.RunProbesResponse:
        req = t.ProbeQuery.from_pb(request)
        token = CancelToken.from_context(context)
        with metrics.probe_run("rpc"):
            run, quality = self.engine.run_probes(req.models, req.max_prompts, req.seed, token.raise_if_cancelled)
        return t.ProbeQuery.to_pb(run, quality)

    def ImportModels(self, request_iterator: Iterator[pb.ImportModelsRequest],
                     context: grpc.ServicerContext) -> pb.ImportModelsResponse:
        token = CancelToken.from_context(context)
        out = pb.ImportModelsResponse()
        for req in request_iterator:
            token.raise_if_cancelled()
            created = self.engine.import_models(t.ImportBatch.from_pb(req, out.received).records, validated=True)
            out.received += len(req.models)
            out.created += created
            out.updated += len(req.models) - created
            out.batches += 1
        return out

    def GetSnapshot(self, request: pb.GetSnapshotRequest, context: grpc.ServicerContext) -> pb.GetSnapshotResponse:
        return t.snapshot_to_pb(self.engine.snapshot(), self.engine.graph_version(), self.engine.lag(), self.role())

    def GetPassport(self, request: pb.GetPassportRequest, context: grpc.ServicerContext) -> pb.GetPassportResponse:
        req = pt.PassportQuery.from_pb(request)
        resp = pt.PassportQuery.to_pb(self.engine.passport(req.model))
        resp.stale_seconds = self.engine.stale_seconds()
        return resp

    def RecordFeedback(self, request: pb.RecordFeedbackRequest,
                       context: grpc.ServicerContext) -> pb.RecordFeedbackResponse:
        return pt.feedback_answer(*self.engine.record_feedback(pt.feedback_from_pb(request)))

    def GetMatch(self, request: pb.GetMatchRequest, context: grpc.ServicerContext) -> pb.GetMatchResponse:
        return pt.match_answer(*self.engine.get_match(request.match_id))

    def Resolve(self, request: pb.ResolveRequest, context: grpc.ServicerContext) -> pb.ResolveResponse:
        req = pt.ResolveQuery.from_pb(request)
        resp = pt.ResolveQuery.to_pb(self.engine.resolve(req.intent, req.limit))
        resp.stale_seconds = self.engine.stale_seconds()
        return resp

    def ValidateManifest(self, request: pb.ValidateManifestRequest,
                         context: grpc.ServicerContext) -> pb.ValidateManifestResponse:
        return pt.validation_to_pb(*self.engine.validate_manifest(pt.manifest_text(request)))

    def ImportManifest(self, request: pb.ValidateManifestRequest,
                       context: grpc.ServicerContext) -> pb.ImportManifestResponse:
        return pt.import_to_pb(*self.engine.import_manifest(pt.manifest_text(request)))
