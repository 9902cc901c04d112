"""The MCP tools: each takes arguments the SDK validates against its JSON schema (built from the signature),
makes one or two MatchGraph calls (reads to the read target, match records and outcomes to the writer) and
answers the gateway's JSON for the same call, as structured content and as its JSON text.

A failed MatchGraph call is a tool error (``isError``) carrying the service's own message; it never ends
the session.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Protocol, TypeVar

import grpc
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, Field

from services.gateway.catalogue_calls import CatalogueAPI
from services.gateway.matching import (
    FeedbackAnswer,
    FeedbackRequest,
    ResolveAnswer,
    feedback_from_pb,
    resolve_from_pb,
    resolved_models,
)
from services.gateway.passport import PassportAnswer, passport_from_pb
from services.gateway.schemas import Comparison, SearchResults
from services.gateway.upstream import UpstreamError
from unfragile.matchgraph.v1 import matchgraph_pb2 as pb

log = logging.getLogger(__name__)
T = TypeVar("T")
# No control characters (as the gateway's parameters): never part of a query or a name.
TEXT_PATTERN = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"

Query = Annotated[str, Field(min_length=1, max_length=512, pattern=TEXT_PATTERN,
                             description="What the user needs, in their words (1..512 characters), e.g. "
                                         "'caption my holiday photos' or 'open-source text-to-image model'.")]
ModelName = Annotated[str, Field(min_length=1, max_length=200, pattern=TEXT_PATTERN,
                                 description="A model's slug (owner--name, as search returns it), id, name or "
                                             "alias; case-insensitive.")]
Limit = Annotated[int, Field(ge=1, le=20, description="Most results to return (1..20).")]
TypeFilter = Annotated[Literal["model", "tool", "api"] | None,
                       Field(description="Only artifacts of this type; omit for all.")]
MatchRecordId = Annotated[str, Field(min_length=1, max_length=200,
                                     description="The matchRecordId of a search or resolve_capability answer.")]
Outcome = Annotated[Literal["success", "failure"],
                    Field(description="success: a result served the need; failure: none did.")]


class MatchGraphCalls(CatalogueAPI, Protocol):
    """The MatchGraph calls the tools make (``services.gateway.upstream.GrpcMatchGraph`` has them all)."""

    async def compare(self, a: str, b: str) -> pb.CompareResponse: ...


@dataclass
class Backend:
    """Where the tools reach the MatchGraph, and how their answers link to the gateway's pages."""

    upstream: Callable[[], MatchGraphCalls]
    public_base_url: str = ""  # "" = the address the HTTP request came to (the gateway's own)
    match_records: bool = True

    def base_url(self, ctx: Context[Any, Any] | None) -> str:
        if self.public_base_url or ctx is None:
            return self.public_base_url.rstrip("/")
        request = getattr(ctx.request_context, "request", None)
        url = getattr(request, "url", None)
        return f"{url.scheme}://{url.netloc}" if url is not None else ""

    def describe(self, err: UpstreamError) -> str:
        """The service's message, said so an agent (and its user) can act on it."""
        target = getattr(self.upstream(), "target", "") or "its address"
        if err.code == grpc.StatusCode.UNAVAILABLE:
            return f"MatchGraph is unavailable at {target} ({err.message}); try again later"
        if err.code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return f"MatchGraph at {target} did not answer in time ({err.message}); try again later"
        return f"{err.code.name}: {err.message}"

    async def call(self, pending: Awaitable[T], error: Callable[[str], Exception] = ToolError) -> T:
        """``await pending``; a failed MatchGraph call becomes ``error`` with the service's message."""
        try:
            return await pending
        except UpstreamError as err:
            raise error(self.describe(err)) from None


def structured(answer: BaseModel) -> CallToolResult:
    """``answer`` as the gateway's JSON: structured content, and the same JSON as text for older clients."""
    data = answer.model_dump(mode="json", by_alias=True)
    text = json.dumps(data, ensure_ascii=False)
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=data)


READS = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)
# search and resolve_capability store a match record (what was answered) for feedback: not read-only.
RECORDS = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False)
FEEDBACK = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False)


