"""Model pages as MCP resources (listed as resource templates):

- ``unfragile://model/{slug}``: the trust passport, the same JSON as the ``trust_passport`` tool;
- ``unfragile://model/{slug}/page``: the passport as a Markdown page;
- ``unfragile://compare/{a}/{b}``: the comparison page as Markdown (the MatchGraph's own).

An unknown model is a "resource not found" error (-32602) with the service's message; any other failed
MatchGraph call is a resource error (-32603) saying what happened.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError

from services.gateway.passport import (
    Body,
    DimensionScore,
    PassportAnswer,
    PassportCapability,
    RateDetail,
    passport_from_pb,
)
from services.gateway.upstream import UpstreamError
from services.mcp.tools import Backend

PASSPORT = "unfragile://model/{slug}"
PAGE = "unfragile://model/{slug}/page"
COMPARISON = "unfragile://compare/{a}/{b}"


class Resources:
    """Reads of the resource templates; ``entries()`` lists them for registration."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def entries(self) -> list[tuple[str, Callable[..., Any], str, str, str]]:
        """(URI template, read function, name, MIME type, description)."""
        return [
            (PASSPORT, self.passport, "model-passport", "application/json",
             "Trust passport of a model (slug, id, name or alias): capabilities, intents, trust score with its "
             "interval and the dimensions it rests on (each a number or null with why it is not measured), "
             "failure modes, observed outcomes."),
            (PAGE, self.page, "model-page", "text/markdown",
             "The model's passport as a readable Markdown page."),
            (COMPARISON, self.comparison, "comparison-page", "text/markdown",
             "Two models compared: verdict, per-dimension numbers with intervals (or not measured / not "
             "comparable, with why), fragility, feature table, every reading with its source and date."),
        ]

    async def _passport(self, slug: str, ctx: Context[Any, Any]) -> PassportAnswer:
        try:
            resp = await self.backend.upstream().passport(slug)
        except UpstreamError as err:
            raise _resource_error(err, self.backend.describe(err)) from None
        return passport_from_pb(resp, self.backend.base_url(ctx))

    async def passport(self, slug: str, ctx: Context[Any, Any]) -> str:
        return (await self._passport(slug, ctx)).model_dump_json(by_alias=True)

    async def page(self, slug: str, ctx: Context[Any, Any]) -> str:
        return page_markdown((await self._passport(slug, ctx)).passport.unfragile)

    async def comparison(self, a: str, b: str) -> str:
        try:
            resp = await self.backend.upstream().compare(a, b)
        except UpstreamError as err:
            raise _resource_error(err, self.backend.describe(err)) from None
        return resp.markdown


def _resource_error(err: UpstreamError, message: str) -> ResourceError:
    return ResourceNotFoundError(message) if err.code == grpc.StatusCode.NOT_FOUND else ResourceError(message)


def _rate(rate: float | None, reason: str | None, detail: RateDetail | None) -> str:
    if rate is None:
        return f"not measured ({reason})"
    if detail is None:
        return f"{rate:.2f}"
    return (f"{rate:.2f} (95% {detail.low:.2f}–{detail.high:.2f}; {detail.successes} of {detail.trials} "
            f"reported successes)")


DIMENSION_LABEL = {"adoption": "adoption", "quality": "quality", "ecosystem": "ecosystem",
                   "match_graph": "match graph", "freshness": "freshness"}


def _dimension(name: str, d: DimensionScore) -> str:
    """One dimension of the trust score: its number, interval and weight in the score, or why it has none."""
    label = DIMENSION_LABEL.get(name, name).capitalize()
    if d.score is None:
        return f"- {label}: not measured ({d.score_reason})"
    interval = f"95% {d.score_interval[0]:.2f}–{d.score_interval[1]:.2f}; " if d.score_interval else ""
    weight = f"weight {d.weight:.2f} in the score" if d.weight is not None else "not in the score"
    return f"- {label}: {d.score:.2f} ({interval}{weight})" + (f"; {d.note}" if d.note else "")


def _capability(c: PassportCapability) -> list[str]:
    lines = [f"### {c.name}", "", f"`{c.uri}`" if c.uri else "", "", c.description, ""]
    for label, items in (("Serves", c.intents), ("Best for", c.best_for), ("Limitations", c.limitations),
                         ("Requires", c.requires)):
        if items:
            lines.append(f"- {label}: {'; '.join(items)}")
    if c.input_types or c.output_types:
        lines.append(f"- Input → output: {', '.join(c.input_types) or '?'} → {', '.join(c.output_types) or '?'}")
    lines.append(f"- Searches matched by what it serves: {c.matches}; success rate: "
                 f"{_rate(c.success_rate, c.success_rate_reason, c.success_rate_detail)}")
    return [*lines, ""]


def page_markdown(p: Body) -> str:
    """A passport as Markdown: every number as the passport gives it, "not measured" with its reason."""
    a, t = p.artifact, p.trust
    links = [f"[{rel}]({href['href']})" for rel, href in p.links.items() if rel in ("page", "artifact", "self")]
    price = a.pricing.model + (f", from ${a.pricing.starting_price:g}/month" if a.pricing.starting_price else "")
    score = (f"{t.score:.2f} (95% interval {t.score_interval[0]:.2f}–{t.score_interval[1]:.2f}), resting on "
             f"{', '.join(DIMENSION_LABEL.get(d, d) for d in t.rests_on)}"
             if t.score is not None and t.score_interval else f"not measured ({t.score_reason})")
    o = t.observed_outcomes
    lines = [f"# {a.name}", "", f"{a.type} · {a.pipeline_tag or 'no pipeline tag'} · pricing: {price} · "
             f"{' · '.join(links)}", "",
             f"- Trust score (UnfragileRank / 100): {score}",
             f"- Served and observed here: {'yes' if t.verified else 'no'}",
             f"- Searches that matched it: {o.matches}; success rate: "
             f"{_rate(o.success_rate, o.success_rate_reason, o.success_rate_detail)}",
             f"- Top intents: {', '.join(f'{i.label} ({i.matches})' for i in o.top_intents) or 'none yet'}",
             f"- Tags: {', '.join(a.tags) or 'none'}", "", "## What the trust score rests on", ""]
    lines += [_dimension(name, d) for name, d in t.dimensions.items()]
    lines += ["", "## Capabilities", ""]
    for c in p.capabilities:
        lines += _capability(c)
    lines += ["## Failure modes", ""]
    lines += [f"- {f.mode}" + (f" ({f.frequency})" if f.frequency else "")
              + (f": {f.mitigation}" if f.mitigation else "") for f in t.failure_modes] or ["- none declared"]
    lines += ["", f"Numbers from MatchGraph snapshot {p.version}; JSON: unfragile://model/{a.slug}"]
    return "\n".join(lines) + "\n"
