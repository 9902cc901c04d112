"""The catalogue service's calls to the MatchGraph: passports, resolve, manifests (reads) and match records and
their outcomes (writes, to the writer). Mixed into ``upstream.GrpcMatchGraph``; routes type them by
``CatalogueAPI``."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from unfragile.matchgraph.v1 import matchgraph_pb2 as pb

READ_METHODS = ["GetPassport", "Resolve", "GetMatch", "ValidateManifest"]
T = TypeVar("T")


class CatalogueAPI(Protocol):
    async def search(self, query: str, limit: int, type_filter: str = "") -> pb.SearchResponse: ...
    async def passport(self, model: str) -> pb.GetPassportResponse: ...
    async def resolve(self, intent: str, limit: int) -> pb.ResolveResponse: ...
    async def validate_manifest(self, text: str) -> pb.ValidateManifestResponse: ...
    async def record_match(self, query: str, matched: list[str]) -> str: ...
    async def record_feedback(self, request: pb.RecordFeedbackRequest) -> pb.RecordFeedbackResponse: ...


class CatalogueCalls:
    """``CatalogueAPI`` over the stubs of ``GrpcMatchGraph`` (reads: ``_stub``; writes: ``_write``, to the
    leader)."""

    _stub: Any

    async def _call(self, name: str, method: Any, request: Any) -> Any:
        raise NotImplementedError  # GrpcMatchGraph's

    async def _write(self, send: Callable[[Any], Awaitable[T]]) -> T:
        raise NotImplementedError  # GrpcMatchGraph's: ``send(stub)`` on the writer that leads

    async def passport(self, model: str) -> pb.GetPassportResponse:
        resp: pb.GetPassportResponse = await self._call("GetPassport", self._stub.GetPassport,
                                                        pb.GetPassportRequest(model=model))
        return resp

    async def resolve(self, intent: str, limit: int) -> pb.ResolveResponse:
        resp: pb.ResolveResponse = await self._call("Resolve", self._stub.Resolve,
                                                    pb.ResolveRequest(intent=intent, limit=limit))
        return resp

    async def validate_manifest(self, text: str) -> pb.ValidateManifestResponse:
        resp: pb.ValidateManifestResponse = await self._call("ValidateManifest", self._stub.ValidateManifest,
                                                             pb.ValidateManifestRequest(text=text))
        return resp

    async def record_match(self, query: str, matched: list[str]) -> str:
        """Store one match record (a MatchEvent of what a search or resolve answered) on the writer; its id."""
        event_id = f"match-{uuid.uuid4().hex}"
        event = pb.MatchEvent(event_id=event_id, query=query, matched=matched, timestamp_ms=int(time.time() * 1000))
        await self._write(lambda stub: self._call("RecordMatches", stub.RecordMatches,
                                                  iter([pb.RecordMatchesRequest(events=[event])])))
        return event_id

    async def record_feedback(self, request: pb.RecordFeedbackRequest) -> pb.RecordFeedbackResponse:
        resp: pb.RecordFeedbackResponse = await self._write(
            lambda stub: self._call("RecordFeedback", stub.RecordFeedback, request))
        return resp