class Tools:
    """The tools; ``entries()`` lists them with their titles and annotations for registration."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def entries(self) -> list[tuple[Callable[..., Awaitable[CallToolResult]], str, ToolAnnotations]]:
        return [(self.search, "Search models by need", RECORDS),
                (self.compare, "Compare two models", READS),
                (self.trust_passport, "Trust passport of a model", READS),
                (self.resolve_capability, "Capabilities and models for a need", RECORDS),
                (self.feedback, "Report whether a result served the need", FEEDBACK)]

    async def _match_record(self, query: str, matched: list[str]) -> tuple[str | None, str | None]:
        """(id of a new match record of this answer, why there is none)."""
        if not matched or not self.backend.match_records:
            return None, None
        try:
            return await self.backend.upstream().record_match(query, matched), None
        except UpstreamError as err:
            log.warning("match record of %r not stored: %s", query[:80], err)
            return None, (f"the match record could not be stored ({err.code.name}: {err.message}); feedback "
                          f"cannot refer to this answer")

    async def search(self, ctx: Context[Any, Any], query: Query, limit: Limit = 10,
                     type: TypeFilter = None) -> Annotated[CallToolResult, SearchResults]:
        """Find models (and tools, APIs) for a need in plain words. The query's intent (caption an image,
        generate an image, ground a phrase, ...) is classified and matched to what each model can do, fused
        with full-text search. Answers the intent and the hits best first, each with match_score (0..1) and
        its intent and text parts, the capability that matched, and links to its page and trust passport
        (sources). Keep matchRecordId: after the user tried a result, report the outcome with `feedback`."""
        resp = await self.backend.call(self.backend.upstream().search(query, limit, type or ""))
        out = SearchResults.from_pb(query, resp)
        base = self.backend.base_url(ctx)
        for hit in out.hits:
            hit.url, hit.passport_url = base + hit.url, base + hit.passport_url
        out.match_record_id, out.match_record_error = await self._match_record(query, [h.model_id for h in resp.hits])
        return structured(out)

    async def compare(self, ctx: Context[Any, Any], a: ModelName,
                      b: ModelName) -> Annotated[CallToolResult, Comparison]:
        """Compare two models: the verdict sentences (a lead is claimed only where the 95% interval of the
        difference excludes 0, and only on dimensions measured for both), per-dimension scores with intervals
        (rank, adoption, quality, ecosystem, match graph, freshness); a dimension without evidence has null
        numbers, outcome "not_measured" and a note, and quality of two models that share no task is
        "not_comparable" with the reason. Also how fragile each lead is (evidence rows whose removal would flip
        it), each model's rests_on (the dimensions its rank rests on), every reading with its source URL and
        date, the feature table and the whole page as Markdown."""
        out = Comparison.from_pb(await self.backend.call(self.backend.upstream().compare(a, b)))
        base = self.backend.base_url(ctx)
        out.links = {k: base + v for k, v in out.links.items()}
        return structured(out)

    async def trust_passport(self, ctx: Context[Any, Any],
                             model: ModelName) -> Annotated[CallToolResult, PassportAnswer]:
        """The trust passport of a model: the artifact (licence tags, pricing, links), its capabilities with
        the intents they serve, best-for and limitations, and trust: UnfragileRank/100 with its interval,
        rests_on (the measured dimensions it is computed from), dimensions (adoption, quality, ecosystem,
        match_graph, freshness: each 0..1 with its interval and weight in the score), declared failure modes
        and observed outcomes (matches, success rate shrunk toward a prior). A number that was not measured
        is null with a `*_reason` saying why; never read it as 0."""
        resp = await self.backend.call(self.backend.upstream().passport(model))
        return structured(passport_from_pb(resp, self.backend.base_url(ctx)))

    async def resolve_capability(self, ctx: Context[Any, Any], intent: Query,
                                 limit: Limit = 5) -> Annotated[CallToolResult, ResolveAnswer]:
        """Turn a need into capabilities (capability://... URIs, one per intent the text expresses, most
        confident first) and, for each, the models that have it, best first, with match score, UnfragileRank
        and its interval (null with rank_reason when not measured) and observed success rate. `limit` is the
        most models per capability. Keep matchRecordId for `feedback`."""
        resp = await self.backend.call(self.backend.upstream().resolve(intent, limit))
        out = resolve_from_pb(intent, resp, self.backend.base_url(ctx))
        out.match_record_id, out.match_record_error = await self._match_record(intent, resolved_models(resp))
        return structured(out)

    async def feedback(self, matchRecordId: MatchRecordId, outcome: Outcome,
                       clickedThrough: Annotated[bool, Field(description="The user opened a result.")] = False,
                       comment: Annotated[str, Field(max_length=2000, description="Why, in a sentence.")] = "",
                       artifact: Annotated[str, Field(max_length=200, description=(
                           "The result the outcome is about (slug or id; one the answer listed). Default: "
                           "the results opened in that search, else its first result."))] = "",
                       ) -> Annotated[CallToolResult, FeedbackAnswer]:
        """Report whether a search or resolve_capability answer served the need: one outcome per match
        record (repeating the same outcome is harmless; a different one is refused). It feeds the success
        rates of the models it credits, shrunk toward a prior so one report moves a rate by at most ~0.05."""
        request = FeedbackRequest.model_validate({"matchRecordId": matchRecordId, "outcome": outcome,
                                                  "clickedThrough": clickedThrough, "source": "mcp",
                                                  "comment": comment, "artifact": artifact})
        resp = await self.backend.call(self.backend.upstream().record_feedback(request.to_pb()))
        return structured(feedback_from_pb(resp))
